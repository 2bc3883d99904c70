"""``zoe_json``: a vLLM tool parser for what small models write (``workers.engine.tool_calls``).

Registered with vLLM's ``ToolParserManager``, so a worker (or ``vllm serve``) uses it with
``--tool-parser-plugin workers.engine.vllm_plugins.tool_parser --tool-call-parser zoe_json``.

Constrained decoding: the parser also registers a structural tag of its own with vLLM. Once the
model opens a call (``<tool_call>``, or ``{"name": "`` anywhere, which covers the fenced form
too), xgrammar holds the rest of it to a tool that was offered and to that tool's parameter
schema (the workers pass ``--tool-strict-level parameter``, so also for tools sent
with ``strict: false``, as Home Assistant sends them). Text outside a call is free. With
``required`` or a named tool the answer must be such a call. Measured on Home Assistant's
requests with the 0.5B: README, "Tool calls".

Streaming: a fenced block or bare JSON is a call only once it is complete, so the parser holds
back the text that might still become one and sends it, as text or as a whole call, when that
is known. vLLM tells a parser that the answer ended only through ``finish_streaming``, which it
calls on parsers that declare ``engine_based_streaming``; that is the one reason this parser
declares it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCallInformation,
    FunctionCall,
    ToolCall,
)
from vllm.renderers.chat_utils import make_tool_call_id
from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager
from vllm.tool_parsers.structural_tag_registry import (
    get_function_parameters,
    register_vllm_structural_tag,
)
from xgrammar import StructuralTag
from xgrammar.structural_tag import (
    AnyTextFormat,
    JSONSchemaFormat,
    TagFormat,
    TagsWithSeparatorFormat,
    TriggeredTagsFormat,
)

from shared.engine_args import ZOE_TOOL_PARSER as NAME
from workers.engine import tool_calls

# How a call opens and closes in the grammar, and the text that tells it one has begun; the JSON
# between is always {"name": ..., "arguments": ...}. A fenced call needs no form of its own: the
# fence is free text, and the call inside it opens with the bare trigger. Every trigger is one
# the scanner (workers.engine.tool_calls) starts a call at, so what the grammar completes is read.
CALL_FORMS = (
    ("<tool_call>\n", "}\n</tool_call>", tool_calls.TAG_OPEN),
    ("<tool_call>", "}</tool_call>", tool_calls.TAG_OPEN),
    ("", "}", tool_calls.BARE),
)
TRIGGERS = list(dict.fromkeys(trigger for _, _, trigger in CALL_FORMS))


def structural_tag(tools: list[Any], builtin_tools: list[Any], tool_choice: str,
                   reasoning: bool, token_suffix: str = "") -> Any:
    """vLLM's hook: the grammar for one request's tools (``tool_choice`` is auto, required
    or forced)."""
    del builtin_tools, reasoning, token_suffix
    functions = [fn for tool in tools if (fn := tool_calls.function_of(tool)) is not None]
    tags = [TagFormat(begin=f'{opening}{{"name": {json.dumps(fn.name)}, "arguments": ',
                      content=JSONSchemaFormat(json_schema=_arguments_schema(fn)),
                      end=closing)
            for fn in functions for opening, closing, _ in CALL_FORMS]
    if not tags:
        return StructuralTag(format=AnyTextFormat())
    if tool_choice == "auto":
        return StructuralTag(format=TriggeredTagsFormat(triggers=TRIGGERS, tags=tags))
    return StructuralTag(format=TagsWithSeparatorFormat(
        tags=tags, separator="\n", at_least_one=True,
        stop_after_first=tool_choice == "forced"))


def _arguments_schema(function: Any) -> Any:
    # vLLM's "anything" (True) for a tool without parameters would admit arguments that are
    # not an object, which the scanner then refuses: arguments are always an object.
    schema = get_function_parameters(function)
    return {"type": "object"} if schema is True else schema


register_vllm_structural_tag(NAME)(structural_tag)


@ToolParserManager.register_module(NAME)
class ZoeJsonToolParser(ToolParser):  # type: ignore[misc]  # a class from vLLM
    engine_based_streaming = True
    structural_tag_model = NAME

    def __init__(self, tokenizer: Any, tools: list[Any] | None = None) -> None:
        super().__init__(tokenizer, tools)
        self._tools: tool_calls.Tools | None = None
        self._text = ""
        self._sent = 0  # text[:_sent] has gone out, as content or as calls
        self._calls_sent = 0
        self._passthrough = False

    def _catalog(self, request: Any) -> tool_calls.Tools:
        if self._tools is None:
            self._tools = tool_calls.tools_of(getattr(request, "tools", None))
        return self._tools

    def extract_tool_calls(self, model_output: str, request: Any) -> Any:
        if getattr(request, "tool_choice", None) == "none":
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[],
                                                content=model_output)
        found = tool_calls.scan(model_output, self._catalog(request), final=True)
        calls = found.calls
        if not calls:
            return ExtractedToolCallInformation(tools_called=False, tool_calls=[],
                                                content=model_output)
        # Not stripped: a stream sends text around a call as it comes, and both must agree.
        content = found.content(model_output)
        return ExtractedToolCallInformation(
            tools_called=True,
            tool_calls=[ToolCall(type="function", function=FunctionCall(
                name=c.name, arguments=c.arguments_json())) for c in calls],
            content=content if content.strip() else None)

    def extract_tool_calls_streaming(
            self, previous_text: str, current_text: str, delta_text: str,
            previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
            delta_token_ids: Sequence[int], request: Any) -> Any:
        if getattr(request, "tool_choice", None) == "none":
            self._passthrough = True
            return DeltaMessage(content=delta_text) if delta_text else None
        self._catalog(request)
        # Engine-based parsers are handed each delta alone (vLLM's StreamState keeps no
        # text for them), so the parser keeps the answer so far itself.
        self._text += delta_text
        return self._advance(final=False)

    def finish_streaming(self) -> Any:
        """vLLM's end-of-answer hook: decide what was held back."""
        if self._passthrough or self._tools is None:
            return None
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> Any:
        assert self._tools is not None
        found = tool_calls.scan(self._text, self._tools, final=final)
        content = "".join(self._text[max(s.start, self._sent):s.end]
                          for s in found.segments if not s.calls and s.end > self._sent)
        deltas = []
        for index, call in enumerate(found.calls[self._calls_sent:], self._calls_sent):
            args = call.arguments_json()
            # Kept in step with what was sent, so vLLM's end-of-stream "unstreamed
            # arguments" check finds nothing left to add.
            self.prev_tool_call_arr.append({"name": call.name, "arguments": args})
            self.streamed_args_for_tool.append(args)
            deltas.append(DeltaToolCall(
                index=index, type="function", id=make_tool_call_id(),
                function=DeltaFunctionCall(name=call.name, arguments=args).model_dump(
                    exclude_none=True)))
        self._calls_sent += len(deltas)
        self._sent = max(self._sent, found.settled)
        if final and (deltas or self._calls_sent) and not content.strip():
            content = ""  # a call's trailing newline is not an answer of its own
        if not content and not deltas:
            return None
        return DeltaMessage(content=content or None, tool_calls=deltas)
