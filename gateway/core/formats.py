"""How a relayed answer is written for the client's API.

The worker always speaks OpenAI (vLLM's serving layer): a JSON body, or SSE
``data:`` strings. A :class:`Format` turns that into what the client's API
expects. The OpenAI API passes bytes through untouched (:mod:`gateway.openai.format`);
the Ollama API brings its own (NDJSON, nanosecond timings).
"""

from __future__ import annotations

from typing import Protocol

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
