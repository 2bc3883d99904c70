"""The tool-call scanner (workers/engine/tool_calls.py): every format small models write, the near
misses that must stay text, and a stream that settles on the same answer as the whole text."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.engine.tool_calls import Call, Scan, Tools, scan, tools_of

AREA = {"type": "string", "enum": ["kitchen", "office", "living_room"]}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "turn_off_light", "parameters": {
            "type": "object", "properties": {"area": AREA}, "required": ["area"],
            "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "set_light_brightness", "parameters": {
            "type": "object", "required": ["area", "brightness"], "properties": {
                "area": AREA, "brightness": {"type": "integer", "minimum": 0,
                                             "maximum": 100}}}}},
    # Home Assistant's loose shape: nothing required, any extra keys allowed.
    {"type": "function", "function": {
        "name": "HassTurnOn", "parameters": {
            "type": "object", "properties": {
                "name": {"type": "string"}, "area": {"type": "string"},
                "domain": {"type": "array", "items": {"type": "string"}}}}}},
    {"type": "function", "function": {"name": "GetLiveContext"}},
]
OFF_KITCHEN = Call("turn_off_light", {"area": "kitchen"})
OFF_OFFICE = Call("turn_off_light", {"area": "office"})
CALL_JSON = '{"name": "turn_off_light", "arguments": {"area": "kitchen"}}'
CALL2_JSON = '{"name": "turn_off_light", "arguments": {"area": "office"}}'


@pytest.fixture(scope="module")
def tools() -> Tools:
    return tools_of(TOOLS)


def final(text: str, tools: Tools) -> Scan:
    return scan(text, tools, final=True)


@pytest.mark.parametrize("text", [
    f"<tool_call>\n{CALL_JSON}\n</tool_call>",
    f"<tool_call>{CALL_JSON}",  # cut off before the closing tag
    f"```json\n{CALL_JSON}\n```",
    f"```\n{CALL_JSON}\n```",
    f"```tool_call\n{CALL_JSON}\n```",
    f"```json {CALL_JSON} ```",
    CALL_JSON,
    f"  \n{CALL_JSON}\n",
    f"[{CALL_JSON}]",
    '{"name": "turn_off_light", "parameters": {"area": "kitchen"}}',  # Llama's key
    '{"name": "turn_off_light", "arguments": "{\\"area\\": \\"kitchen\\"}"}',  # a string
    '{"type": "function", "function": {"name": "turn_off_light", '
    '"arguments": {"area": "kitchen"}}}',  # OpenAI's shape
    f"{{{CALL_JSON}}}",  # the 1.5B copies its template's doubled Jinja braces
])
def test_one_call_in_every_format(text: str, tools: Tools) -> None:
    found = final(text, tools)
    assert found.calls == [OFF_KITCHEN]
    assert found.content(text).strip() == ""


@pytest.mark.parametrize("text", [
    f"<tool_call>\n{CALL_JSON}\n</tool_call>\n<tool_call>\n{CALL2_JSON}\n</tool_call>",
    f"```json\n{CALL_JSON}\n```\n```json\n{CALL2_JSON}\n```",
    f"```json\n[{CALL_JSON}, {CALL2_JSON}]\n```",
    f"```json\n{CALL_JSON}\n{CALL2_JSON}\n```",
    f"{CALL_JSON}\n{CALL2_JSON}",
    f"[{CALL_JSON}, {CALL2_JSON}]",
])
def test_several_calls_in_one_answer(text: str, tools: Tools) -> None:
    assert final(text, tools).calls == [OFF_KITCHEN, OFF_OFFICE]


def test_text_around_a_fenced_call_stays_content(tools: Tools) -> None:
    text = f"Sure, turning it off.\n```json\n{CALL_JSON}\n```\nDone!"
    found = final(text, tools)
    assert found.calls == [OFF_KITCHEN]
    assert found.content(text) == "Sure, turning it off.\n\nDone!"


def test_an_inline_call_is_a_call(tools: Tools) -> None:
    """What the structural tag lets a model write anywhere is read anywhere."""
    text = f"Sure. {CALL_JSON} Done."
    found = final(text, tools)
    assert found.calls == [OFF_KITCHEN]
    assert found.content(text) == "Sure.  Done."


@pytest.mark.parametrize("text,value", [
    ('<tool_call>{"name": "HassTurnOn", "arguments": {"name": "a</tool_call>b"}}</tool_call>',
     "a</tool_call>b"),
    ('```json\n{"name": "HassTurnOn", "arguments": {"name": "a```b"}}\n```', "a```b"),
])
def test_a_closing_marker_inside_an_argument_is_not_the_end(text: str, value: str,
                                                            tools: Tools) -> None:
    found = final(text, tools)
    assert [c.arguments["name"] for c in found.calls] == [value]
    assert found.content(text) == ""
    content, calls = stream(text, tools, 3)
    assert calls == found.calls and content == ""


@pytest.mark.parametrize("text", ["[" * 5000, "```json\n" + "[" * 5000 + "\n```",
                                  "<tool_call>" + "{" * 5000])
def test_absurdly_deep_output_is_text_not_an_error(text: str, tools: Tools) -> None:
    assert final(text, tools).content(text) == text


def test_schemas_jsonschema_cannot_use_never_raise() -> None:
    tools = tools_of([
        {"type": "function", "function": {"name": "a", "parameters": {"$schema": 5}}},
        {"type": "function", "function": {"name": "b", "parameters": {
            "type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}}},
        {"type": "function", "function": {"name": "c", "parameters": {"$ref": "#"}}}])
    assert final('{"name": "a", "arguments": {"x": 1}}', tools).calls == [Call("a", {"x": 1})]
    assert final('{"name": "b", "arguments": {"x": 1}}', tools).calls == []
    assert final('{"name": "c", "arguments": {}}', tools).calls in ([], [Call("c", {})])


def test_loose_schema_and_no_arguments(tools: Tools) -> None:
    text = ('```json\n{"name": "HassTurnOn", "arguments": {"name": "Kitchen Light", '
            '"domain": ["light"], "brightness": 5}}\n```')
    assert final(text, tools).calls == [
        Call("HassTurnOn", {"name": "Kitchen Light", "domain": ["light"], "brightness": 5})]
    assert final('{"name": "GetLiveContext"}', tools).calls == [Call("GetLiveContext", {})]
    assert final('{"name": "GetLiveContext", "arguments": null}', tools).calls == [
        Call("GetLiveContext", {})]


@pytest.mark.parametrize("text,why", [
    ('{"name": "turn_on_oven", "arguments": {"area": "kitchen"}}', "a tool not offered"),
    ('{"name": "turn_off_light", "arguments": {"area": "garage"}}', "a value off the enum"),
    ('{"name": "turn_off_light", "arguments": {}}', "a required argument missing"),
    ('{"name": "turn_off_light", "arguments": {"area": "kitchen", "x": 1}}',
     "an argument the schema forbids"),
    ('{"name": "set_light_brightness", "arguments": {"area": "office", "brightness": "50"}}',
     "a string where an integer belongs"),
    ('{"name": "turn_off_light", "arguments": [1, 2]}', "arguments not an object"),
    ('{"name": "turn_off_light", "arguments": "not json"}', "arguments an unparsable string"),
    ('{"name": "turn_off_light", "area": "kitchen"}', "arguments flattened into the call"),
    ('{"name": "turn_off_light", "arguments": {"area": "kitchen"}, '
     '"parameters": {"area": "office"}}', "two argument sets"),
    ('{"city": "Paris", "population": 2100000}', "JSON that is data, not a call"),
    ('[]', "an empty list"),
    ('{{"name": "turn_off_light", "arguments": {"area": "kitchen"}}', "doubled, not closed"),
    ('{"name": "turn_off_light", "arguments": {"area": "kitchen"}', "broken JSON"),
    ('I would say {"name": "turn_off_light", "arguments": {"area": "kitchen"} but no.',
     "an inline call that never closes"),
    ('Data: {"name": "Paris", "population": 2100000}', "an inline object that is data"),
    (f"```python\n{CALL_JSON}\n```", "a fence labelled as another language"),
    (f"```json\n{CALL_JSON}\nand then some words\n```", "a fence with more than calls"),
    (f"```json\n{CALL_JSON}\n"
     '{"name": "turn_on_oven", "arguments": {}}\n```', "one good call beside a bad one"),
    ("Paris is the capital of France.", "plain text"),
])
def test_near_misses_stay_text(text: str, why: str, tools: Tools) -> None:
    found = final(text, tools)
    assert found.calls == [], why
    assert found.content(text) == text, why


def test_no_tools_offered_means_no_calls() -> None:
    assert final(CALL_JSON, tools_of(None)).calls == []
    assert final(CALL_JSON, tools_of([])).calls == []


def test_tools_from_objects_like_vllms() -> None:
    class Fn:
        name = "turn_off_light"
        parameters = TOOLS[0]["function"]["parameters"]

    class Tool:
        function = Fn()

    assert final(CALL_JSON, tools_of([Tool()])).calls == [OFF_KITCHEN]


def stream(text: str, tools: Tools, step: int) -> tuple[str, list[Call]]:
    """What a client would assemble: feed ``text`` in pieces of ``step`` characters, send
    the settled text each time, and everything at the end."""
    sent = 0
    content: list[str] = []
    calls: list[Call] = []
    cuts = [*range(step, len(text), step), len(text)]
    for n, cut in enumerate(cuts):
        found = scan(text[:cut], tools, final=n == len(cuts) - 1)
        assert found.settled >= sent, "settled text must never shrink"
        content += [text[max(s.start, sent):s.end] for s in found.segments
                    if not s.calls and s.end > sent]
        calls += found.calls[len(calls):]
        sent = found.settled
    assert sent == len(text)
    return "".join(content), calls


STREAM_CASES = [
    f"Sure. {CALL_JSON} Done.",
    '<tool_call>{"name": "HassTurnOn", "arguments": {"name": "a</tool_call>b"}}</tool_call>',
    f"```json\n{CALL_JSON}\n```",
    f"<tool_call>\n{CALL_JSON}\n</tool_call>\n<tool_call>\n{CALL2_JSON}\n</tool_call>",
    CALL_JSON,
    f"Okay.\n```json\n{CALL_JSON}\n```\nAll done.",
    "Here is some code:\n```python\nprint('hi')\n```\nand `inline` code < 3.",
    '{"city": "Paris"}',
    "Just words, nothing else.",
    "```js\nconsole.log(1)\n```",
]


@pytest.mark.parametrize("text", STREAM_CASES)
@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_a_stream_assembles_the_same_answer(text: str, step: int, tools: Tools) -> None:
    whole = final(text, tools)
    content, calls = stream(text, tools, step)
    assert calls == whole.calls
    assert content == whole.content(text)


def test_a_stream_sends_plain_text_before_it_ends(tools: Tools) -> None:
    partial = "The capital of France is Paris. The"
    assert scan(partial, tools, final=False).settled == len(partial)
    # ...but holds back what may open a call.
    held = "Sure <tool_c"
    assert scan(held, tools, final=False).settled == len("Sure ")
    assert scan(f"Okay ```json\n{CALL_JSON[:20]}", tools, final=False).settled == len("Okay ")
    assert scan(CALL_JSON[:30], tools, final=False).settled == 0


# No deadline: an example takes ~2 ms, but on a busy CPU (a CI run alongside) some took up
# to 0.6 s once (2 ms when run again), past hypothesis's default 200 ms, which failed the
# test though the texts agreed. A real disagreement still fails it (shrunk and reported).
@settings(deadline=None)
@given(st.lists(st.sampled_from([
    "Sure. ", "```json\n", CALL_JSON, "\n```\n", "<tool_call>", "</tool_call>", "{", "}",
    "`", "text ", "```python\nx = 1\n```", CALL2_JSON, "\n", "[", "]", '"name"']),
    max_size=8), st.integers(min_value=1, max_value=9))
def test_streaming_never_disagrees_with_the_whole_text(pieces: list[str], step: int) -> None:
    tools = tools_of(TOOLS)
    text = "".join(pieces)
    whole = final(text, tools)
    content, calls = stream(text, tools, step)
    assert calls == whole.calls
    assert content == whole.content(text)
    # Nothing is lost or invented: text and calls account for every character.
    covered = sum(s.end - s.start for s in whole.segments)
    assert covered == len(text)
    assert all(json.loads(c.arguments_json()) == c.arguments for c in whole.calls)
