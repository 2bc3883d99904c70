from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import pytest
from PIL import Image

from gateway.core.images import ImageError, ImageLimits, check_images

LIMITS = ImageLimits(max_images=2, max_bytes=64 * 1024, max_pixels=256 * 256,
                     allowlist=frozenset(), fetch_timeout_s=1)


def png(w: int = 8, h: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def msg(*urls: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "hi"}] + [
        {"type": "image_url", "image_url": {"url": u}} for u in urls]}]


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def check(messages: list[dict[str, Any]], limits: ImageLimits = LIMITS) -> int:
    return asyncio.run(check_images(messages, limits))


def test_valid_images_pass_and_are_counted() -> None:
    assert check(msg(data_url(png()), data_url(png(16, 4)))) == 2
    assert check([{"role": "user", "content": "no images"}]) == 0


@pytest.mark.parametrize("url,fragment", [
    (data_url(b"not an image"), "not a readable image"),
    (data_url(png()[:40]), "not a readable image"),  # truncated
    ("data:image/png;base64,@@@@", "not valid base64"),
    ("data:image/png,rawbytes", "must be base64"),
    (data_url(png(300, 300)), "pixels"),
    ("file:///etc/passwd", "unsupported image URL scheme 'file'"),
    ("http://169.254.169.254/latest/meta-data", "remote image URLs are disabled"),
    ("https://example.com/cat.png", "server.image_url_allowlist"),
])
def test_bad_images_are_refused_with_the_reason(url: str, fragment: str) -> None:
    with pytest.raises(ImageError) as info:
        check(msg(url))
    assert fragment in str(info.value)
    assert info.value.param == "messages[0].content[1]"


def test_byte_limit_is_checked_before_decoding() -> None:
    big = b"\x00" * (LIMITS.max_bytes + 1024)
    with pytest.raises(ImageError, match="max_image_bytes"):
        check(msg(data_url(big)))


def test_too_many_images() -> None:
    with pytest.raises(ImageError, match=r"3 images in one request.*server.max_images"):
        check(msg(*[data_url(png())] * 3))


def test_image_part_without_url() -> None:
    with pytest.raises(ImageError, match=r"needs image_url\.url"):
        check([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
