"""``POST /v1/embeddings``: the checks the gateway makes before routing.

The body goes to vLLM's own embeddings serving class in a pooling worker as OpenAI sent it,
once :func:`check_openai` has refused what would fail there anyway or what a limit forbids.
A string is tokenized in the worker (the gateway has no tokenizer), so a string longer than
the model's context is refused there by vLLM, with a 400, before it reaches the engine; token
ids are counted here. The Ollama endpoints build this same body (:mod:`gateway.ollama.embed`).
"""

from __future__ import annotations

from typing import Any

from gateway.core.errors import BadRequest

ENCODINGS = ("float", "base64")

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
