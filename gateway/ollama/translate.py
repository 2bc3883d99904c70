"""Ollama requests → the OpenAI bodies vLLM's serving layer understands.

The gateway serves the Ollama API by building the OpenAI body that vLLM's own
serving layer understands, routing and relaying it like any OpenAI request
(:mod:`gateway.ollama.api`), and writing the answer back in Ollama's shape
(:mod:`gateway.ollama.format`). Requests are validated with msgspec, so a
wrong type is a 400 that names the field (``$.messages[0].content``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import msgspec

from shared import protocol as p

# Ollama's option name -> vLLM's sampling parameter. Options that only make
# sense for llama.cpp (num_gpu, num_thread, use_mmap, mirostat, ...) are
# accepted and ignored, as Ollama itself ignores options a runner lacks.
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
            "seed": "seed", "stop": "stop", "repeat_penalty": "repetition_penalty",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
IMAGE_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
               (b"GIF8", "image/gif"), (b"BM", "image/bmp"), (b"RIFF", "image/webp"))


class TranslateError(ValueError):
    """The request cannot be expressed for vLLM: a 400 with this message."""


class ToolFunction(msgspec.Struct):
    name: str
    # Ollama sends an object; a JSON string (OpenAI's habit) is accepted too.
    arguments: dict[str, Any] | str = {}


class ToolCall(msgspec.Struct):
    function: ToolFunction
    id: str | None = None


class Message(msgspec.Struct):
    role: str
    content: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    thinking: str | None = None  # accepted; not sent back to the model


class Options(msgspec.Struct):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_predict: int | None = None
    # The context window is the model's max_model_len, fixed when vLLM loads
    # it; a num_ctx is accepted (Home Assistant sends 8192) but never applied.
    num_ctx: int | None = None


class _Common(msgspec.Struct):
    model: str = ""
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: float | str | None = None
    think: bool | str | None = None


class ChatRequest(_Common):
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Common):
    prompt: str | None = None
    system: str | None = None
    images: list[str] | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None  # accepted and ignored: answers carry no context


def decode(raw: dict[str, Any], cls: type[ChatRequest] | type[GenerateRequest]
           ) -> ChatRequest | GenerateRequest:
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        raise TranslateError(str(exc)) from None


def sampling(options: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI/vLLM sampling parameters for Ollama ``options``."""
    if not options:
        return {}
    try:
        opts = msgspec.convert(options, Options)
    except msgspec.ValidationError as exc:
        raise TranslateError(str(exc).replace("$.", "$.options.", 1)) from None
    out: dict[str, Any] = {}
    for name, param in SAMPLING.items():
        value = getattr(opts, name)
        if value is not None:
            out[param] = [value] if name == "stop" and isinstance(value, str) else value
    # Ollama: -1 generates until a stop, -2 until the context is full; both
    # are vLLM's default (no max_tokens).
    if opts.num_predict is not None and opts.num_predict >= 0:
        out["max_tokens"] = opts.num_predict
    return out


def response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    raise TranslateError(f'invalid format {fmt!r}: use "json" or a JSON schema object')


def thinking(think: bool | str | None) -> dict[str, Any]:
    """``think``: a bool toggles a reasoning model's thinking, a level sets its effort."""
    if think is None:
        return {}
    if isinstance(think, bool):
        out: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": think}}
        if not think:
            out["include_reasoning"] = False
        return out
    return {"reasoning_effort": think}


def image_url(data: str, where: str) -> dict[str, Any]:
    """An OpenAI image part for one Ollama image (base64, no ``data:`` prefix)."""
    if data.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": data}}
    try:
        head = base64.b64decode(data[:32] + "=" * (-len(data[:32]) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise TranslateError(f"{where}: an image must be base64-encoded bytes") from None
    mime = next((m for magic, m in IMAGE_MAGIC if head.startswith(magic)),
                "application/octet-stream")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _content(text: str | None, images: list[str] | None, where: str) -> Any:
    if not images:
        return text or ""
    parts: list[dict[str, Any]] = [image_url(img, f"{where}.images[{i}]")
                                   for i, img in enumerate(images)]
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI's: tool-call arguments become JSON strings,
    calls get ids (Ollama's have none) and tool results point at their call."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of calls not yet answered
    for i, m in enumerate(messages):
        where = f"$.messages[{i}]"
        if m.role == "assistant" and m.tool_calls:
            calls: list[dict[str, Any]] = []
            for j, tc in enumerate(m.tool_calls):
                args = tc.function.arguments
                calls.append({"id": tc.id or f"call_{i}_{j}", "type": "function",
                              "function": {"name": tc.function.name,
                                           "arguments": args if isinstance(args, str)
                                           else json.dumps(args)}})
            pending = [(c["id"], c["function"]["name"]) for c in calls]
            out.append({"role": "assistant", "content": m.content or "", "tool_calls": calls})
        elif m.role == "tool":
            msg: dict[str, Any] = {"role": "tool", "content": m.content or ""}
            call_id = m.tool_call_id or _answered(pending, m.tool_name)
            if call_id is not None:
                msg["tool_call_id"] = call_id
            if m.tool_name:
                msg["name"] = m.tool_name
            out.append(msg)
        else:
            out.append({"role": m.role, "content": _content(m.content, m.images, where)})
    return out


def _answered(pending: list[tuple[str, str]], name: str | None) -> str | None:
    """The id of the call a tool result answers: by name, else the oldest open call."""
    for k, (call_id, call_name) in enumerate(pending):
        if name is None or call_name == name:
            del pending[k]
            return call_id
    return None


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise TranslateError(f"$.tools[{i}]: a tool needs function.name")
        out.append({**tool, "type": tool.get("type") or "function"})
    return out


def _common(req: ChatRequest | GenerateRequest) -> dict[str, Any]:
    # Always stream from the worker: the first chunk times prompt evaluation,
    # and the final usage chunk gives Ollama's token counts.
    body: dict[str, Any] = {"model": req.model, "stream": True,
                            "stream_options": {"include_usage": True},
                            **sampling(req.options), **thinking(req.think)}
    fmt = response_format(req.format)
    if fmt is not None:
        body["response_format"] = fmt
    return body


def chat_body(req: ChatRequest) -> dict[str, Any]:
    """The OpenAI chat body for an Ollama chat. With ``tools`` it is what an
    OpenAI client sends without ``tool_choice``: vLLM's ``auto``."""
    body = _common(req)
    body["messages"] = openai_messages(req.messages or [])
    tools = _tools(req.tools)
    if tools is not None:
        body["tools"] = tools
    return body


def generate_body(req: GenerateRequest) -> tuple[p.Endpoint, dict[str, Any]]:
    """``/api/generate`` runs the chat template (system + prompt), unless ``raw``."""
    if req.suffix:
        raise TranslateError("`suffix` (fill-in-the-middle) is not supported by this server")
    if req.template:
        raise TranslateError("`template` overrides are not supported: the model's own chat "
                             "template is used (or send raw=true with a formatted prompt)")
    body = _common(req)
    if req.raw:
        if req.images:
            raise TranslateError("`images` cannot be combined with raw=true")
        body.pop("chat_template_kwargs", None)
        body.pop("include_reasoning", None)
        body.pop("reasoning_effort", None)
        body["prompt"] = req.prompt or ""
        return p.Endpoint.COMPLETION, body
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    messages.append({"role": "user", "content": _content(req.prompt, req.images, "$")})
    body["messages"] = messages
    return p.Endpoint.CHAT, body
