"""The OpenAI API through the gateway, with the official `openai` SDK as client."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Stack, wait_for

pytestmark = pytest.mark.e2e

CHAT, TOOLS = "smollm2-135m-chat", "smollm2-135m-tools"
PARIS = [{"role": "user", "content": "What is the capital of France?"}]
# A valid 1x1 PNG: it passes the gateway's image checks and reaches vLLM.
TINY_PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
            "nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==")


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def aclient(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.v1, api_key="unused", max_retries=0, timeout=120)


def test_health_lists_every_worker(stack: Stack) -> None:
    r = httpx.get(f"{stack.url}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["default_model"] == CHAT
    assert {CHAT, TOOLS} <= set(body["workers"])
    assert body["workers"][CHAT]["state"] == "ready"


def test_capital_of_france(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT, messages=PARIS, max_tokens=40, temperature=0)  # type: ignore[arg-type]
    assert raw.headers["x-zoe-model"] == CHAT
    assert raw.headers["x-zoe-route"] == "explicit"
    completion = raw.parse()
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.model == CHAT
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_no_model_field_goes_to_the_default(stack: Stack) -> None:
    r = httpx.post(f"{stack.v1}/chat/completions", timeout=120,
                   json={"messages": PARIS, "max_tokens": 5})
    assert r.status_code == 200
    assert r.headers["x-zoe-model"] == CHAT and r.headers["x-zoe-route"] == "default"


def test_legacy_ollama_alias(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="hermes3:8b", messages=PARIS, max_tokens=5)  # type: ignore[arg-type]
    assert raw.headers["x-zoe-model"] == TOOLS and raw.headers["x-zoe-route"] == "alias"


def test_streaming_yields_chunks_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT, messages=PARIS, max_tokens=24, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    contents, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            contents.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(contents) > 1
    assert "Paris" in "".join(contents)
    assert usage is not None and 0 < usage.completion_tokens <= 24


def test_completions_endpoint(client: openai.OpenAI) -> None:
    result = client.completions.create(model=CHAT, prompt="The capital of France is",
                                       max_tokens=5, temperature=0)
    assert result.choices[0].text.strip()
    stream = client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=6,
                                       stream=True)
    assert len([c for c in stream if c.choices and c.choices[0].text]) > 1


def test_models_are_listed(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {CHAT, TOOLS} <= ids


def test_two_models_answer_concurrently(aclient: openai.AsyncOpenAI) -> None:
    """Both streams are in flight at once: each starts before the other ends."""

    async def run(model: str) -> tuple[float, float, str]:
        first = last = 0.0
        text = []
        stream = await aclient.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Tell me about cats."}],
            # Long enough (about 10 s here) that a slow start of one cannot miss the other.
            max_tokens=200, stream=True, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                now = time.monotonic()
                first = first or now
                last = now
                text.append(chunk.choices[0].delta.content)
        return first, last, "".join(text)

    async def both() -> list[tuple[float, float, str]]:
        return list(await asyncio.gather(run(CHAT), run(TOOLS)))

    (a_first, a_last, a_text), (b_first, b_last, b_text) = asyncio.run(both())
    assert a_text and b_text
    assert a_first < b_last and b_first < a_last


def test_tool_call_required_is_schema_valid(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {
        "name": "light_off", "description": "Turn off the lights in a room",
        "parameters": {"type": "object", "properties": {"room": {"type": "string"}},
                       "required": ["room"]}}}]
    raw = client.chat.completions.with_raw_response.create(
        messages=[{"role": "user", "content": "Turn off the kitchen lights"}],
        model="auto", tools=tools, tool_choice="required", max_tokens=60, temperature=0)
    assert raw.headers["x-zoe-model"] == TOOLS and raw.headers["x-zoe-route"] == "tools"
    calls = raw.parse().choices[0].message.tool_calls
    assert calls, "tool_choice=required must produce a tool call"
    call = calls[0]
    assert call.type == "function" and call.function.name == "light_off"
    args = json.loads(call.function.arguments)
    assert isinstance(args.get("room"), str)


CITY: Any = {"type": "object", "required": ["city", "population"],
             "properties": {"city": {"type": "string"}, "population": {"type": "integer"}}}


def test_structured_output_is_compact_json(client: openai.OpenAI) -> None:
    """json_whitespace: compact (the default): no newlines for a small model to pad with."""
    texts = [client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
        max_tokens=200, seed=seed).choices[0].message.content or "" for seed in range(3)]
    for text in texts:
        assert "\n" not in text and set(json.loads(text)) == {"city", "population"}, text


def test_a_schema_the_json_backend_cannot_enforce_is_a_400(client: openai.OpenAI) -> None:
    schema = {**CITY, "properties": {**CITY["properties"],
                                     "population": {"type": "integer", "multipleOf": 10}}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
            response_format={"type": "json_schema",
                             "json_schema": {"name": "city", "schema": schema}}, max_tokens=20)
    assert "not supported by xgrammar" in str(err.value), err.value


def test_disconnect_mid_stream_frees_the_engine(stack: Stack) -> None:
    """A client that goes away must leave no running sequence in the engine."""
    body = {"model": CHAT, "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 1500, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=60) as c, c.stream("POST", f"{stack.v1}/chat/completions",
                                                 json=body) as r:
        # Hold the line iterator: an abandoned one is finalized at once, and
        # httpcore then closes the connection -- a disconnect before we mean one.
        lines = r.iter_lines()
        events = [line for line in itertools.islice(
            (line for line in lines if line.startswith("data:")), 3)]
        assert len(events) == 3, events

        def running() -> bool:
            w = stack.worker(CHAT)
            return bool(w["active_requests"] >= 1 and w["engine"]["running"] >= 1)
        # Engine figures are relayed asynchronously (at most every 0.1 s): poll.
        wait_for(running, 10, "the request to be running in the engine before we hang up")
    # 1500 tokens would take a minute; the abort frees the sequence at once.

    def idle() -> bool:
        w = stack.worker(CHAT)
        e = w["engine"]
        return e["running"] == 0 and e["waiting"] == 0 and w["active_requests"] == 0
    wait_for(idle, 10, "the engine to drop the disconnected request")


BAD_REQUESTS: list[tuple[str, bytes | dict[str, Any], int, str]] = [
    ("invalid json", b"{nope", 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("empty body", b"", 400, "empty"),
    ("no messages", {"model": CHAT}, 400, "messages"),
    ("empty messages", {"messages": []}, 400, "messages"),
    ("unknown model", {"model": "gpt-9", "messages": PARIS}, 404, "does not exist"),
    ("model not a string", {"model": 5, "messages": PARIS}, 400, "model"),
    ("max_tokens wrong type", {"messages": PARIS, "max_tokens": "many"}, 400, "max_tokens"),
    ("max_tokens beyond context", {"messages": PARIS, "max_tokens": 100000}, 400,
     "max_model_len"),
    ("stream wrong type", {"messages": PARIS, "stream": "yes"}, 400, "stream"),
    ("negative temperature", {"messages": PARIS, "temperature": -1}, 400, "temperature"),
    ("messages wrong shape", {"messages": [{"content": "no role"}]}, 400, "role"),
    ("tools wrong type", {"messages": PARIS, "tools": "x"}, 400, "tools"),
    ("image to a text model", {"model": CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": TINY_PNG}}]}]}, 400, "multimodal"),
    ("corrupt image", {"model": CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400,
     "not a readable image"),
    ("file:// image", {"model": CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, 400,
     "unsupported image URL scheme"),
]


@pytest.mark.parametrize("body,status,fragment", [c[1:] for c in BAD_REQUESTS],
                         ids=[c[0] for c in BAD_REQUESTS])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_bad_input_gets_an_openai_error(stack: Stack, body: bytes | dict[str, Any],
                                        status: int, fragment: str, stream: bool) -> None:
    if isinstance(body, dict) and stream and "stream" not in body:
        body = {**body, "stream": True}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{stack.v1}/chat/completions", content=content, timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment.lower() in error["message"].lower()
    assert error["type"] in ("invalid_request_error", "not_found_error")
    assert stack.health()["status"] == "ok"  # and the server keeps serving


def test_unknown_route_and_method(stack: Stack) -> None:
    assert httpx.get(f"{stack.v1}/nope").status_code == 404
    r = httpx.get(f"{stack.v1}/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_oversized_body_is_refused(stack: Stack) -> None:
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (17 * 1024 * 1024) + b'"}]}'
    r = httpx.post(f"{stack.v1}/chat/completions", content=big, timeout=60)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]


def test_metrics_endpoints_answer(stack: Stack) -> None:
    text = httpx.get(f"{stack.url}/metrics/prometheus").text
    assert "zoe_route_decisions_total" in text
    assert httpx.get(f"{stack.url}/metrics").json()["models"][CHAT]["state"] == "ready"


def test_worker_writes_its_own_log(stack: Stack) -> None:
    log = wait_for(lambda: "READY" in (t := stack.log(CHAT)) and t, 5, "the READY line")
    assert "warming -> ready" in log and "EngineCore" in log
