"""``/api/embed`` and the legacy ``/api/embeddings``, in Ollama's shapes.

A request becomes the OpenAI embeddings body (:func:`ollama_body`), checked as
``/v1/embeddings`` is, and :class:`OllamaEmbedFormat` writes vLLM's answer as Ollama does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from gateway.core.errors import BadRequest
from gateway.ollama.format import JSON, ollama_error_body
from shared import protocol as p

EmbedKind = Literal["embed", "embeddings"]


class EmbedRequest(msgspec.Struct):
    """``POST /api/embed``."""

    model: str = ""
    input: str | list[str] | None = None
    truncate: bool = True
    dimensions: Annotated[int, msgspec.Meta(ge=0)] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None


class LegacyEmbeddingsRequest(msgspec.Struct):
    """``POST /api/embeddings``: one ``prompt``, one ``embedding``."""

    model: str = ""
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None


def decode_ollama(raw: dict[str, Any], kind: EmbedKind
                  ) -> EmbedRequest | LegacyEmbeddingsRequest:
    cls: type[EmbedRequest] | type[LegacyEmbeddingsRequest] = \
        EmbedRequest if kind == "embed" else LegacyEmbeddingsRequest
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        raise BadRequest(400, str(exc)) from None


def ollama_inputs(req: EmbedRequest | LegacyEmbeddingsRequest) -> list[str]:
    if isinstance(req, LegacyEmbeddingsRequest):
        return [req.prompt] if req.prompt else []
    if not req.input:  # Ollama: no input, or an empty string, only loads the model
        return []
    return [req.input] if isinstance(req.input, str) else list(req.input)


def ollama_body(req: EmbedRequest | LegacyEmbeddingsRequest, model: str, *,
                vllm: bool) -> dict[str, Any]:
    """The OpenAI body for an Ollama embeddings request with some input. Ollama truncates
    to the context unless told not to (then a long input is an error, as there); the cut
    is vLLM's ``truncate_prompt_tokens``, which only a ``vllm`` model is sent (OpenAI's
    API refuses unknown fields). ``dimensions`` is applied by :class:`OllamaEmbedFormat`,
    as Ollama does for any model."""
    body: dict[str, Any] = {"model": model, "input": ollama_inputs(req),
                            "encoding_format": "float"}
    if isinstance(req, EmbedRequest) and req.truncate and vllm:
        body["truncate_prompt_tokens"] = -1
    return body


class _Datum(msgspec.Struct):
    embedding: list[float]


class Usage(msgspec.Struct):
    prompt_tokens: int = 0

class _Answer(msgspec.Struct):
    """The part of vLLM's embeddings answer that Ollama's carries (the rest is skipped)."""

    data: list[_Datum]
    usage: Usage = msgspec.field(default_factory=Usage)

class OllamaEmbedFormat:
    """Writes vLLM's embeddings answer as ``/api/embed`` or ``/api/embeddings`` does."""

    stream_content_type = JSON

    def __init__(self, *, model: str, kind: EmbedKind, dimensions: int | None = None,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.model, self.kind, self.clock = model, kind, clock
        # Ollama's `dimensions`: the first n values, normalised again (0: unset).
        self.dimensions = dimensions or None
        self.t0 = clock()
        self.t_loaded: int | None = None

    def loaded(self) -> None:
        self.t_loaded = self.clock()

    def empty(self) -> bytes:
        """The answer to a request with no input: the model was loaded, nothing embedded."""
        if self.kind == "embeddings":
            return msgspec.json.encode({"embedding": []})
        return self._answer([], 0)

    def response(self, body: bytes) -> bytes:
        try:
            answer = msgspec.json.decode(body, type=_Answer)
        except msgspec.DecodeError:
            return ollama_error_body("the embedding model answered something unreadable")
        vectors = [self._cut(d.embedding) for d in answer.data]
        if self.kind == "embeddings":
            return msgspec.json.encode({"embedding": vectors[0] if vectors else []})
        return self._answer(vectors, answer.usage.prompt_tokens)

    def _cut(self, vector: list[float]) -> list[float]:
        if self.dimensions is None or self.dimensions >= len(vector):
            return vector
        head = vector[: self.dimensions]
        norm = math.sqrt(sum(x * x for x in head))
        return [x / norm for x in head] if norm > 0 else head

    def _answer(self, vectors: list[list[float]], tokens: int) -> bytes:
        now = self.clock()
        load = (self.t_loaded or self.t0) - self.t0
        return msgspec.json.encode({"model": self.model, "embeddings": vectors,
                                    "total_duration": now - self.t0, "load_duration": load,
                                    "prompt_eval_count": tokens})

    # Never streamed: these only satisfy the Format protocol.
    def chunk(self, data: str) -> bytes:
        return b""

    def end(self) -> bytes:
        return b""

    def error(self, err: p.Error) -> bytes:
        return ollama_error_body(err.message)

    def stream_error(self, err: p.Error) -> bytes:
        return ollama_error_body(err.message)
