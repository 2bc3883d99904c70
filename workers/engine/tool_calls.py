"""Find the tool calls in what a model wrote, the way small models really write them.

Qwen2.5-Coder is trained on Hermes-style ``<tool_call>{...}</tool_call>`` tags, but the 0.5B and
1.5B mostly answer a tool request with a fenced block (```` ```json {"name": ..., "arguments":
...} ``` ````) or with the bare JSON. vLLM's ``hermes`` parser only knows the tags, so every one
of those calls reached the client as text. This module accepts all three, and several calls in
one answer, but only as calls of a tool that was offered, with arguments valid against that
tool's schema: text that merely contains JSON stays text.

The scan is pure (no vLLM), and it is the same for a finished answer and for a stream: a
stream calls it again on the text so far, sends the text it has *settled*, and holds back what
might still turn into a call. ``workers.engine.vllm_plugins.tool_parser`` plugs it into vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

TAG_OPEN, TAG_CLOSE = "<tool_call>", "</tool_call>"
FENCE = "```"
# A call written inline: the opening of {"name": ..., "arguments": ...} as models write it (and
# as the structural tag of workers/vllm_plugins/tool_parser.py completes it).
BARE = '{"name": "'
MARKERS = (TAG_OPEN, FENCE, BARE)
# Fence labels whose body may be a call; any other fenced block (```python) is plain text.
CALL_FENCES = frozenset({"", "json", "json5", "tool_call", "tool_calls", "tool"})
# Keys a call object may carry besides its arguments (OpenAI's shape nests them in
# "function"). Anything else means the object is data, not a call.
CALL_KEYS = frozenset({"name", "arguments", "parameters", "type", "id", "function"})
_decoder = json.JSONDecoder()


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class Segment:
    """``text[start:end]``: the calls it makes, or plain text when ``calls`` is empty."""

    start: int
    end: int
    calls: tuple[Call, ...] = ()


@dataclass(frozen=True)
class Scan:
    segments: tuple[Segment, ...]  # contiguous from 0 to ``settled``
    settled: int  # text[settled:] may still become a call: a stream holds it back

    @property
    def calls(self) -> list[Call]:
        return [c for s in self.segments for c in s.calls]

    def content(self, text: str) -> str:
        return "".join(text[s.start:s.end] for s in self.segments if not s.calls)


class Tools:
    """The tools offered to one request, by name, each with a validator for its arguments."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any] | None]) -> None:
        self._validators: dict[str, Any] = {}
        for name, schema in schemas.items():
            self._validators[name] = _validator(schema)

    @staticmethod
    def _valid(validator: Any, args: dict[str, Any]) -> bool:
        try:
            return bool(validator.is_valid(args))
        except Exception:  # a $ref that resolves nowhere, a recursive schema: not checkable
            return False

    def call(self, obj: Any) -> Call | None:
        """``obj`` as a call of an offered tool with valid arguments, else None."""
        if not isinstance(obj, dict) or not set(obj) <= CALL_KEYS:
            return None
        if isinstance(obj.get("function"), dict):  # OpenAI's {"type", "function": {...}}
            if "name" in obj or "arguments" in obj:
                return None
            return self.call(obj["function"])
        name = obj.get("name")
        if not isinstance(name, str) or name not in self._validators:
            return None
        if "arguments" in obj and "parameters" in obj:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # OpenAI's arguments are a JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return None
        validator = self._validators[name]
        if validator is not None and not self._valid(validator, args):
            return None
        return Call(name=name, arguments=args)


def _validator(schema: Mapping[str, Any] | None) -> Any:
    if not schema:
        return None
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(dict(schema))
        return cls(dict(schema))
    except (SchemaError, Exception):
        # A schema the client sent that jsonschema cannot use: a call is still taken only
        # as an object for the offered name, never as a server error.
        return jsonschema.validators.validator_for({})({"type": "object"})


def function_of(tool: Any) -> Any:
    """The part of ``tool`` that holds its name and parameters, or None for a tool that is
    not a function (the Responses API also has web search, file search, MCP...)."""
    kind = tool.get("type") if isinstance(tool, dict) else getattr(tool, "type", None)
    fn = tool.get("function") if isinstance(tool, dict) else getattr(tool, "function", None)
    if fn is not None:
        return fn
    return tool if kind == "function" else None


def tools_of(tools: Iterable[Any] | None) -> Tools:
    """``Tools`` from a request's tools: OpenAI dicts or vLLM's pydantic objects, in Chat
    Completions' shape (``{"type": "function", "function": {...}}``) or the Responses API's
    flat one (``{"type": "function", "name": ..., "parameters": ...}``)."""
    schemas: dict[str, Mapping[str, Any] | None] = {}
    for tool in tools or ():
        fn = function_of(tool)
        if fn is None:
            continue
        name = fn.get("name") if isinstance(fn, dict) else getattr(fn, "name", None)
        params = fn.get("parameters") if isinstance(fn, dict) else getattr(fn, "parameters",
                                                                            None)
        if isinstance(name, str):
            schemas[name] = params
    return Tools(schemas)


def _json_values(text: str, start: int) -> tuple[list[Any], int]:
    """JSON values one after another from ``start`` (whitespace between), and where they end."""
    values: list[Any] = []
    pos = start
    while True:
        nxt = _skip_space(text, pos)
        if nxt >= len(text) or text[nxt] not in "{[":
            return values, pos
        try:
            value, end = _decoder.raw_decode(text, nxt)
        except (ValueError, RecursionError):  # broken, unfinished or absurdly deep
            return values, pos
        values.append(value)
        pos = end


