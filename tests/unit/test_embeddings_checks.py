"""gateway/openai/embeddings.py and gateway/ollama/embed.py: the checks before routing,
and Ollama's embeddings shapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from gateway.core.errors import BadRequest
from gateway.ollama import embed as oe
from gateway.openai import embeddings as e
from gateway.ops.metrics import usage_of
from shared import protocol as p

LIMITS = {"max_inputs": 3, "max_model_len": 4}


def refused(body: dict[str, Any], **limits: int) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        e.check_openai(body, **{**LIMITS, **limits})
    assert caught.value.status == 400
    return caught.value


# ----- check_openai ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "hello",
    ["a", "b", "c"],
    [1, 2, 3, 4],  # one input of token ids, exactly the context
    [[1, 2], [0], [3, 4, 5, 6]],
])
def test_the_input_shapes_vllm_takes_are_accepted(value: Any) -> None:
    body = {"input": value}
    e.check_openai(body, **LIMITS)  # raises nothing
    assert body == {"input": value}  # checked, not changed


@pytest.mark.parametrize(("extra", "why"), [
    ({"encoding_format": "float"}, "the default"),
    ({"encoding_format": "base64"}, "the other encoding"),
    ({"dimensions": 1}, "the smallest"),
    ({"dimensions": None}, "unset"),
])
def test_encodings_and_dimensions_that_are_accepted(extra: dict[str, Any], why: str) -> None:
    e.check_openai({"input": "x", **extra}, **LIMITS)


def test_input_is_required() -> None:
    err = refused({"model": "all-minilm"})
    assert err.param == "input" and err.message.startswith("`input` is required")


@pytest.mark.parametrize("value", [
    None, 3, {"text": "x"}, [], [[]], ["a", 1], [[1, 2], "a"], [1, "a"], [-1], [[1, -2]],
    [True, False], [[1, 2], [True]], [1.5], [[1], 2],
])
def test_malformed_inputs_are_refused(value: Any) -> None:
    err = refused({"input": value})
    assert err.param == "input"
    assert "must be a string, a non-empty list of strings, a list of token ids" in err.message


def test_too_many_inputs_name_the_limit() -> None:
    err = refused({"input": ["a", "b", "c", "d"]})
    assert err.param == "input"
    assert err.message == ("4 inputs; the limit is 3 per request "
                           "(server.max_embedding_inputs)")
    refused({"input": [[1], [2], [3], [4]]})
    # one list of token ids is one input, however long (its length is the context check)
    e.check_openai({"input": [1, 2, 3]}, max_inputs=1, max_model_len=4)


@pytest.mark.parametrize(("value", "where"), [("", "input"), (["a", ""], "input[1]")])
def test_an_empty_string_is_refused_naming_which(value: Any, where: str) -> None:
    err = refused({"input": value})
    assert err.message == (f"`{where}` is an empty string; each input must hold some text")
    assert err.param == "input"


@pytest.mark.parametrize(("value", "message"), [
    ([1, 2, 3, 4, 5], "`input` has 5 tokens; this model's context is 4"),
    ([[1], [1, 2, 3, 4, 5, 6]], "`input[1]` has 6 tokens; this model's context is 4"),
])
def test_token_ids_longer_than_the_context_are_refused(value: Any, message: str) -> None:
    err = refused({"input": value})
    assert (err.message, err.param) == (message, "input")


def test_strings_are_not_measured_here() -> None:
    # The gateway has no tokenizer: vLLM refuses a long string in the worker.
    e.check_openai({"input": "word " * 100}, **LIMITS)


@pytest.mark.parametrize("fmt", ["int8", "FLOAT", None, 1])
def test_an_unknown_encoding_format_is_refused(fmt: Any) -> None:
    err = refused({"input": "x", "encoding_format": fmt})
    assert err.param == "encoding_format"
    assert err.message == f"`encoding_format` must be one of float, base64, not {fmt!r}"


@pytest.mark.parametrize("dims", [0, -3, 1.5, "384", True, False])
def test_dimensions_must_be_a_positive_integer(dims: Any) -> None:
    err = refused({"input": "x", "dimensions": dims})
    assert (err.param, err.message) == ("dimensions", "`dimensions` must be a positive integer")


@pytest.mark.parametrize("value", [-1, 0, 3, None])
def test_truncate_prompt_tokens_that_are_accepted(value: int | None) -> None:
    e.check_openai({"input": "x", "truncate_prompt_tokens": value}, **LIMITS)


@pytest.mark.parametrize("value", [-2, 1.5, "3", True, False, [1]])
def test_truncate_prompt_tokens_must_be_an_integer_from_minus_one(value: Any) -> None:
    err = refused({"input": "x", "truncate_prompt_tokens": value})
    assert err.param == "truncate_prompt_tokens"
    assert err.message == ("`truncate_prompt_tokens` must be an integer ≥ -1 (-1: the "
                           "model's context)")


@pytest.mark.parametrize("value", [-1, 2])
def test_with_truncation_token_ids_may_be_longer_than_the_context(value: int) -> None:
    # vLLM cuts them: to the context (-1) or to `value` tokens.
    e.check_openai({"input": [1, 2, 3, 4, 5], "truncate_prompt_tokens": value}, **LIMITS)
    e.check_openai({"input": [[1], [1, 2, 3, 4, 5, 6]], "truncate_prompt_tokens": value},
                   **LIMITS)
    # ...but the other checks still hold
    assert refused({"input": [[1], []], "truncate_prompt_tokens": value}).param == "input"
    assert refused({"input": ["a", "b", "c", "d"],
                    "truncate_prompt_tokens": value}).message.startswith("4 inputs")


def test_the_input_is_checked_before_the_encoding() -> None:
    assert refused({"input": [], "encoding_format": "int8"}).param == "input"


# ----- Ollama's requests -------------------------------------------------------------------


def test_decode_ollama_takes_each_shape_and_refuses_a_bad_one() -> None:
    embed = oe.decode_ollama({"model": "all-minilm", "input": ["a", "b"], "truncate": False},
                            "embed")
    assert isinstance(embed, oe.EmbedRequest)
    assert (embed.input, embed.truncate) == (["a", "b"], False)
    legacy = oe.decode_ollama({"model": "all-minilm", "prompt": "a"}, "embeddings")
    assert isinstance(legacy, oe.LegacyEmbeddingsRequest) and legacy.prompt == "a"
    with pytest.raises(BadRequest) as caught:
        oe.decode_ollama({"model": "m", "input": 3}, "embed")
    assert caught.value.status == 400 and "$.input" in caught.value.message
    # As Ollama's own decoder does, unknown fields are ignored: the legacy API's text is
    # `prompt`, so an `input` there embeds nothing.
    ignored = oe.decode_ollama({"model": "m", "input": "x"}, "embeddings")
    assert oe.ollama_inputs(ignored) == []


def test_ollama_inputs() -> None:
    assert oe.ollama_inputs(oe.EmbedRequest(input="a")) == ["a"]
    assert oe.ollama_inputs(oe.EmbedRequest(input=["a", "b"])) == ["a", "b"]
    assert oe.ollama_inputs(oe.EmbedRequest()) == []
    assert oe.ollama_inputs(oe.EmbedRequest(input=[])) == []
    # Ollama: an empty string, like no input, only loads the model
    assert oe.ollama_inputs(oe.EmbedRequest(input="")) == []
    assert oe.ollama_inputs(oe.decode_ollama({"model": "m", "input": ""}, "embed")) == []
    # ...but an empty string in a list is an input (check_openai refuses it, naming it)
    assert oe.ollama_inputs(oe.EmbedRequest(input=["a", ""])) == ["a", ""]
    assert oe.ollama_inputs(oe.LegacyEmbeddingsRequest(prompt="a")) == ["a"]
    assert oe.ollama_inputs(oe.LegacyEmbeddingsRequest()) == []


def test_ollama_body_truncates_to_the_context_unless_told_not_to() -> None:
    req = oe.EmbedRequest(model="all-minilm:l6-v2", input="a")
    assert oe.ollama_body(req, "all-minilm", vllm=True) == {
        "model": "all-minilm", "input": ["a"], "encoding_format": "float",
        "truncate_prompt_tokens": -1}
    assert oe.ollama_body(oe.EmbedRequest(input=["a", "b"], truncate=False), "m",
                         vllm=True) == {"model": "m", "input": ["a", "b"],
                                        "encoding_format": "float"}


@pytest.mark.parametrize("truncate", [True, False])
def test_a_remote_openai_model_is_not_sent_vllms_truncation(truncate: bool) -> None:
    # OpenAI's API refuses fields it does not know; truncate_prompt_tokens is vLLM's.
    body = oe.ollama_body(oe.EmbedRequest(input="a", truncate=truncate), "m", vllm=False)
    assert body == {"model": "m", "input": ["a"], "encoding_format": "float"}


@pytest.mark.parametrize("vllm", [True, False])
def test_dimensions_are_not_sent_the_answer_is_cut_instead(vllm: bool) -> None:
    body = oe.ollama_body(oe.EmbedRequest(input="a", truncate=False, dimensions=128), "m",
                         vllm=vllm)
    assert body == {"model": "m", "input": ["a"], "encoding_format": "float"}


@pytest.mark.parametrize("vllm", [True, False])
def test_the_legacy_body_has_no_truncation_or_dimensions(vllm: bool) -> None:
    assert oe.ollama_body(oe.LegacyEmbeddingsRequest(prompt="a"), "m", vllm=vllm) == {
        "model": "m", "input": ["a"], "encoding_format": "float"}


@pytest.mark.parametrize("vllm", [True, False])
def test_ollama_bodies_pass_the_openai_checks(vllm: bool) -> None:
    body = oe.ollama_body(oe.EmbedRequest(input=["a", "b"], dimensions=8), "m", vllm=vllm)
    e.check_openai(body, **LIMITS)


@pytest.mark.parametrize("dims", [0, 1, 384, None])
def test_ollama_dimensions_may_be_zero_or_more(dims: int | None) -> None:
    req = oe.decode_ollama({"model": "m", "input": "a", "dimensions": dims}, "embed")
    assert isinstance(req, oe.EmbedRequest) and req.dimensions == dims


@pytest.mark.parametrize("dims", [-1, 1.5, "8"])
def test_ollama_dimensions_below_zero_or_not_an_integer_are_refused(dims: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        oe.decode_ollama({"model": "m", "input": "a", "dimensions": dims}, "embed")
    assert caught.value.status == 400 and "$.dimensions" in caught.value.message


# ----- answers ----------------------------------------------------------------------------

ANSWER = msgspec.json.encode({
    "id": "embd-1", "object": "list", "model": "all-minilm", "created": 1,
    "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
             {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]}],
    "usage": {"prompt_tokens": 7, "total_tokens": 7, "completion_tokens": 0},
})


def test_usage_of_counts_inputs_and_tokens() -> None:
    assert usage_of(ANSWER) == (2, 7)
    assert usage_of(b'{"data": [{"embedding": [1]}]}') == (1, 0)  # no usage


@pytest.mark.parametrize("body", [b"", b"not json", b'{"error": {"message": "x"}}',
                                  b'{"data": 3}'])
def test_usage_of_an_unreadable_or_error_answer_is_nothing(body: bytes) -> None:
    assert usage_of(body) == (0, 0)


def ticking(*values: int) -> Any:
    it: Iterator[int] = iter(values)
    return lambda: next(it)


def test_the_embed_answer_has_ollamas_fields_and_durations() -> None:
    fmt = oe.OllamaEmbedFormat(model="all-minilm:22m", kind="embed",
                              clock=ticking(1_000, 4_000, 10_000))
    fmt.loaded()
    assert msgspec.json.decode(fmt.response(ANSWER)) == {
        "model": "all-minilm:22m", "embeddings": [[0.5, -0.25], [1.0, 0.0]],
        "total_duration": 9_000, "load_duration": 3_000, "prompt_eval_count": 7}


def test_without_a_load_the_load_duration_is_zero() -> None:
    fmt = oe.OllamaEmbedFormat(model="m", kind="embed", clock=ticking(5, 12))
    answer = msgspec.json.decode(fmt.response(ANSWER))
    assert (answer["total_duration"], answer["load_duration"]) == (7, 0)


def test_the_legacy_answer_is_one_embedding() -> None:
    fmt = oe.OllamaEmbedFormat(model="m", kind="embeddings", clock=ticking(0))
    assert msgspec.json.decode(fmt.response(ANSWER)) == {"embedding": [0.5, -0.25]}
    assert msgspec.json.decode(fmt.response(b'{"data": []}')) == {"embedding": []}


def test_the_answer_to_no_input() -> None:
    fmt = oe.OllamaEmbedFormat(model="m", kind="embed", clock=ticking(100, 150, 400))
    fmt.loaded()
    assert msgspec.json.decode(fmt.empty()) == {
        "model": "m", "embeddings": [], "total_duration": 300, "load_duration": 50,
        "prompt_eval_count": 0}
    legacy = oe.OllamaEmbedFormat(model="m", kind="embeddings", clock=ticking(0))
    assert msgspec.json.decode(legacy.empty()) == {"embedding": []}


@pytest.mark.parametrize("kind", ["embed", "embeddings"])
def test_an_unreadable_answer_is_an_ollama_error(kind: oe.EmbedKind) -> None:
    fmt = oe.OllamaEmbedFormat(model="m", kind=kind, clock=ticking(0, 1))
    for body in (b"{", b'{"object": "error", "message": "bad"}'):
        assert msgspec.json.decode(fmt.response(body)) == {
            "error": "the embedding model answered something unreadable"}


def test_errors_are_in_ollamas_shape_and_nothing_streams() -> None:
    fmt = oe.OllamaEmbedFormat(model="m", kind="embed", clock=ticking(0))
    err = p.Error(request_id="r", kind=p.ErrorKind.BAD_REQUEST, status=400, message="too long")
    assert msgspec.json.decode(fmt.error(err)) == {"error": "too long"}
    assert msgspec.json.decode(fmt.stream_error(err)) == {"error": "too long"}
    assert (fmt.chunk("data: x\n\n"), fmt.end()) == (b"", b"")
    assert fmt.stream_content_type.startswith(b"application/json")


# ----- Ollama's dimensions: cut and normalised again ---------------------------------------

WIDE = msgspec.json.encode({
    "data": [{"index": 0, "embedding": [3.0, 4.0, 12.0]},
             {"index": 1, "embedding": [0.0, 0.0, 1.0]}],
    "usage": {"prompt_tokens": 2}})


def embeddings_of(fmt: oe.OllamaEmbedFormat, body: bytes = WIDE) -> Any:
    answer = msgspec.json.decode(fmt.response(body))
    return answer["embeddings"] if fmt.kind == "embed" else answer["embedding"]


def test_dimensions_keep_the_first_values_normalised_again() -> None:
    fmt = oe.OllamaEmbedFormat(model="m", kind="embed", dimensions=2, clock=ticking(0, 1))
    # [3, 4] / 5; a head of zeros has no direction and is kept as it is
    assert embeddings_of(fmt) == [[0.6, 0.8], [0.0, 0.0]]
    one = oe.OllamaEmbedFormat(model="m", kind="embed", dimensions=1, clock=ticking(0, 1))
    assert embeddings_of(one) == [[1.0], [0.0]]


@pytest.mark.parametrize("dims", [None, 0, 3, 4, 1000])
def test_unset_zero_or_at_least_the_length_leaves_the_vector_whole(dims: int | None) -> None:
    fmt = oe.OllamaEmbedFormat(model="m", kind="embed", dimensions=dims, clock=ticking(0, 1))
    assert embeddings_of(fmt) == [[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]]


def test_the_legacy_answer_is_cut_too() -> None:
    fmt = oe.OllamaEmbedFormat(model="m", kind="embeddings", dimensions=2, clock=ticking(0))
    assert embeddings_of(fmt) == [0.6, 0.8]


def test_a_cut_vector_has_unit_length() -> None:
    vector = [0.1 * i - 0.7 for i in range(16)]
    body = msgspec.json.encode({"data": [{"embedding": vector}], "usage": {"prompt_tokens": 1}})
    fmt = oe.OllamaEmbedFormat(model="m", kind="embed", dimensions=5, clock=ticking(0, 1))
    (cut,) = embeddings_of(fmt, body)
    assert len(cut) == 5
    assert sum(x * x for x in cut) == pytest.approx(1.0)
    norm = sum(x * x for x in vector[:5]) ** 0.5
    assert cut == pytest.approx([x / norm for x in vector[:5]])
