"""Client library for the assistant's services: one interface, two providers.

``VLLMProvider`` speaks the OpenAI API (zoe-vllm on a Jetson, or any
OpenAI-compatible server); ``OllamaProvider`` speaks Ollama's native API (a
Raspberry Pi running Ollama, or zoe-vllm's Ollama endpoints). Each has
blocking and ``async`` methods, streaming included. The legacy helpers
``call_ollama_direct`` and ``call_ollama_streaming`` go to whichever provider
is current (:func:`get_provider`), as the seed's migration notes promise::

    from shared.client import call_ollama_direct
    answer = await call_ollama_direct("What is the capital of France?")

Both providers share request building and response parsing; only the HTTP
transport differs between the blocking and async methods.
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

DEFAULT_URL = "http://127.0.0.1:11434"
Messages = list[dict[str, Any]]


class ProviderError(RuntimeError):
    """The server answered with an error (its message is kept)."""


def _messages(prompt: str, context: str | Messages | None) -> Messages:
    if isinstance(context, list):
        return [*context, {"role": "user", "content": prompt}]
    msgs: Messages = [{"role": "system", "content": context}] if context else []
    return [*msgs, {"role": "user", "content": prompt}]


class _Provider(abc.ABC):
    name = "base"
    path = ""

    def __init__(self, url: str = DEFAULT_URL, model: str | None = None,
                 api_key: str | None = None, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._kw: dict[str, Any] = {"base_url": self.url, "headers": headers,
                                    "timeout": timeout_s}

    # --- what each provider defines --------------------------------------------
    @abc.abstractmethod
    def body(self, messages: Messages, model: str | None, stream: bool,
             options: dict[str, Any]) -> dict[str, Any]:
        """The request body for ``messages``."""

    @abc.abstractmethod
    def piece(self, line: str) -> str | None:
        """Text in one streamed line; None when the line ends the stream."""

    @abc.abstractmethod
    def text(self, obj: dict[str, Any]) -> str:
        """The answer's text in a complete (non-streamed) response."""

    # --- shared plumbing ------------------------------------------------------
    @staticmethod
    def _check(resp: httpx.Response) -> None:
        if resp.status_code >= 400:
            try:
                err = resp.json().get("error")
            except ValueError:
                err = resp.text
            message = err.get("message") if isinstance(err, dict) else err
            raise ProviderError(f"HTTP {resp.status_code}: {message}")

    def chat(self, messages: Messages, model: str | None = None, **options: Any) -> str:
        with httpx.Client(**self._kw) as client:
            resp = client.post(self.path, json=self.body(messages, model, False, options))
            self._check(resp)
            return self.text(resp.json())

    def stream(self, messages: Messages, model: str | None = None,
               **options: Any) -> Iterator[str]:
        with httpx.Client(**self._kw) as client, client.stream(
                "POST", self.path, json=self.body(messages, model, True, options)) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._check(resp)
            for line in resp.iter_lines():
                if line.strip():
                    piece = self.piece(line)
                    if piece is None:
                        return
                    if piece:
                        yield piece

    async def achat(self, messages: Messages, model: str | None = None,
                    **options: Any) -> str:
        async with httpx.AsyncClient(**self._kw) as client:
            resp = await client.post(self.path, json=self.body(messages, model, False, options))
            self._check(resp)
            return self.text(resp.json())

    async def astream(self, messages: Messages, model: str | None = None,
                      **options: Any) -> AsyncIterator[str]:
        async with httpx.AsyncClient(**self._kw) as client, client.stream(
                "POST", self.path, json=self.body(messages, model, True, options)) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                self._check(resp)
            async for line in resp.aiter_lines():
                if line.strip():
                    piece = self.piece(line)
                    if piece is None:
                        return
                    if piece:
                        yield piece


class VLLMProvider(_Provider):
    """The OpenAI chat API (zoe-vllm's /v1)."""

    name = "vllm"
    path = "/v1/chat/completions"

    def body(self, messages: Messages, model: str | None, stream: bool,
             options: dict[str, Any]) -> dict[str, Any]:
        return {"model": model or self.model or "auto", "messages": messages,
                "stream": stream, **options}

    def piece(self, line: str) -> str | None:
        if not line.startswith("data:"):
            return ""
        data = line[5:].strip()
        if data == "[DONE]":
            return None
        obj = msgspec.json.decode(data)
        if "error" in obj:
            raise ProviderError(obj["error"].get("message", str(obj["error"])))
        choices = obj.get("choices") or [{}]
        return str((choices[0].get("delta") or {}).get("content") or "")

    def text(self, obj: dict[str, Any]) -> str:
        return str(obj["choices"][0]["message"].get("content") or "")


class OllamaProvider(_Provider):
    """Ollama's native chat API (an Ollama server, or zoe-vllm's /api)."""

    name = "ollama"
    path = "/api/chat"

    def body(self, messages: Messages, model: str | None, stream: bool,
             options: dict[str, Any]) -> dict[str, Any]:
        body = {"model": model or self.model or "phi3:mini", "messages": messages,
                "stream": stream}
        if options:
            body["options"] = options
        return body

    def piece(self, line: str) -> str | None:
        obj = msgspec.json.decode(line)
        if "error" in obj:
            raise ProviderError(str(obj["error"]))
        content = str((obj.get("message") or {}).get("content") or "")
        return None if obj.get("done") and not content else content

    def text(self, obj: dict[str, Any]) -> str:
        return str((obj.get("message") or {}).get("content") or "")


Provider = VLLMProvider | OllamaProvider
_current: Provider | None = None


def detect_provider(env: dict[str, str] | None = None, tegra: Path = Path(
        "/etc/nv_tegra_release")) -> Provider:
    """``ZOE_LLM_PROVIDER``/``ZOE_LLM_URL``/``ZOE_LLM_API_KEY`` win; else a Jetson
    uses vLLM and anything else (e.g. a Raspberry Pi) uses Ollama."""
    env = dict(os.environ) if env is None else env
    kind = env.get("ZOE_LLM_PROVIDER", "").lower() or ("vllm" if tegra.exists() else "ollama")
    if kind not in ("vllm", "ollama"):
        raise ValueError(f"ZOE_LLM_PROVIDER must be 'vllm' or 'ollama', not {kind!r}")
    cls: type[Provider] = VLLMProvider if kind == "vllm" else OllamaProvider
    return cls(url=env.get("ZOE_LLM_URL", DEFAULT_URL), model=env.get("ZOE_LLM_MODEL"),
               api_key=env.get("ZOE_LLM_API_KEY"))


def get_provider() -> Provider:
    global _current
    if _current is None:
        _current = detect_provider()
    return _current


def set_provider(provider: Provider | None) -> None:
    """Use ``provider`` from now on (None: detect again on next use)."""
    global _current
    _current = provider


async def call_ollama_direct(prompt: str, model: str | None = None,
                             context: str | Messages | None = None) -> str:
    """Legacy helper: one answer from the current provider."""
    return await get_provider().achat(_messages(prompt, context), model)


async def call_ollama_streaming(prompt: str, model: str | None = None,
                                context: str | Messages | None = None,
                                **options: Any) -> AsyncIterator[str]:
    """Legacy helper: ``async for piece in await call_ollama_streaming(...)``."""
    return get_provider().astream(_messages(prompt, context), model, **options)
