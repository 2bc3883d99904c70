"""Speak to an Ollama server's native API on behalf of an OpenAI request.

The other direction of ``gateway/ollama_*`` (which serves Ollama clients):
here an OpenAI-shaped body becomes an ``/api/chat`` or ``/api/generate``
request, and Ollama's NDJSON answer becomes OpenAI SSE chunks or a JSON body,
so a remote Ollama box looks like any other model to the relay.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from shared import protocol as p

OPTION_MAP = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
              "max_tokens": "num_predict", "max_completion_tokens": "num_predict",
              "stop": "stop", "seed": "seed", "repetition_penalty": "repeat_penalty",
              "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}


def _message(msg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.get("role", "user")}
    content = msg.get("content")
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                images.append(url.split(",", 1)[1] if url.startswith("data:") else url)
        out["content"] = "".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if msg.get("tool_calls"):
        out["tool_calls"] = [
            {"function": {"name": tc["function"]["name"],
                          "arguments": _as_object(tc["function"].get("arguments"))}}
            for tc in msg["tool_calls"]]
    return out


def _as_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return msgspec.json.decode(arguments)
        except msgspec.DecodeError:
            return {}
    return arguments or {}


def to_ollama_request(body: dict[str, Any], endpoint: p.Endpoint, stream: bool) -> dict[str, Any]:
    options = {OPTION_MAP[k]: v for k, v in body.items() if k in OPTION_MAP and v is not None}
    req: dict[str, Any] = {"model": body["model"], "stream": stream, "options": options}
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        req["format"] = "json"
    elif fmt.get("type") == "json_schema":
        req["format"] = (fmt.get("json_schema") or {}).get("schema", {})
    if endpoint is p.Endpoint.CHAT:
        req["messages"] = [_message(m) for m in body.get("messages", [])]
        if body.get("tools") and body.get("tool_choice") != "none":
            req["tools"] = body["tools"]
    else:
        prompt = body.get("prompt", "")
        req["prompt"] = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
    return req


class OllamaStream:
    """Turns one Ollama answer (NDJSON lines or one JSON body) into OpenAI's shapes."""

    def __init__(self, model: str, endpoint: p.Endpoint, rid: str, include_usage: bool) -> None:
        self.model = model
        self.chat = endpoint is p.Endpoint.CHAT
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + rid
        self.created = int(time.time())
        self.include_usage = include_usage
        self.started = False

    def _base(self) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat
                else "text_completion", "created": self.created, "model": self.model}

    @staticmethod
    def _decode(raw: bytes | str) -> dict[str, Any]:
        obj = msgspec.json.decode(raw)
        if not isinstance(obj, dict):
            raise ValueError("Ollama sent something other than a JSON object")
        if "error" in obj:
            raise ValueError(f"Ollama error: {obj['error']}")
        return obj

    @staticmethod
    def _tool_calls(msg: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"id": f"call_{i}", "type": "function", "index": i, "function": {
            "name": tc["function"]["name"],
            "arguments": msgspec.json.encode(tc["function"].get("arguments", {})).decode()}}
            for i, tc in enumerate(msg.get("tool_calls") or [])]

    @staticmethod
    def _finish(obj: dict[str, Any], has_tools: bool) -> str:
        if has_tools:
            return "tool_calls"
        return "length" if obj.get("done_reason") == "length" else "stop"

    def _usage(self, obj: dict[str, Any]) -> dict[str, int]:
        prompt, gen = int(obj.get("prompt_eval_count", 0)), int(obj.get("eval_count", 0))
        return {"prompt_tokens": prompt, "completion_tokens": gen, "total_tokens": prompt + gen}

    def chunk(self, line: str) -> list[str]:
        obj = self._decode(line)
        out = []
        msg = obj.get("message") or {}
        tools = self._tool_calls(msg)
        if self.chat:
            delta: dict[str, Any] = {"content": msg.get("content", "")}
            if not self.started:
                delta["role"] = "assistant"
            if tools:
                delta["tool_calls"] = tools
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        else:
            choice = {"index": 0, "text": obj.get("response", ""), "finish_reason": None}
        self.started = True
        if obj.get("done"):
            choice["finish_reason"] = self._finish(obj, bool(tools))
        out.append(_sse({**self._base(), "choices": [choice]}))
        if obj.get("done"):
            if self.include_usage:
                out.append(_sse({**self._base(), "choices": [], "usage": self._usage(obj)}))
            out.append("data: [DONE]\n\n")
        return out

    def response(self, raw: bytes) -> bytes:
        obj = self._decode(raw)
        base = {**self._base(), "object": "chat.completion" if self.chat else "text_completion"}
        msg = obj.get("message") or {}
        tools = self._tool_calls(msg)
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": msg.get("content", "")}
            if tools:
                message["tool_calls"] = [{k: v for k, v in t.items() if k != "index"}
                                         for t in tools]
            choice: dict[str, Any] = {"index": 0, "message": message}
        else:
            choice = {"index": 0, "text": obj.get("response", "")}
        choice["finish_reason"] = self._finish(obj, bool(tools))
        return msgspec.json.encode({**base, "choices": [choice], "usage": self._usage(obj)})


def _sse(obj: dict[str, Any]) -> str:
    return "data: " + msgspec.json.encode(obj).decode() + "\n\n"
