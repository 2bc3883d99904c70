"""Embeddings: the checks the gateway makes before routing, and Ollama's shapes.

``POST /v1/embeddings`` goes to vLLM's own embeddings serving class in a pooling worker as
OpenAI sent it, once :func:`check_openai` has refused what would fail there anyway or what
a limit forbids. ``/api/embed`` and the legacy ``/api/embeddings`` become that same body
(:func:`ollama_body`), and :class:`OllamaEmbedFormat` writes vLLM's answer as Ollama does.

A string is tokenized in the worker (the gateway has no tokenizer), so a string longer than
the model's context is refused there by vLLM, with a 400, before it reaches the engine; token
ids are counted here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

from gateway.errors import BadRequest
from gateway.ollama_format import JSON, ollama_error_body
from shared import protocol as p

ENCODINGS = ("float", "base64")
EmbedKind = Literal["embed", "embeddings"]


def check_openai(body: dict[str, Any], *, max_inputs: int, max_model_len: int) -> None:
    """Raise BadRequest for an embeddings body vLLM would refuse, or one over a limit."""
    if "input" not in body:
        raise BadRequest(400, "`input` is required: a string, a list of strings, or token "
                              "ids", param="input")
    items = _items(body["input"])
    truncate = body.get("truncate_prompt_tokens")
    if truncate is not None and (not isinstance(truncate, int) or isinstance(truncate, bool)
                                 or truncate < -1):
        raise BadRequest(400, "`truncate_prompt_tokens` must be an integer ≥ -1 (-1: the "
                              "model's context)", param="truncate_prompt_tokens")
    if len(items) > max_inputs:
        raise BadRequest(400, f"{len(items)} inputs; the limit is {max_inputs} per request "
                              "(server.max_embedding_inputs)", param="input")
    for i, item in enumerate(items):
        where = f"input[{i}]" if len(items) > 1 else "input"
        if isinstance(item, str):
            if not item:
                raise BadRequest(400, f"`{where}` is an empty string; each input must hold "
                                      "some text", param="input")
        elif truncate is None and len(item) > max_model_len:
            raise BadRequest(400, f"`{where}` has {len(item)} tokens; this model's context "
                                  f"is {max_model_len}", param="input")
    fmt = body.get("encoding_format", "float")
    if fmt not in ENCODINGS:
        raise BadRequest(400, f"`encoding_format` must be one of {', '.join(ENCODINGS)}, not "
                              f"{fmt!r}", param="encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise BadRequest(400, "`dimensions` must be a positive integer", param="dimensions")


def _items(value: Any) -> list[str] | list[list[int]]:
    """The inputs of ``input``: strings, or token-id lists (one list of ints is one input)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(_is_token_ids(v) for v in value):
            return value
        if _is_token_ids(value):
            return [value]
    raise BadRequest(400, "`input` must be a string, a non-empty list of strings, a list of "
                          "token ids, or a list of such lists", param="input")


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


# ----- Ollama ------------------------------------------------------------------------------
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


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0


class _Answer(msgspec.Struct):
    """The part of vLLM's embeddings answer that Ollama's carries (the rest is skipped)."""

    data: list[_Datum]
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _Counted(msgspec.Struct):
    data: list[msgspec.Raw]  # not decoded: only counted
    usage: _Usage = msgspec.field(default_factory=_Usage)


def usage_of(body: bytes) -> tuple[int, int]:
    """(inputs, prompt tokens) of an OpenAI embeddings answer, for the metrics."""
    try:
        answer = msgspec.json.decode(body, type=_Counted)
    except msgspec.DecodeError:
        return 0, 0
    return len(answer.data), answer.usage.prompt_tokens


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
