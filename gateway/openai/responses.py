"""The Responses API (``POST /v1/responses``): checks before routing, and its stream format.

The body goes to vLLM's own Responses serving class in the worker as the client sent it.
Here it is checked cheaply (shapes, and images decoded, as for chat) and seen by the router
as a chat request: its input items become messages, so routing is the same as chat's
(structure: images, then tools; then keywords; then the default).

Not served: ``previous_response_id`` and ``background`` (nothing is stored: ``store`` is taken
as false, as vLLM does without its experimental store), and ``conversation``. A client sends
the conversation as input items, function calls and their outputs included, as Home
Assistant does.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.core.errors import BadRequest
from gateway.openai.errors import OpenAIFormat
from shared import protocol as p

ROLES = frozenset({"user", "assistant", "system", "developer"})
UNSUPPORTED = {
    "previous_response_id": "this server does not store responses; send the whole "
                            "conversation as `input` items",
    "background": "background responses are not supported (nothing is stored to poll)",
    "conversation": "conversations are not stored on this server; send the whole "
                    "conversation as `input` items",
}


def check(body: dict[str, Any]) -> None:
    """Raise BadRequest for a Responses body that is malformed or asks for what we lack."""
    for field, why in UNSUPPORTED.items():
        if body.get(field) not in (None, False):
            raise BadRequest(400, f"`{field}` is not supported: {why}", param=field,
                             code="unsupported_parameter")
    if "input" not in body:
        raise BadRequest(400, "`input` is required: a string or a list of input items",
                         param="input")
    items = body["input"]
    if isinstance(items, str):
        if not items.strip():
            raise BadRequest(400, "`input` is an empty string", param="input")
    elif isinstance(items, list) and items:
        for i, item in enumerate(items):
            _check_item(item, f"input[{i}]")
    else:
        raise BadRequest(400, "`input` must be a string or a non-empty list of input items",
                         param="input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadRequest(400, "`instructions` must be a string", param="instructions")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and isinstance(t.get("type"), str) for t in tools):
            raise BadRequest(400, "`tools` must be a list of tools, each with a `type`",
                             param="tools")
        for i, t in enumerate(tools):
            if t["type"] == "function" and not isinstance(t.get("name"), str):
                raise BadRequest(400, f"`tools[{i}].name` is required for a function tool "
                                      "(the Responses API's tools are flat: no `function` "
                                      "object)", param=f"tools[{i}].name")
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 1):
        raise BadRequest(400, "`max_output_tokens` must be a positive integer",
                         param="max_output_tokens")


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise BadRequest(400, f"`{where}` must be an object (an input item)", param=where)
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise BadRequest(400, f"`{where}.type` must be a string", param=f"{where}.type")
    if kind == "message" or "role" in item:
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(400, f"`{where}.role` must be one of {', '.join(sorted(ROLES))}"
                                  f", not {role!r}", param=f"{where}.role")
        content = item.get("content")
        if not isinstance(content, (str, list)):
            raise BadRequest(400, f"`{where}.content` must be a string or a list of content "
                                  "parts", param=f"{where}.content")
        if isinstance(content, list) and not all(
                isinstance(c, dict) and isinstance(c.get("type"), str) for c in content):
            raise BadRequest(400, f"`{where}.content` parts must be objects with a `type`",
                             param=f"{where}.content")
        # vLLM 0.32 reads an assistant item's first part's text: an empty list, or a
        # refusal part first, raises inside it (found by schemathesis).
        if isinstance(content, list) and not content:
            raise BadRequest(400, f"`{where}.content` is an empty list; send at least one "
                                  "content part", param=f"{where}.content")
        if role == "assistant" and isinstance(content, list) and \
                content[0].get("type") == "refusal":
            raise BadRequest(400, f"`{where}.content[0]`: a refusal part cannot start an "
                                  "assistant item here", param=f"{where}.content")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str) or "output" not in item:
            raise BadRequest(400, f"`{where}`: a function_call_output needs `call_id` and "
                                  "`output`", param=where)
    elif kind == "function_call" and not all(
            isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
        raise BadRequest(400, f"`{where}`: a function_call needs `call_id`, `name` and "
                                  "`arguments` (strings)", param=where)


def chat_view(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the router and the image checks see chat: messages, tools, model.

    Content parts are the body's own objects, so images checked (and remote ones inlined)
    here are checked in the body that goes to the worker.
    """
    items = body["input"]
    messages: list[dict[str, Any]] = []
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    else:
        for item in items:
            if "role" in item:
                content = item["content"]
                if isinstance(content, list):
                    content = [_part(c) for c in content]
                messages.append({"role": item["role"], "content": content})
    tools = [t for t in body.get("tools") or () if t.get("type") == "function"]
    view: dict[str, Any] = {"messages": messages, "tools": tools,
                            "tool_choice": body.get("tool_choice")}
    if "model" in body:
        view["model"] = body["model"]
    return view


def _part(part: dict[str, Any]) -> dict[str, Any]:
    # input_text reads as chat's text part for the keyword rules; an image part is kept as
    # the same object (the image checks take input_image as it is).
    if part.get("type") == "input_text":
        return {"type": "text", "text": part.get("text")}
    return part


def restore_image_parts(body: dict[str, Any]) -> None:
    """Put inlined remote images back in the Responses API's shape (``image_url`` a string):
    the image checks write chat's shape when they inline a fetched image."""
    items = body["input"]
    if not isinstance(items, list):
        return
    for item in items:
        content = item.get("content")
        for part in content if isinstance(content, list) else ():
            url = part.get("image_url")
            if part.get("type") == "image_url" and isinstance(url, dict):
                part["type"], part["image_url"] = "input_image", url.get("url")


class ResponsesFormat(OpenAIFormat):
    """vLLM's Responses answer passes through as it is, as a chat answer does; an error after
    the stream began is the API's own ``error`` event, numbered after the events sent."""

    def __init__(self) -> None:
        self.sequence = 0

    def chunk(self, data: str) -> bytes:
        self.sequence += 1
        return data.encode()

    def stream_error(self, err: p.Error) -> bytes:
        event = {"type": "error", "code": err.code or err.kind.value, "message": err.message,
                 "param": err.param, "sequence_number": self.sequence}
        return b"event: error\ndata: " + msgspec.json.encode(event) + b"\n\n"
