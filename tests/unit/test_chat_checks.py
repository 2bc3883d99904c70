"""The gateway's cheap checks of chat and completion bodies (gateway/core/chat_checks.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.chat_checks import check_messages_shape, check_sampling
from gateway.core.errors import BadRequest


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": None}],
    [{"role": "assistant", "content": None, "tool_calls": []},
     {"role": "tool", "tool_call_id": "1", "content": "{}"}],
    [{"role": "ipython", "content": "42"}],
    [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                  {"type": "image_url", "image_url": {"url": "data:,"}},
                                  {"type": "input_audio", "input_audio": {}}]}],
])
def test_messages_vllm_renders_pass(messages: list[Any]) -> None:
    check_messages_shape(messages)


@pytest.mark.parametrize(("messages", "param"), [
    (["hi"], "messages[0]"),
    ([{"role": "user", "content": "a"}, 3], "messages[1]"),
    ([{"content": "hi"}], "messages[0].role"),
    ([{"role": "robot", "content": "hi"}], "messages[0].role"),
    ([{"role": ["user"], "content": "hi"}], "messages[0].role"),
    ([{"role": {}, "content": "hi"}], "messages[0].role"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user", "content": {"text": "hi"}}], "messages[0].content"),
    ([{"role": "user", "content": ["hi"]}], "messages[0].content[0]"),
    ([{"role": "user", "content": [{"text": "hi"}]}], "messages[0].content[0]"),
    ([{"role": "user", "content": [{"type": "text", "text": 1}]}],
     "messages[0].content[0].text"),
])
def test_malformed_messages_are_refused_naming_the_field(messages: list[Any],
                                                          param: str) -> None:
    with pytest.raises(BadRequest) as err:
        check_messages_shape(messages)
    assert err.value.status == 400 and err.value.param == param
    assert f"`{param}" in err.value.message


@pytest.mark.parametrize("body", [
    {},
    {"temperature": 0, "top_p": 1, "min_p": 0, "presence_penalty": -2,
     "frequency_penalty": 2, "repetition_penalty": 1.1},
    {"temperature": None, "max_tokens": None},
    {"temperature": "0.7", "max_tokens": "16"},  # vLLM coerces numeric strings
    {"max_tokens": 0, "n": 1, "min_tokens": 0, "max_completion_tokens": 5},
    {"temperature": 7.5},  # vLLM has no upper bound
])
def test_sampling_vllm_accepts_passes(body: dict[str, Any]) -> None:
    check_sampling(body)


@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": [1]}, "temperature"),
    ({"temperature": "nan"}, "temperature"),
    ({"temperature": 1e400}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"min_p": 2}, "min_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"min_tokens": -3}, "min_tokens"),
    ({"max_tokens": 10**400}, "max_tokens"),
])
def test_bad_sampling_values_are_refused_naming_the_field(body: dict[str, Any],
                                                          param: str) -> None:
    with pytest.raises(BadRequest) as err:
        check_sampling(body)
    assert err.value.status == 400 and err.value.param == param
    assert f"`{param}`" in err.value.message
