"""Image parts, checked before any worker sees them.

``data:`` URLs are decoded and verified (format, byte size, pixel count);
remote ``http(s)`` URLs are off by default — a server that fetches whatever
URL a client names is an SSRF hole — and when a host is allow-listed the
gateway fetches it itself (bounded in size and time) and forwards a ``data:``
URL, so workers never reach out. Any other scheme (``file:``…) is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})
THREAD_THRESHOLD = 256 * 1024  # decode bigger images off the event loop


class ImageError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ImageLimits:
    max_images: int
    max_bytes: int
    max_pixels: int
    allowlist: frozenset[str]
    fetch_timeout_s: float


def is_image_part(part: Any) -> bool:
    # `type` is client data: a list or object there must not crash the lookup.
    return isinstance(part, dict) and isinstance(t := part.get("type"), str) and \
        t in IMAGE_PART_TYPES


def image_parts(messages: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(param path, part)`` for every image part in OpenAI-shaped messages."""
    found = []
    for i, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            for j, part in enumerate(content):
                if is_image_part(part):
                    found.append((f"messages[{i}].content[{j}]", part))
    return found


def _url_of(part: dict[str, Any]) -> str | None:
    value = part.get("image_url", part.get("image"))
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) else None


def verify_image(data: bytes, limits: ImageLimits, param: str) -> str:
    """Decode ``data`` fully; returns its MIME type or raises ImageError."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_bytes:
        raise ImageError(f"{param}: image is {len(data)} bytes; the limit is "
                         f"{limits.max_bytes} (server.max_image_bytes)", param)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > limits.max_pixels:
                raise ImageError(f"{param}: image is {width}x{height} pixels; the limit is "
                                 f"{limits.max_pixels} (server.max_image_pixels)", param)
            img.load()  # decodes every pixel: truncated or corrupt data fails here
            mime: str = Image.MIME.get(img.format or "", "application/octet-stream")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"{param}: not a readable image ({exc})", param) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{param}: {exc}", param) from None
    return mime


def _decode_data_url(url: str, param: str, limits: ImageLimits) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise ImageError(f"{param}: a data: image URL must be base64 "
                         "(data:image/png;base64,...)", param)
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise ImageError(f"{param}: image is larger than {limits.max_bytes} bytes "
                         "(server.max_image_bytes)", param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{param}: the data: URL is not valid base64", param) from None


async def _fetch(url: str, param: str, limits: ImageLimits) -> bytes:
    try:
        async with httpx.AsyncClient(timeout=limits.fetch_timeout_s,
                                     follow_redirects=False) as client, \
                client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise ImageError(f"{param}: fetching the image gave HTTP "
                                 f"{resp.status_code}", param)
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise ImageError(f"{param}: remote image exceeds {limits.max_bytes} "
                                     "bytes (server.max_image_bytes)", param)
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise ImageError(f"{param}: could not fetch the image: {exc}", param) from None


async def check_images(messages: list[Any], limits: ImageLimits) -> int:
    """Verify (and inline remote) every image part in place; returns how many."""
    parts = image_parts(messages)
    if len(parts) > limits.max_images:
        raise ImageError(f"{len(parts)} images in one request; the limit is "
                         f"{limits.max_images} (server.max_images)", "messages")
    for param, part in parts:
        url = _url_of(part)
        if url is None:
            raise ImageError(f"{param}: an image part needs image_url.url", param)
        scheme = urlsplit(url).scheme.lower()
        if scheme == "data":
            data = _decode_data_url(url, param, limits)
        elif scheme in ("http", "https"):
            host = (urlsplit(url).hostname or "").lower()
            if host not in limits.allowlist:
                raise ImageError(f"{param}: remote image URLs are disabled for {host!r}; "
                                 "send a data: URL, or add the host to "
                                 "server.image_url_allowlist", param)
            data = await _fetch(url, param, limits)
        else:
            raise ImageError(f"{param}: unsupported image URL scheme {scheme!r}; "
                             "use a data: URL", param)
        if len(data) > THREAD_THRESHOLD:
            mime = await asyncio.to_thread(verify_image, data, limits, param)
        else:
            mime = verify_image(data, limits, param)
        if scheme != "data":
            inline = f"data:{mime};base64," + base64.b64encode(data).decode()
            part["type"] = "image_url"
            part["image_url"] = {"url": inline}
    return len(parts)
