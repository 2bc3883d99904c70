"""vLLM's OpenAI stream, written as Ollama's NDJSON (or one JSON object).

The worker always streams (see :mod:`gateway.ollama.translate`), so one
format object sees every token: it times the request itself — load (waiting
for the model), prompt evaluation (until the first chunk), evaluation (the
rest) — and takes the token counts from vLLM's final usage chunk. Durations
are nanoseconds, as in Ollama. Tool-call deltas (a name, then argument
fragments) are collected into Ollama's whole calls with object arguments.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from shared import protocol as p

Kind = Literal["chat", "generate"]
NDJSON = b"application/x-ndjson"
JSON = b"application/json; charset=utf-8"
DONE_REASONS = {"length": "length"}  # stop, tool_calls, abort... -> "stop"

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def ollama_error_body(message: str) -> bytes:
    return _encode({"error": message})


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class ToolCalls:
    """Collects a stream's tool-call deltas (a name, then argument fragments)
    into Ollama's complete calls with ``arguments`` as JSON objects."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, str]] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for d in deltas:
            call = self.calls.setdefault(int(d.get("index") or 0),
                                         {"id": "", "name": "", "arguments": ""})
            call["id"] = d.get("id") or call["id"]
            fn = d.get("function") or {}
            call["name"] += fn.get("name") or ""
            call["arguments"] += fn.get("arguments") or ""

    def take(self) -> tuple[list[dict[str, Any]], str]:
        """The finished calls, and the text of any whose arguments are not a JSON object."""
        calls, text = ollama_tool_calls(
            [{"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
             for _, c in sorted(self.calls.items())])
        self.calls.clear()
        return calls, text


def ollama_tool_calls(openai_calls: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """OpenAI tool calls (arguments as a JSON string) as Ollama's (an object).

    A call whose arguments are not a JSON object is not a call a client could
    run; its text comes back as content instead of being dropped.
    """
    calls: list[dict[str, Any]] = []
    text = ""
    for i, c in enumerate(openai_calls):
        fn = c.get("function") or {}
        raw = fn.get("arguments") or "{}"
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            text += json.dumps({"name": fn.get("name"), "arguments": raw})
            continue
        call: dict[str, Any] = {"function": {"index": i, "name": fn.get("name") or "",
                                             "arguments": args}}
        if c.get("id"):
            call["id"] = c["id"]
        calls.append(call)
    return calls, text


class OllamaFormat:
    """One request's answer. ``stream=False`` collects everything into one object."""

    def __init__(self, *, model: str, kind: Kind, stream: bool,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.model, self.kind, self.stream, self.clock = model, kind, stream, clock
        self.stream_content_type = NDJSON if stream else JSON
        self.t0 = clock()
        self.t_loaded: int | None = None
        self.t_first: int | None = None
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.tools = ToolCalls()
        self.tool_calls: list[dict[str, Any]] = []
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.failed = False
        self.error_message = ""

    # ----- timing hooks ---------------------------------------------------
    def loaded(self) -> None:
        """The model is READY (or the wait for it ended): loading is over."""
        self.t_loaded = self.clock()

    # ----- the Format protocol --------------------------------------------
    def response(self, body: bytes) -> bytes:
        # A worker answers streamed requests with chunks; a plain body only
        # arrives when a stream produced nothing at all.
        if body.strip():
            data = _decode(body)
            choice = (data.get("choices") or [{}])[0]
            msg = choice.get("message") or {}
            text = msg.get("content") if "message" in choice else choice.get("text")
            self._collect(text, msg.get("reasoning") or msg.get("reasoning_content"),
                          msg.get("tool_calls"), choice.get("finish_reason"))
            self.usage = data.get("usage") or {}
        self.t_first = self.t_first or self.clock()
        return self._final(with_message=True)

    def chunk(self, data: str) -> bytes:
        if self.t_first is None:
            self.t_first = self.clock()
        out: list[bytes] = []
        for event in data.split("\n\n"):
            payload = event.strip().removeprefix("data:").strip()
            if not payload or payload == "[DONE]" or self.failed:
                continue
            obj = _decode(payload)
            if "error" in obj:
                err = obj["error"]
                self.failed = True
                self.error_message = str(err.get("message", err) if isinstance(err, dict)
                                         else err)
                out.append(self._line({"error": self.error_message}))
                continue
            if obj.get("usage"):
                self.usage = obj["usage"]
            for choice in obj.get("choices") or []:
                if choice.get("index", 0) != 0:
                    continue  # Ollama has no `n`: one answer per request
                delta = choice.get("delta") or {}
                # Chat chunks carry a delta; completion chunks (raw generate) text.
                text = delta.get("content") if "delta" in choice else choice.get("text")
                out.append(self._collect(text, delta.get("reasoning")
                                         or delta.get("reasoning_content"),
                                         delta.get("tool_calls"), choice.get("finish_reason")))
        return b"".join(out) if self.stream else b""

    def end(self) -> bytes:
        if self.failed:
            return b"" if self.stream else ollama_error_body(self.error_message)
        flush = self._flush_tools()
        if not self.stream:
            return self._final(with_message=True)
        return flush + self._line(self._final_object(with_message=False))

    def error(self, err: p.Error) -> bytes:
        return ollama_error_body(err.message)

    def stream_error(self, err: p.Error) -> bytes:
        self.failed = True
        return self._line({"error": err.message}) if self.stream else \
            ollama_error_body(err.message)

    # ----- pieces ----------------------------------------------------------
    def _collect(self, text: str | None, thinking: str | None,
                 tool_deltas: list[dict[str, Any]] | None, finish: str | None) -> bytes:
        out = b""
        if text or thinking:
            if text:
                self.text.append(text)
            if thinking:
                self.thinking.append(thinking)
            if self.stream:
                out += self._line(self._piece(text or "", thinking))
        if tool_deltas:
            if all("index" in d for d in tool_deltas):
                self.tools.add(tool_deltas)
            else:  # a complete (non-streamed) message: arguments are whole
                calls, extra = ollama_tool_calls(tool_deltas)
                self.tool_calls += calls
                self.text.append(extra)
        if finish is not None:
            self.finish = finish
            out += self._flush_tools()
        return out

    def _flush_tools(self) -> bytes:
        """Ollama sends tool calls whole, in one message, before the final one."""
        if not self.tools.calls:
            return b""
        calls, extra = self.tools.take()
        self.tool_calls += calls
        if extra:
            self.text.append(extra)
        if not self.stream:
            return b""
        piece = self._piece(extra, None)
        if calls:
            piece["message"]["tool_calls"] = calls
        return self._line(piece)

    def _piece(self, text: str, thinking: str | None) -> dict[str, Any]:
        obj: dict[str, Any] = {"model": self.model, "created_at": now_rfc3339()}
        if self.kind == "chat":
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                msg["thinking"] = thinking
            obj["message"] = msg
        else:
            obj["response"] = text
            if thinking:
                obj["thinking"] = thinking
        obj["done"] = False
        return obj

    def _final(self, *, with_message: bool) -> bytes:
        body = _encode(self._final_object(with_message=with_message))
        return body + b"\n" if self.stream else body

    def _final_object(self, *, with_message: bool) -> dict[str, Any]:
        end = self.clock()
        loaded = self.t_loaded if self.t_loaded is not None else self.t0
        first = self.t_first if self.t_first is not None else end
        text = "".join(self.text) if with_message else ""
        thinking = "".join(self.thinking) if with_message else ""
        obj = self._piece(text, thinking or None)
        if with_message and self.tool_calls and self.kind == "chat":
            obj["message"]["tool_calls"] = self.tool_calls
        obj.update({
            "done": True,
            "done_reason": DONE_REASONS.get(self.finish or "stop", "stop"),
            "total_duration": end - self.t0,
            "load_duration": loaded - self.t0,
            "prompt_eval_count": int(self.usage.get("prompt_tokens") or 0),
            "prompt_eval_duration": max(0, first - loaded),
            "eval_count": int(self.usage.get("completion_tokens") or 0),
            "eval_duration": max(0, end - first),
        })
        return obj

    @staticmethod
    def _line(obj: dict[str, Any]) -> bytes:
        return _encode(obj) + b"\n"


def control_answer(*, model: str, kind: Kind, reason: Literal["load", "unload"],
                   total_ns: int, load_ns: int) -> bytes:
    """The answer to an empty chat/generate: a model (un)loaded, nothing generated."""
    obj: dict[str, Any] = {"model": model, "created_at": now_rfc3339()}
    if kind == "chat":
        obj["message"] = {"role": "assistant", "content": ""}
    else:
        obj["response"] = ""
    obj.update({"done": True, "done_reason": reason, "total_duration": total_ns,
                "load_duration": load_ns})
    return _encode(obj)
