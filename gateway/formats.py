"""How a relayed answer is written for the client's API.

The worker always speaks OpenAI (vLLM's serving layer): a JSON body, or SSE
``data:`` strings. A :class:`Format` turns that into what the client's API
expects. :class:`OpenAIFormat` passes bytes through untouched; the Ollama
endpoints bring their own (NDJSON, nanosecond timings).
"""

from __future__ import annotations

from typing import Protocol

from gateway import errors
from shared import protocol as p


class Format(Protocol):
    stream_content_type: bytes

    def loaded(self) -> None:
        """The wait for the model is over (it is READY, or will not be): timing hook."""

    def response(self, body: bytes) -> bytes:
        """A complete (non-streaming) answer, from vLLM's JSON body."""

    def chunk(self, data: str) -> bytes:
        """One streamed piece, from one of vLLM's SSE strings (may be empty)."""

    def end(self) -> bytes:
        """Written after the last chunk of a stream that finished normally."""

    def error(self, err: p.Error) -> bytes:
        """An error body, sent with ``err.status`` before anything was streamed."""

    def stream_error(self, err: p.Error) -> bytes:
        """The tail of a stream that failed after output went out."""


class OpenAIFormat:
    stream_content_type = b"text/event-stream; charset=utf-8"

    def loaded(self) -> None:
        pass

    def response(self, body: bytes) -> bytes:
        return body

    def chunk(self, data: str) -> bytes:
        return data.encode()

    def end(self) -> bytes:
        return b""

    def error(self, err: p.Error) -> bytes:
        return errors.openai_error_body(err.status, err.message, type=err.type or None,
                                        param=err.param, code=err.code)

    def stream_error(self, err: p.Error) -> bytes:
        return errors.sse_error_event(err.message, code=err.code or err.kind.value,
                                      status=err.status) + b"data: [DONE]\n\n"
