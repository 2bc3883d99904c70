"""The Ollama API's translation, both ways, without a stack.

Requests: Ollama JSON → the OpenAI body vLLM gets. Answers: vLLM's SSE chunks
→ Ollama's NDJSON, checked against the official `ollama` client's own models.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import ollama
import pytest
from starlette.testclient import TestClient

from gateway.app import build_app
from gateway.ollama.catalog import parameter_size, safetensors_parameters, tagged
from gateway.ollama.format import OllamaFormat, control_answer, ollama_tool_calls
from gateway.ollama.keep_alive import FOREVER, parse_keep_alive
from gateway.ollama.translate import (
    ChatRequest,
    GenerateRequest,
    TranslateError,
    chat_body,
    decode,
    generate_body,
    sampling,
)
from shared import config as c
from shared import protocol as p
from workers.supervision.supervisor import Supervisor

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 24).decode()
TOOL = {"type": "function", "function": {"name": "set_light", "parameters": {
    "type": "object", "properties": {"room": {"type": "string"}}, "required": ["room"]}}}


def chat(**raw: Any) -> dict[str, Any]:
    req = decode({"model": "m", **raw}, ChatRequest)
    assert isinstance(req, ChatRequest)
    return chat_body(req)


def generate(**raw: Any) -> tuple[p.Endpoint, dict[str, Any]]:
    req = decode({"model": "m", **raw}, GenerateRequest)
    assert isinstance(req, GenerateRequest)
    return generate_body(req)


# ----- requests: Ollama -> OpenAI ---------------------------------------------
def test_chat_always_streams_from_the_worker_with_usage() -> None:
    body = chat(messages=[{"role": "user", "content": "hi"}], stream=False)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert "tool_choice" not in body and "tools" not in body


def test_options_map_to_vllm_sampling() -> None:
    assert sampling({"temperature": 0, "top_p": 0.5, "top_k": 20, "num_predict": 12,
                     "stop": "\n", "seed": 7, "repeat_penalty": 1.3, "num_ctx": 8192,
                     "num_gpu": 99, "mirostat": 2}) == {
        "temperature": 0, "top_p": 0.5, "top_k": 20, "max_tokens": 12, "stop": ["\n"],
        "seed": 7, "repetition_penalty": 1.3}


@pytest.mark.parametrize("num_predict", [-1, -2])
def test_unbounded_num_predict_sets_no_max_tokens(num_predict: int) -> None:
    assert sampling({"num_predict": num_predict}) == {}


def test_num_ctx_larger_than_any_model_is_accepted() -> None:
    body = chat(messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 1 << 20})
    assert "max_tokens" not in body and "truncate_prompt_tokens" not in body


def test_bad_option_type_names_the_field() -> None:
    with pytest.raises(TranslateError, match=r"\$\.options\.temperature"):
        sampling({"temperature": "hot"})


def test_bad_message_type_names_the_field() -> None:
    with pytest.raises(TranslateError, match=r"\$\.messages\[0\]\.content"):
        decode({"model": "m", "messages": [{"role": "user", "content": 5}]}, ChatRequest)


def test_format_json_and_schema() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert chat(messages=msgs, format="json")["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert chat(messages=msgs, format=schema)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    assert "response_format" not in chat(messages=msgs, format="")
    with pytest.raises(TranslateError, match="invalid format"):
        chat(messages=msgs, format="xml")


def test_think() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert chat(messages=msgs, think=True)["chat_template_kwargs"] == {"enable_thinking": True}
    off = chat(messages=msgs, think=False)
    assert off["chat_template_kwargs"] == {"enable_thinking": False}
    assert off["include_reasoning"] is False
    assert chat(messages=msgs, think="high")["reasoning_effort"] == "high"


def test_images_become_data_url_parts() -> None:
    body = chat(messages=[{"role": "user", "content": "what is this?", "images": [PNG]}])
    assert body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "what is this?"}]


def test_image_that_is_not_base64_is_refused() -> None:
    with pytest.raises(TranslateError, match=r"images\[0\].*base64"):
        chat(messages=[{"role": "user", "content": "x", "images": ["%%%not base64%%%"]}])


def test_tool_round_trip_arguments_objects_to_strings() -> None:
    body = chat(tools=[{"function": TOOL["function"]}], messages=[
        {"role": "user", "content": "light in the kitchen"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "set_light", "arguments": {"room": "kitchen"}}}]},
        {"role": "tool", "content": "done", "tool_name": "set_light"},
    ])
    assert body["tools"] == [TOOL]  # `type` filled in, as Ollama allows leaving it out
    call = body["messages"][1]["tool_calls"][0]
    assert call["type"] == "function" and call["id"]
    assert json.loads(call["function"]["arguments"]) == {"room": "kitchen"}
    assert body["messages"][2] == {"role": "tool", "content": "done",
                                   "tool_call_id": call["id"], "name": "set_light"}


def test_generate_uses_the_chat_template_unless_raw() -> None:
    endpoint, body = generate(prompt="Why?", system="Be brief.", images=[PNG])
    assert endpoint is p.Endpoint.CHAT
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["content"][1] == {"type": "text", "text": "Why?"}
    endpoint, body = generate(prompt="<|im_start|>", raw=True, think=True)
    assert endpoint is p.Endpoint.COMPLETION
    assert body["prompt"] == "<|im_start|>" and "chat_template_kwargs" not in body


@pytest.mark.parametrize("extra", [{"suffix": "end"}, {"template": "{{ .Prompt }}"}])
def test_generate_refuses_what_it_cannot_honour(extra: dict[str, Any]) -> None:
    with pytest.raises(TranslateError):
        generate(prompt="x", **extra)


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), ("", None), (0, 0.0), ("0", 0.0), ("0s", 0.0), (300, 300.0),
    ("300", 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), (1.5, 1.5),
    (-1, FOREVER), ("-1", FOREVER), ("-1m", FOREVER), ("24h", 86400.0)])
def test_keep_alive_parsing(value: Any, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "inf", "nan", True, "1x"])
def test_keep_alive_rejects_garbage(value: Any) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


# ----- answers: OpenAI SSE -> Ollama NDJSON ------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


def sse(delta: dict[str, Any] | None = None, finish: str | None = None,
        usage: dict[str, int] | None = None) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return "data: " + json.dumps({"choices": choices, "usage": usage}) + "\n\n"


USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def run_stream(fmt: OllamaFormat, chunks: list[str]) -> list[dict[str, Any]]:
    fmt.loaded()
    out = b"".join(fmt.chunk(ch) for ch in chunks) + fmt.end()
    return [json.loads(line) for line in out.decode().splitlines()]


def test_streamed_chat_is_ndjson_with_a_timed_final_line() -> None:
    fmt = OllamaFormat(model="phi3:mini", kind="chat", stream=True, clock=Clock())
    assert fmt.stream_content_type == b"application/x-ndjson"
    lines = run_stream(fmt, [sse({"role": "assistant", "content": ""}), sse({"content": "Pa"}),
                             sse({"content": "ris"}, finish="stop"), sse(usage=USAGE),
                             "data: [DONE]\n\n"])
    assert [ln["message"]["content"] for ln in lines] == ["Pa", "ris", ""]
    assert all(ln["model"] == "phi3:mini" and ln["created_at"].endswith("Z") for ln in lines)
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 11 and final["eval_count"] == 3
    assert final["load_duration"] == 1_000  # created at 2_000, loaded at 3_000
    assert final["prompt_eval_duration"] == 1_000  # first chunk at 4_000
    assert final["total_duration"] == final["load_duration"] + final["prompt_eval_duration"] \
        + final["eval_duration"]
    for ln in lines:  # what the official client parses
        ollama.ChatResponse.model_validate(ln)


def test_non_streamed_chat_is_one_object() -> None:
    fmt = OllamaFormat(model="m", kind="chat", stream=False, clock=Clock())
    assert fmt.stream_content_type.startswith(b"application/json")
    out = b"".join(fmt.chunk(ch) for ch in [sse({"content": "Hi"}), sse({"content": "!"},
                   finish="length"), sse(usage=USAGE)]) + fmt.end()
    obj = json.loads(out)
    assert obj["message"] == {"role": "assistant", "content": "Hi!"}
    assert obj["done"] is True and obj["done_reason"] == "length" and obj["eval_count"] == 3
    ollama.ChatResponse.model_validate(obj)


def test_streamed_tool_call_deltas_become_one_call_with_object_arguments() -> None:
    fmt = OllamaFormat(model="m", kind="chat", stream=True, clock=Clock())
    lines = run_stream(fmt, [
        sse({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                             "function": {"name": "set_light", "arguments": ""}}]}),
        sse({"tool_calls": [{"index": 0, "function": {"arguments": '{"room": '}}]}),
        sse({"tool_calls": [{"index": 0, "function": {"arguments": '"kitchen"}'}}]}),
        sse({}, finish="tool_calls"), sse(usage=USAGE)])
    assert len(lines) == 2
    call = lines[0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "set_light"
    assert call["function"]["arguments"] == {"room": "kitchen"}
    assert lines[1]["done_reason"] == "stop"
    parsed = ollama.ChatResponse.model_validate(lines[0])
    assert parsed.message.tool_calls is not None
    assert parsed.message.tool_calls[0].function.arguments == {"room": "kitchen"}


def test_non_streamed_tool_call_is_in_the_final_message() -> None:
    fmt = OllamaFormat(model="m", kind="chat", stream=False, clock=Clock())
    for ch in [sse({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]},
                   finish="tool_calls")]:
        assert fmt.chunk(ch) == b""
    obj = json.loads(fmt.end())
    assert obj["message"]["tool_calls"][0]["function"] == {"index": 0, "name": "f",
                                                           "arguments": {}}


def test_tool_call_arguments_that_are_not_an_object_come_back_as_text() -> None:
    calls, text = ollama_tool_calls([{"function": {"name": "f", "arguments": "[1, 2"}}])
    assert calls == [] and '"f"' in text and "[1, 2" in text


def test_generate_answers_use_response_and_completion_text() -> None:
    fmt = OllamaFormat(model="m", kind="generate", stream=True, clock=Clock())
    completion = "data: " + json.dumps({"choices": [{"index": 0, "text": "ok",
                                                     "finish_reason": "stop"}]}) + "\n\n"
    lines = run_stream(fmt, [completion, sse(usage=USAGE)])
    assert lines[0]["response"] == "ok" and lines[-1]["done"] is True
    for ln in lines:
        ollama.GenerateResponse.model_validate(ln)


def test_generate_through_the_chat_template_reads_chat_deltas() -> None:
    fmt = OllamaFormat(model="m", kind="generate", stream=False, clock=Clock())
    for ch in [sse({"role": "assistant", "content": ""}), sse({"content": "Red"}),
               sse({"content": ", blue"}, finish="stop"), sse(usage=USAGE)]:
        assert fmt.chunk(ch) == b""
    obj = json.loads(fmt.end())
    assert obj["response"] == "Red, blue" and obj["eval_count"] == 3
    ollama.GenerateResponse.model_validate(obj)


def test_thinking_goes_to_its_own_field() -> None:
    fmt = OllamaFormat(model="m", kind="chat", stream=True, clock=Clock())
    lines = run_stream(fmt, [sse({"reasoning": "hmm"}), sse({"content": "A"}, finish="stop")])
    assert lines[0]["message"] == {"role": "assistant", "content": "", "thinking": "hmm"}


def test_errors_are_ollama_shaped() -> None:
    err = p.Error(request_id="r", kind=p.ErrorKind.BAD_REQUEST, status=400, message="bad")
    fmt = OllamaFormat(model="m", kind="chat", stream=True, clock=Clock())
    assert json.loads(fmt.error(err)) == {"error": "bad"}
    line = fmt.chunk(sse({"content": "x"})) + fmt.stream_error(err)
    assert json.loads(line.splitlines()[-1]) == {"error": "bad"}
    assert fmt.end() == b""


def test_an_error_event_inside_the_stream_ends_it() -> None:
    fmt = OllamaFormat(model="m", kind="chat", stream=True, clock=Clock())
    out = fmt.chunk('data: {"error": {"message": "boom", "code": 500}}\n\n')
    assert json.loads(out) == {"error": "boom"}
    assert fmt.chunk(sse({"content": "late"})) == b"" and fmt.end() == b""


def test_load_and_unload_answers() -> None:
    obj = json.loads(control_answer(model="m", kind="chat", reason="unload", total_ns=5,
                                    load_ns=0))
    assert obj["done"] is True and obj["done_reason"] == "unload"
    assert obj["message"] == {"role": "assistant", "content": ""}
    ollama.ChatResponse.model_validate(obj)
    gen = json.loads(control_answer(model="m", kind="generate", reason="load", total_ns=5,
                                    load_ns=5))
    assert gen["response"] == "" and gen["done_reason"] == "load"


# ----- catalog -----------------------------------------------------------------
def test_names_get_tags() -> None:
    assert tagged("smollm2-135m-chat") == "smollm2-135m-chat:latest"
    assert tagged("phi3:mini") == "phi3:mini"


def test_parameter_count_from_safetensors_header(tmp_path: Path) -> None:
    header = json.dumps({"a": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 24]},
                         "b": {"dtype": "BF16", "shape": [5], "data_offsets": [24, 34]},
                         "__metadata__": {"format": "pt"}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 34)
    assert safetensors_parameters(path) == 17
    assert parameter_size(134_515_008) == "135M" and parameter_size(7_600_000_000) == "7.6B"


# ----- endpoints that need no model: Ollama's error shape -------------------------
CONFIG = """
server: {default_model: fast}
paths: {logs: %(tmp)s/logs, run: %(tmp)s/run, models: %(tmp)s/models}
models:
  - {name: fast, role: fast, path: "{models}/fast", aliases: ["phi3:mini"]}
  - {name: tools, role: tools, path: "{models}/tools", tool_call_parser: hermes}
