"""OpenAI requests to an Ollama server, and its answers back (the remote backend)."""

from __future__ import annotations

import json

import pytest

from shared import protocol as p
from workers.supervision.ollama_client import OllamaStream, to_ollama_request


def test_chat_request_translation() -> None:
    body = {"model": "llama3.2:3b", "max_tokens": 12, "temperature": 0.2, "stop": ["\n"],
            "repetition_penalty": 1.1, "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is "},
                    {"type": "text", "text": "this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "1", "type": "function",
                     "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}]}
    req = to_ollama_request(body, p.Endpoint.CHAT, stream=True)
    assert req["stream"] is True and req["format"] == "json"
    assert req["options"] == {"num_predict": 12, "temperature": 0.2, "stop": ["\n"],
                              "repeat_penalty": 1.1}
    assert req["messages"][1] == {"role": "user", "content": "what is this?", "images": ["QUJD"]}
    assert req["messages"][2]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]
    assert req["tools"] == body["tools"]


def test_json_schema_and_generate() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    req = to_ollama_request({"model": "m", "prompt": "once", "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": schema}}},
        p.Endpoint.COMPLETION, stream=False)
    assert req["prompt"] == "once" and req["format"] == schema


def test_stream_becomes_openai_chunks_with_usage() -> None:
    s = OllamaStream("remote", p.Endpoint.CHAT, "abc", include_usage=True)
    first = s.chunk(json.dumps({"message": {"role": "assistant", "content": "Hi"},
                                "done": False}))
    last = s.chunk(json.dumps({"message": {"content": ""}, "done": True,
                               "done_reason": "length", "prompt_eval_count": 5,
                               "eval_count": 2}))
    chunk = json.loads(first[0].removeprefix("data: "))
    assert chunk["choices"][0]["delta"] == {"content": "Hi", "role": "assistant"}
    assert chunk["id"] == "chatcmpl-abc" and chunk["model"] == "remote"
    assert json.loads(last[0][6:])["choices"][0]["finish_reason"] == "length"
    assert json.loads(last[1][6:])["usage"] == {"prompt_tokens": 5, "completion_tokens": 2,
                                                "total_tokens": 7}
    assert last[2] == "data: [DONE]\n\n"


def test_tool_calls_come_back_as_json_strings() -> None:
    s = OllamaStream("remote", p.Endpoint.CHAT, "abc", include_usage=False)
    body = json.loads(s.response(json.dumps({"message": {"content": "", "tool_calls": [
        {"function": {"name": "light_off", "arguments": {"room": "kitchen"}}}]},
        "done": True}).encode()))
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "light_off", "arguments": '{"room":"kitchen"}'}
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_an_error_line_raises() -> None:
    s = OllamaStream("remote", p.Endpoint.CHAT, "abc", include_usage=False)
    with pytest.raises(ValueError, match="model not found"):
        s.chunk('{"error": "model not found"}')
