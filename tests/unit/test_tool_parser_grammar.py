"""The structural tag our vLLM tool parser registers, compiled by xgrammar itself: what it lets
a model write in ``auto`` and ``required``, and that every call it admits the scanner reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
import xgrammar
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionToolsParam,
)
from xgrammar.testing import _is_grammar_accept_string

from workers.engine.tool_calls import scan, tools_of
from workers.engine.vllm_plugins.tool_parser import CALL_FORMS, structural_tag

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "turn_off_light", "parameters": {
        "type": "object", "properties": {"area": {"type": "string",
                                                  "enum": ["kitchen", "office"]}},
        "required": ["area"]}}},
    {"type": "function", "function": {"name": "GetLiveContext",
                                      "parameters": {"type": "object", "properties": {}}}},
]


def grammar(choice: str) -> Any:
    tools = [ChatCompletionToolsParam.model_validate(t) for t in TOOLS]
    tag = structural_tag(tools, [], choice, False)
    return xgrammar.Grammar.from_structural_tag(tag.model_dump_json())


def accepts(g: Any, text: str) -> bool:
    return bool(_is_grammar_accept_string(g, text))


CALLS = [
    '<tool_call>\n{"name": "turn_off_light", "arguments": {"area": "kitchen"}}\n</tool_call>',
    '```json\n{"name": "turn_off_light", "arguments": {"area": "kitchen"}}\n```',
    '{"name": "turn_off_light", "arguments": {"area": "kitchen"}}',
    '{"name": "GetLiveContext", "arguments": {}}',
]


def test_one_tag_per_tool_and_form() -> None:
    tools = [ChatCompletionToolsParam.model_validate(t) for t in TOOLS]
    fmt = structural_tag(tools, [], "auto", False).format
    assert len(fmt.tags) == len(TOOLS) * len(CALL_FORMS)
    assert fmt.triggers == ["<tool_call>", '{"name": "']


@pytest.mark.parametrize("text", CALLS)
def test_auto_admits_each_form_and_the_scanner_reads_it(text: str) -> None:
    for answer in (text, f"Sure. {text} Done."):
        assert accepts(grammar("auto"), answer)
        assert len(scan(answer, tools_of(TOOLS), final=True).calls) == 1, answer


@pytest.mark.parametrize("text", [
    "The capital of France is Paris.",
    "Here is some code: ```python\nprint(1)\n```",
    '```json\n{"city": "Paris"}\n```',  # JSON that is not a call stays free
])
def test_auto_leaves_plain_text_free(text: str) -> None:
    assert accepts(grammar("auto"), text)


@pytest.mark.parametrize("text,why", [
    ('{"name": "Joke", "arguments": {}}', "a tool that was not offered"),
    ('{"name": "turn_off_light", "arguments": {"area": "garage"}}', "a value off the enum"),
    ('{"name": "turn_off_light", "arguments": {}}', "a required argument missing"),
    ('```json\n{"name": "turn_off_light", "area": "kitchen"}\n```', "arguments flattened"),
])
def test_auto_holds_an_opened_call_to_the_schema(text: str, why: str) -> None:
    assert not accepts(grammar("auto"), text), why


def test_required_must_be_calls() -> None:
    g = grammar("required")
    assert not accepts(g, "The capital of France is Paris.")
    assert accepts(g, CALLS[0])
    for answer in (f"{CALLS[2]}\n{CALLS[3]}", f"{CALLS[0]}\n{CALLS[3]}"):
        assert accepts(g, answer)
        calls = scan(answer, tools_of(TOOLS), final=True).calls
        assert [c.name for c in calls] == ["turn_off_light", "GetLiveContext"], answer
    assert json.loads(calls[0].arguments_json()) == {"area": "kitchen"}