def _doubled_braces(text: str, lead: int) -> tuple[list[Any], int]:
    """``{{"name": ..., "arguments": ...}}``: Qwen2.5-Coder-1.5B's own chat template shows the
    call format with its Jinja braces doubled, and the model copies them."""
    values, end = _json_values(text, lead + 1)
    close = _skip_space(text, end)
    if values and text.startswith("}", close):
        return values, close + 1
    return [], lead


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _as_calls(values: list[Any], tools: Tools) -> tuple[Call, ...] | None:
    """Every value a call (a list counts as its items), or None."""
    calls: list[Call] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        if not items:
            return None
        for item in items:
            call = tools.call(item)
            if call is None:
                return None
            calls.append(call)
    return tuple(calls) or None


def _body_calls(body: str, tools: Tools) -> tuple[Call, ...] | None:
    """The calls in a tag's or a fence's body, which must be nothing but calls."""
    values, end = _json_values(body, 0)
    if not values or _skip_space(body, end) != len(body):
        return None
    return _as_calls(values, tools)


def _partial_marker(text: str, start: int) -> int:
    """How many characters at the end of ``text`` could begin a marker."""
    longest = 0
    for marker in MARKERS:
        for n in range(min(len(marker) - 1, len(text) - start), 0, -1):
            if text.endswith(marker[:n]):
                longest = max(longest, n)
                break
    return longest


def _fence_label(text: str, at: int) -> tuple[str, int]:
    """The label after a fence opening at ``at`` (```json) and where its body starts."""
    pos = at + len(FENCE)
    end = pos
    while end < len(text) and (text[end].isalnum() or text[end] in "_-"):
        end += 1
    return text[pos:end].lower(), end


def _block_close(text: str, body_start: int, closing: str, *,
                 final: bool) -> tuple[int | None, bool]:
    """Where a tag's or fence's body ends: ``(index of closing, pending)``. A body that holds
    JSON ends after that JSON, so a closing marker inside a string argument is not the end."""
    search = body_start
    nxt = _skip_space(text, body_start)
    if nxt < len(text) and text[nxt] in "{[":
        values, end = _json_values(text, body_start)
        after = _skip_space(text, end)
        if values and text.startswith(closing, after):
            return after, False
        if not final and (not values or closing.startswith(text[after:])
                          or text[after] in "{["):
            return None, True  # the JSON is still arriving (a broken one waits for the end)
        if values:
            search = after  # a marker inside the JSON's strings is not the end
    close = text.find(closing, search)
    if close < 0:
        return None, not final
    return close, False


def scan(text: str, tools: Tools, *, final: bool) -> Scan:
    """Split ``text`` into plain text and calls; with ``final`` False, stop where it is unsure."""
    segments: list[Segment] = []

    def text_until(start: int, end: int) -> None:
        if end > start:
            segments.append(Segment(start, end))

    pos = 0
    lead = _skip_space(text, 0)
    if lead == len(text) and not final:
        return Scan((), 0)  # only whitespace so far: what follows decides what it is
    if lead < len(text) and text[lead] in "{[":
        # The whole answer opens as JSON: a call, or data the user asked for. Only its end
        # tells, so a stream holds it all back.
        if not final:
            return Scan((), 0)
        values, end = _json_values(text, lead)
        if not values and text.startswith("{{", lead):
            values, end = _doubled_braces(text, lead)
        calls = _as_calls(values, tools) if values else None
        if calls:
            segments.append(Segment(0, end, calls))
            pos = end
        else:
            return Scan((Segment(0, len(text)),) if text else (), len(text))

    while True:
        found = [(i, m) for m in MARKERS if (i := text.find(m, pos)) >= 0]
        if not found:
            end = len(text) if final else len(text) - _partial_marker(text, pos)
            text_until(pos, end)
            return Scan(tuple(segments), max(end, pos))
        at, marker = min(found)
        text_until(pos, at)
        if marker == BARE:
            try:
                value, end = _decoder.raw_decode(text, at)
            except (ValueError, RecursionError):
                if not final:
                    return Scan(tuple(segments), at)  # still arriving, or broken: the end tells
                text_until(at, at + len(BARE))
                pos = at + len(BARE)
                continue
            call = tools.call(value)
            segments.append(Segment(at, end, (call,) if call else ()))
            pos = end
            if pos >= len(text):
                return Scan(tuple(segments), pos)
            continue
        if marker == TAG_OPEN:
            body_start = at + len(TAG_OPEN)
            close, pending = _block_close(text, body_start, TAG_CLOSE, final=final)
            closing = TAG_CLOSE
            callable_block = True
        else:
            label, body_start = _fence_label(text, at)
            if body_start >= len(text) and not final:
                return Scan(tuple(segments), at)  # "```js" may yet be "```json"
            callable_block = label in CALL_FENCES
            closing = FENCE
            if callable_block:
                close, pending = _block_close(text, body_start, FENCE, final=final)
            else:
                found_close = text.find(FENCE, body_start)
                close, pending = (None, False) if found_close < 0 else (found_close, False)
            if not callable_block and close is None and not final:
                # A code block still being written: stream it, but keep a possible
                # closing fence at the very end in hand.
                settled = len(text) - _partial_marker(text, at + len(FENCE))
                text_until(at, settled)
                return Scan(tuple(segments), max(settled, at))
        if pending:
            return Scan(tuple(segments), at)
        end = len(text) if close is None else close + len(closing)
        body = text[body_start:] if close is None else text[body_start:close]
        calls = _body_calls(body, tools) if callable_block else None
        segments.append(Segment(at, end, calls or ()))
        pos = end
        if pos >= len(text):
            return Scan(tuple(segments), pos)
