"""Tool calls with ``tool_choice: "auto"`` on the cpu profile's own model, through the official
``openai`` and ``ollama`` clients: what Home Assistant and every agent send.

The cpu profile's two text workers (Qwen2.5-Coder-0.5B and -1.5B-Instruct, provisioned from
their PyPI packages on first use) start once for this module; the vision worker is left out,
as it plays no part here. Refusals of tools to a model that cannot call them use the session's
tiny stack.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.e2e.conftest import Stack, running_stack

pytestmark = pytest.mark.e2e

CHAT, TOOLS = "qwen2.5-coder-0.5b-chat", "qwen2.5-coder-1.5b-tools"
AREAS = ["kitchen", "living_room", "bedroom", "office"]


def light_tool(name: str, verb: str) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": f"Turn {verb} the lights in an area of the home.",
        "parameters": {"type": "object", "properties": {
            "area": {"type": "string", "enum": AREAS,
                     "description": f"The area whose lights to turn {verb}."}},
            "required": ["area"]}}}


LIGHTS: list[Any] = [light_tool("turn_on_light", "on"), light_tool("turn_off_light", "off"),
                     {"type": "function", "function": {
                         "name": "set_thermostat", "description": "Set the thermostat.",
                         "parameters": {"type": "object", "required": ["temperature"],
                                        "properties": {"temperature": {"type": "number"}}}}}]
KITCHEN_OFF: list[Any] = [{"role": "user", "content": "Turn off the kitchen lights."}]
HAIKU: list[Any] = [{"role": "user", "content": "Write a haiku about winter."}]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("qwen"), "cpu", models=[CHAT, TOOLS]) as s:
        yield s


@pytest.fixture(scope="module")
def client(qwen: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=qwen.v1, api_key="unused", max_retries=0, timeout=300)


# ----- OpenAI ---------------------------------------------------------------------------
def test_auto_turns_off_the_kitchen_lights(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=KITCHEN_OFF, tools=LIGHTS, tool_choice="auto", temperature=0,
        max_tokens=128)
    assert raw.headers["x-zoe-model"] == TOOLS and raw.headers["x-zoe-route"] == "tools"
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["turn_off_light"], choice.message  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"area": "kitchen"}  # type: ignore[union-attr]
    assert calls[0].id


def test_a_stream_assembles_the_same_call_from_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto", messages=KITCHEN_OFF, tools=LIGHTS, temperature=0, max_tokens=128,
        stream=True)
    calls: dict[int, dict[str, str]] = {}
    content, finish, chunks = "", None, 0
    for chunk in stream:
        chunks += 1
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += tc.id or ""
            if tc.function is not None:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert chunks > 1
    assert finish == "tool_calls"
    assert list(calls) == [0], calls
    assert calls[0]["name"] == "turn_off_light" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == {"area": "kitchen"}
    assert "turn_off_light" not in content, "the call leaked into the text"


def test_chit_chat_is_answered_in_text(client: openai.OpenAI) -> None:
    for stream in (False, True):
        text, called = "", False
        if stream:
            for chunk in client.chat.completions.create(
                    model="auto", messages=HAIKU, tools=LIGHTS, temperature=0, max_tokens=64,
                    stream=True):
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    called = called or bool(chunk.choices[0].delta.tool_calls)
        else:
            r = client.chat.completions.create(
                model="auto", messages=HAIKU, tools=LIGHTS, temperature=0, max_tokens=64)
            text, called = r.choices[0].message.content or "", bool(
                r.choices[0].message.tool_calls)
        assert not called, f"stream={stream}: a tool was called for chit-chat"
        assert len(text.split()) >= 3, f"stream={stream}: {text!r}"


def test_after_a_tool_result_the_next_request_gets_its_own_call(
        client: openai.OpenAI) -> None:
    """The whole round trip: the call, its result sent back, then a new request. (With the
    assistant's spoken answer between the result and the new request, as Home Assistant
    sends it, the 1.5B often claims the action in text instead: ha_multiturn in
    docs/benchmarks/tools.md measures that.)"""
    first = client.chat.completions.create(
        model="auto", messages=KITCHEN_OFF, tools=LIGHTS, temperature=0, max_tokens=128)
    call = (first.choices[0].message.tool_calls or [None])[0]
    assert call is not None
    messages: list[Any] = [
        *KITCHEN_OFF, first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id,
         "content": json.dumps({"success": True})},
        {"role": "user", "content": "Now turn on the lights in the office."}]
    second = client.chat.completions.create(model="auto", messages=messages, tools=LIGHTS,
                                            temperature=0, max_tokens=128)
    calls = second.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments))  # type: ignore[union-attr]
            for c in calls] == [("turn_on_light", {"area": "office"})], second


# ----- Ollama ---------------------------------------------------------------------------
def test_ollama_streamed_chat_yields_calls_with_object_arguments(qwen: Stack) -> None:
    client = ollama.Client(host=qwen.url, timeout=300)
    parts = list(client.chat(model="qwen2.5:7b", messages=KITCHEN_OFF, tools=LIGHTS,
                             stream=True, options={"temperature": 0}))
    assert parts and parts[-1].done
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.name for c in calls] == ["turn_off_light"], parts
    assert calls[0].function.arguments == {"area": "kitchen"}
    assert parts[-1].done_reason == "stop"


def test_ollama_show_lists_tools_for_every_text_model(qwen: Stack) -> None:
    client = ollama.Client(host=qwen.url)
    for name in (CHAT, TOOLS):
        assert "tools" in (client.show(name).capabilities or []), name


# ----- Tools to a model that cannot call them (the tiny stack) ----------------------------
NO_TOOLS = "smollm2-135m-chat"  # the tiny profile's chat model has no tool parser
VISION = "tiny-idefics3-vision"


@pytest.mark.parametrize("model", [NO_TOOLS, VISION, "gemma3n-e2b"])  # the last: an alias
def test_tools_to_a_model_without_them_are_refused_for_free(stack: Stack, model: str) -> None:
    before = stack.health()["workers"]
    client = openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=KITCHEN_OFF, tools=LIGHTS)
    elapsed = time.monotonic() - t0
    err = caught.value
    assert err.status_code == 400
    assert err.code == "tools_not_supported" and err.param == "tools"
    assert "does not support tools" in err.message and "--" not in err.message, err.message
    assert "smollm2-135m-tools" in err.message, "the error names the models that do"

    o = ollama.Client(host=stack.url)
    with pytest.raises(ollama.ResponseError) as oerr:
        o.chat(model=model, messages=KITCHEN_OFF, tools=LIGHTS)
    assert oerr.value.status_code == 400
    assert oerr.value.error == f'"{model}" does not support tools'
    assert elapsed < 5, f"refused after {elapsed:.1f}s"

    after = stack.health()["workers"]
    assert after[VISION]["state"] == "stopped", "a refused request loaded the vision model"
    assert after[VISION]["swapped_in"] == before[VISION]["swapped_in"]
    assert after["smollm2-135m-tools"]["state"] == "ready"


def test_tool_choice_none_to_a_model_without_tools_is_served(stack: Stack) -> None:
    r = httpx.post(f"{stack.v1}/chat/completions", timeout=120, json={
        "model": NO_TOOLS, "messages": KITCHEN_OFF, "tools": LIGHTS, "tool_choice": "none",
        "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
