"""gateway/openai/responses.py: the checks before routing, the router's view, the stream errors."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from gateway.core.errors import BadRequest
from gateway.openai import responses as r
from shared import protocol as p

IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}


def refused(body: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        r.check(body)
    assert caught.value.status == 400
    return caught.value


# ----- check: accepted ---------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"input": "hi"},
    {"input": "hi", "instructions": "be brief", "max_output_tokens": 1, "stream": True},
    {"input": [{"role": "user", "content": "hi"}]},
    {"input": [{"type": "message", "role": "developer", "content": [
        {"type": "input_text", "text": "hi"}, IMAGE]}]},
    {"input": [{"role": "system", "content": "s"},
               {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}]},
    # a tool round trip, as Home Assistant sends it
    {"input": [{"role": "user", "content": "lights on"},
               {"type": "function_call", "call_id": "c1", "name": "turn_on",
                "arguments": "{\"entity\": \"light.kitchen\"}"},
               {"type": "function_call_output", "call_id": "c1", "output": "done"}],
     "tools": [{"type": "function", "name": "turn_on", "parameters": {"type": "object"}},
               {"type": "web_search"}]},
    # an output that is not a string, and an item kind not checked here (vLLM's to judge)
    {"input": [{"type": "function_call_output", "call_id": "c", "output": {"ok": True}},
               {"type": "reasoning", "summary": []}]},
    # nothing stored: these as off are the same as absent
    {"input": "hi", "previous_response_id": None, "background": False,
     "conversation": None, "store": False},
    {"input": "hi", "tools": []},
])
def test_well_formed_bodies_are_accepted(body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    r.check(body)
    assert body == before


# ----- check: unsupported ------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("previous_response_id", "resp_1"),
    ("background", True),
    ("conversation", "conv_1"),
    ("conversation", {"id": "conv_1"}),
])
def test_what_needs_stored_responses_is_refused(field: str, value: Any) -> None:
    err = refused({"input": "hi", field: value})
    assert (err.param, err.code) == (field, "unsupported_parameter")
    assert err.message == f"`{field}` is not supported: {r.UNSUPPORTED[field]}"


def test_unsupported_fields_are_refused_before_the_input_is_looked_at() -> None:
    assert refused({"previous_response_id": "resp_1"}).param == "previous_response_id"


# ----- check: malformed --------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({}, "input", "`input` is required"),
    ({"input": ""}, "input", "`input` is an empty string"),
    ({"input": "  \n"}, "input", "`input` is an empty string"),
    ({"input": []}, "input", "must be a string or a non-empty list"),
    ({"input": 3}, "input", "must be a string or a non-empty list"),
    ({"input": {"role": "user"}}, "input", "must be a string or a non-empty list"),
    ({"input": ["hi"]}, "input[0]", "`input[0]` must be an object"),
    ({"input": [{"type": 3}]}, "input[0].type", "`input[0].type` must be a string"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role",
     "`input[0].role` must be one of assistant, developer, system, user, not 'tool'"),
    ({"input": [{"type": "message", "content": "x"}]}, "input[0].role", "not None"),
    ({"input": [{"role": "user", "content": "a"}, {"role": "user"}]}, "input[1].content",
     "`input[1].content` must be a string or a list of content parts"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content", "string or a list"),
    ({"input": [{"role": "user", "content": ["hi"]}]}, "input[0].content",
     "parts must be objects with a `type`"),
    ({"input": [{"role": "user", "content": [{"text": "hi"}]}]}, "input[0].content",
     "parts must be objects with a `type`"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0]",
     "a function_call_output needs `call_id` and `output`"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0]",
     "a function_call_output needs `call_id` and `output`"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0]",
     "a function_call needs `call_id`, `name` and `arguments` (strings)"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f",
                 "arguments": {"a": 1}}]}, "input[0]", "(strings)"),
    ({"input": "hi", "instructions": ["a"]}, "instructions", "must be a string"),
    ({"input": "hi", "tools": {"type": "function"}}, "tools", "must be a list of tools"),
    ({"input": "hi", "tools": [{"name": "f"}]}, "tools", "each with a `type`"),
    ({"input": "hi", "tools": ["f"]}, "tools", "each with a `type`"),
    ({"input": "hi", "tools": [{"type": "web_search"}, {"type": "function",
                                                         "function": {"name": "f"}}]},
     "tools[1].name", "the Responses API's tools are flat"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", "a positive integer"),
    ({"input": "hi", "max_output_tokens": "5"}, "max_output_tokens", "a positive integer"),
    ({"input": "hi", "max_output_tokens": True}, "max_output_tokens", "a positive integer"),
    ({"input": "hi", "max_output_tokens": 2.5}, "max_output_tokens", "a positive integer"),
])
def test_malformed_bodies_are_refused_naming_the_field(body: dict[str, Any], param: str,
                                                       fragment: str) -> None:
    err = refused(body)
    assert err.param == param
    assert fragment in err.message
    assert err.code is None


# ----- chat_view ---------------------------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    assert r.chat_view({"input": "hi", "model": "auto"}) == {
        "messages": [{"role": "user", "content": "hi"}], "tools": [], "tool_choice": None,
        "model": "auto"}


def test_without_a_model_the_view_names_none() -> None:
    assert "model" not in r.chat_view({"input": "hi"})


def test_items_become_messages_and_tool_items_are_left_out() -> None:
    body: dict[str, Any] = {
        "input": [
            {"role": "system", "content": "be brief"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "what is this?"}, IMAGE]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "ok"},
        ],
        "tools": [{"type": "function", "name": "f"}, {"type": "web_search"},
                  {"type": "file_search"}],
        "tool_choice": "auto",
    }
    view = r.chat_view(body)
    assert view["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]
    assert view["tools"] == [{"type": "function", "name": "f"}]
    assert view["tool_choice"] == "auto"
    # the image part is the body's own object: what the image checks do to it, the worker gets
    assert view["messages"][1]["content"][1] is body["input"][1]["content"][1]
    # input_text is a new part: the body keeps its own shape
    assert body["input"][1]["content"][0] == {"type": "input_text", "text": "what is this?"}


# ----- restore_image_parts -----------------------------------------------------------------


def test_inlined_images_go_back_to_the_responses_shape() -> None:
    inlined = {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}
    body: dict[str, Any] = {"input": [
        {"role": "user", "content": [{"type": "input_text", "text": "x"}, inlined, IMAGE]},
        {"role": "user", "content": "plain"},
        {"type": "function_call_output", "call_id": "c", "output": "ok"},
    ]}
    r.restore_image_parts(body)
    assert body["input"][0]["content"] == [
        {"type": "input_text", "text": "x"},
        {"type": "input_image", "image_url": "data:image/png;base64,BBBB"},
        IMAGE]
    assert body["input"][1:] == [
        {"role": "user", "content": "plain"},
        {"type": "function_call_output", "call_id": "c", "output": "ok"}]


def test_restore_leaves_a_string_input_alone() -> None:
    body = {"input": "hi"}
    r.restore_image_parts(body)
    assert body == {"input": "hi"}


# ----- ResponsesFormat ---------------------------------------------------------------------


def test_answers_and_events_pass_through() -> None:
    fmt = r.ResponsesFormat()
    fmt.loaded()
    assert fmt.response(b'{"id": "resp_1"}') == b'{"id": "resp_1"}'
    event = 'event: response.created\ndata: {"type": "response.created"}\n\n'
    assert fmt.chunk(event) == event.encode()
    assert fmt.end() == b""
    assert fmt.stream_content_type == b"text/event-stream; charset=utf-8"


def decode_event(raw: bytes) -> tuple[str, dict[str, Any]]:
    assert raw.endswith(b"\n\n")
    head, data = raw.decode().removesuffix("\n\n").split("\n")
    assert head.startswith("event: ") and data.startswith("data: ")
    decoded: dict[str, Any] = msgspec.json.decode(data.removeprefix("data: "))
    return head.removeprefix("event: "), decoded


def test_an_error_mid_stream_is_the_apis_error_event_numbered_after_the_events() -> None:
    fmt = r.ResponsesFormat()
    for _ in range(3):
        fmt.chunk("event: x\ndata: {}\n\n")
    err = p.Error(request_id="r", kind=p.ErrorKind.ENGINE_DEAD, status=503,
                  message="model engine died", streamed=True)
    assert decode_event(fmt.stream_error(err)) == ("error", {
        "type": "error", "code": "engine_dead", "message": "model engine died",
        "param": None, "sequence_number": 3})
    coded = p.Error(request_id="r", kind=p.ErrorKind.OOM, status=503, message="oom",
                    code="out_of_memory", param="input")
    assert decode_event(fmt.stream_error(coded))[1] == {
        "type": "error", "code": "out_of_memory", "message": "oom", "param": "input",
        "sequence_number": 3}
    assert decode_event(r.ResponsesFormat().stream_error(err))[1]["sequence_number"] == 0


def test_an_error_before_the_stream_is_openais_error_body() -> None:
    err = p.Error(request_id="r", kind=p.ErrorKind.BAD_REQUEST, status=400, message="bad",
                  param="input")
    assert msgspec.json.decode(r.ResponsesFormat().error(err)) == {"error": {
        "message": "bad", "type": "invalid_request_error", "param": "input", "code": None}}


@pytest.mark.parametrize("item", [
    {"type": "message", "role": "assistant", "content": []},
    {"role": "user", "content": []},
    {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
])
def test_items_vllm_would_crash_on_are_refused(item: dict[str, object]) -> None:
    """vLLM 0.32 raises IndexError/AttributeError on these (schemathesis found the first)."""
    with pytest.raises(BadRequest) as err:
        r.check({"input": [item]})
    assert err.value.status == 400 and err.value.param == "input[0].content"