"""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    cfg = c.parse(CONFIG % {"tmp": tmp_path}, tmp_path / "t.yaml")
    sup = Supervisor(cfg)
    yield TestClient(build_app(cfg, sup))  # no lifespan: no worker starts
    sup.dispatcher.sock.close(linger=0)
    sup.dispatcher.ctx.term()


def test_root_version_and_tags(client: TestClient) -> None:
    assert client.get("/").text == "Ollama is running"
    assert client.head("/").status_code == 200
    assert "version" in client.get("/api/version").json()
    tags = ollama.ListResponse.model_validate(client.get("/api/tags").json())
    assert [m.model for m in tags.models] == ["fast:latest", "phi3:mini", "tools:latest"]
    show = ollama.ShowResponse.model_validate(client.post("/api/show",
                                                          json={"model": "tools"}).json())
    assert show.capabilities == ["completion", "tools"]
    assert client.get("/api/ps").json() == {"models": []}


@pytest.mark.parametrize(("method", "path", "body", "status", "needle"), [
    ("POST", "/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
     404, 'model "nope" not found, try pulling it first'),
    ("POST", "/api/generate", {"model": "nope", "prompt": "x"}, 404, "not found"),
    ("POST", "/api/show", {"model": "nope"}, 404, "not found"),
    ("POST", "/api/chat", {"messages": [{"role": "user", "content": "x"}]}, 400,
     "model is required"),
    ("POST", "/api/chat", {"model": "fast", "messages": "hi"}, 400, "$.messages"),
    ("POST", "/api/chat", {"model": "fast", "messages": [{"role": "user", "content": "x"}],
                           "keep_alive": "soon"}, 400, "keep_alive"),
    ("POST", "/api/chat", {"model": "fast", "messages": [{"role": "user", "content": "x",
                                                          "images": ["%%"]}]}, 400, "base64"),
    ("POST", "/api/pull", {"model": "llama3"}, 404, "not configured"),
    ("POST", "/api/embed", {"model": "fast", "input": "x"}, 400, "embeddings"),
    ("POST", "/api/create", {"model": "x"}, 400, "not supported"),
    ("DELETE", "/api/delete", {"model": "fast"}, 400, "not supported"),
    ("GET", "/api/chat", None, 405, "not allowed"),
    ("GET", "/api/nothing", None, 404, "no Ollama endpoint"),
])
def test_errors(client: TestClient, method: str, path: str, body: Any, status: int,
                needle: str) -> None:
    r = client.request(method, path, content=None if body is None else msgspec.json.encode(body))
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_pull_of_a_configured_model_succeeds(client: TestClient) -> None:
    lines = client.post("/api/pull", json={"model": "phi3:mini"}).text.splitlines()
    assert json.loads(lines[-1]) == {"status": "success"}
    assert client.post("/api/pull", json={"model": "fast", "stream": False}).json() == {
        "status": "success"}
