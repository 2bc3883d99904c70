"""Property-based fuzzing of every endpoint against the real stack (hypothesis, schemathesis).

Bodies range from random bytes through arbitrary JSON to nearly-valid OpenAI
requests with odd values, sent to /v1/chat/completions, /v1/completions, the
read-only endpoints, and arbitrary paths with arbitrary methods. Properties:
no answer is a 5xx, every /v1 error is in OpenAI's shape, a 200 stream ends
in ``[DONE]``; and at the end nothing crashed (the server and every worker
keep their pids, no restarts) and the gateway's memory stayed flat.
Then schemathesis checks the server against its own ``GET /openapi.json``.

Generation stays cheap: a body that might be valid gets ``max_tokens`` capped
at 4 (and ``n`` at 2), and anything the router would send to the on-demand
vision model goes to the chat model instead (loading it is another test's job).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.core.router import Router, UnknownModel
from gateway.openai.openapi import SPEC
from shared.config import Role, load
from tests.e2e.conftest import Stack, wait_for

pytestmark = pytest.mark.e2e

CHAT, TOOLS = "smollm2-135m-chat", "smollm2-135m-tools"
MAX_TOKENS = 4
MAX_N = 2
RSS_GROWTH_MB = 20.0  # after warm-up; measured: +5.5 MB once, then flat; 10 kB a request is 30 MB

# No shrinking: a failure reports the example as found, and the run stays bounded.
FUZZ = dict(deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck), print_blob=True)


@dataclass
class Fuzz:
    stack: Stack
    client: httpx.Client
    router: Router
    vision: str
    pids: dict[str, Any]
    rss_mb: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)


def idle(w: dict[str, Any]) -> bool:
    e = w["engine"] or {}
    return (w["active_requests"], w["queued"], e.get("running", 0), e.get("waiting", 0)) == (
        0, 0, 0, 0)


def server_rss_mb(stack: Stack) -> float:
    return float(psutil.Process(stack.proc.pid).memory_info().rss / 2**20)


def identities(stack: Stack) -> dict[str, Any]:
    workers = stack.health()["workers"]
    return {"server": stack.proc.pid,
            **{name: (w["pid"], w["restarts"], w["state"]) for name, w in workers.items()}}


@pytest.fixture(scope="module")
def fuzz(stack: Stack) -> Iterator[Fuzz]:
    cfg = load(path=stack.config_path)
    vision = cfg.by_role(Role.VISION)
    with httpx.Client(base_url=stack.url, timeout=120) as client:
        f = Fuzz(stack, client, Router(cfg), vision.name if vision else "", identities(stack))
        # Warm up every path once so first-use allocations do not count as growth.
        for _ in range(20):
            client.get("/v1/models")
            client.post("/v1/chat/completions", content=b"{")
            client.post("/v1/completions", json={"model": CHAT, "prompt": "hi",
                                                 "max_tokens": 1})
        f.rss_mb = server_rss_mb(stack)
        yield f


# ----- strategies ----------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-2**40, 2**40)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=24))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
models = st.sampled_from([CHAT, TOOLS, "phi3:mini", "hermes3:8b", "qwen2.5:7b:latest", "auto",
                          "", "gpt-4o", "SMOLLM2-135M-CHAT"]) | st.text(max_size=16) | json_values
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]) \
    | st.text(max_size=8)
text_parts = st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40)})
image_parts = st.fixed_dictionaries({"type": st.sampled_from(["image_url", "image"]),
                                     "image_url": st.fixed_dictionaries({"url": st.sampled_from([
                                         "data:image/png;base64,AAAA", "data:,",
                                         "file:///etc/passwd", "http://169.254.169.254/",
                                         "ftp://x/y.png", "data:image/png;base64,%%%"])})})
odd_parts = st.fixed_dictionaries({"type": json_values}, optional={
    "text": json_values, "image_url": json_values})
contents = st.text(max_size=60) | st.lists(text_parts | image_parts | odd_parts | json_values,
                                           max_size=3) | json_values
messages = st.fixed_dictionaries(
    {"role": roles, "content": contents},
    optional={"name": st.text(max_size=8), "tool_call_id": st.text(max_size=8),
              "tool_calls": json_values})
tools = st.lists(st.fixed_dictionaries({
    "type": st.sampled_from(["function", "other"]),
    "function": st.fixed_dictionaries(
        {"name": st.text(max_size=10)},
        optional={"description": st.text(max_size=20),
                  "parameters": st.just({"type": "object", "properties": {
                      "room": {"type": "string"}}}) | json_values})}), max_size=2) | json_values
sampling = {
    "max_tokens": st.integers(-3, 10**9) | json_values,
    "max_completion_tokens": st.integers(-3, 10**6) | json_values,
    "temperature": st.floats(-5, 5, allow_nan=False) | json_values,
    "top_p": st.floats(-1, 2, allow_nan=False) | json_values,
    "top_k": st.integers(-5, 100),
    "n": st.integers(-1, 5) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | json_values,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=5) | json_values,
    "seed": st.integers(-2**70, 2**70) | json_values,
    "presence_penalty": st.floats(-5, 5, allow_nan=False),
    "frequency_penalty": st.floats(-5, 5, allow_nan=False),
    "logprobs": st.booleans() | st.integers(-1, 30),
    "top_logprobs": st.integers(-1, 30),
    "logit_bias": st.dictionaries(st.text(max_size=6), st.floats(-200, 200), max_size=3),
    "ignore_eos": st.booleans(),
    "min_tokens": st.integers(-1, 10),
    "user": st.text(max_size=10),
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"},
                                        {"type": "json_schema"}, {"type": "nope"}])
    | json_values,
    "extra": json_values,
}
chat_bodies = st.fixed_dictionaries(
    {"messages": st.lists(messages, max_size=4) | json_values},
    optional={"model": models, "tools": tools,
              "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
              **sampling})
prompts = (st.text(max_size=80) | st.lists(st.text(max_size=20), max_size=3)
           | st.lists(st.integers(-10, 60000), max_size=8) | json_values)
completion_bodies = st.fixed_dictionaries(
    {"prompt": prompts},
    optional={"model": models, "echo": st.booleans(), "suffix": st.text(max_size=5),
              **sampling})
# Requests that are valid apart from their values' extremes: they reach the engine.
valid_sampling = st.fixed_dictionaries({"max_tokens": st.integers(1, MAX_TOKENS)}, optional={
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(-1, 50),
    "min_p": st.floats(0, 1), "seed": st.integers(0, 2**63 - 1), "stream": st.booleans(),
    "n": st.integers(1, MAX_N), "stop": st.lists(st.text(min_size=1, max_size=4), max_size=2),
    "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.5, 2), "ignore_eos": st.booleans(),
    "logit_bias": st.dictionaries(st.integers(0, 49151).map(str), st.floats(-100, 100),
                                  max_size=3)})
text_models = st.sampled_from([CHAT, TOOLS, "phi3:mini", "hermes3:8b", "auto"])
valid_chat = st.builds(
    lambda model, msgs, extra, logprobs: {"model": model, "messages": msgs, **extra, **logprobs},
    text_models,
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                    "content": st.text(min_size=1, max_size=60)}),
             min_size=1, max_size=3),
    valid_sampling,
    st.just({}) | st.fixed_dictionaries({"logprobs": st.just(True),
                                         "top_logprobs": st.integers(0, 5)}))
valid_completion = st.builds(
    lambda model, prompt, extra, more: {"model": model, "prompt": prompt, **extra, **more},
    text_models, st.text(min_size=1, max_size=80) | st.lists(st.integers(0, 49151), min_size=1,
                                                             max_size=8),
    valid_sampling,
    st.fixed_dictionaries({}, optional={"logprobs": st.integers(0, 5), "echo": st.booleans()}))
raw_bodies = st.binary(max_size=256) | json_values.map(lambda v: json.dumps(v).encode())
content_types = st.sampled_from(["application/json", "text/plain", "",
                                 "application/x-www-form-urlencoded", "application/json; x=y"])


# ----- what every answer must satisfy ----------------------------------------------------
def tame(f: Fuzz, body: Any) -> Any:
    """Cap generation cost and keep requests off the on-demand vision model."""
    if not isinstance(body, dict):
        return body
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        # vLLM coerces "1000" and 1000.0 too: anything number-like beyond the cap is capped.
        if key in body and _number(value) is not None and _number(value) > MAX_TOKENS:  # type: ignore[operator]
            body[key] = MAX_TOKENS
    if "input" in body:  # the Responses API's cap (embeddings ignore it)
        if body.get("max_output_tokens") is None:
            body["max_output_tokens"] = MAX_TOKENS
    elif body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS  # the default would be the whole context
    for key, cap in (("n", MAX_N), ("min_tokens", MAX_TOKENS), ("best_of", MAX_N)):
        if key in body and (_number(body[key]) or 0) > cap:
            body[key] = cap
    try:
        if f.vision and f.router.route(body).model == f.vision:
            body["model"] = CHAT
    except UnknownModel:
        pass
    return body


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def check(f: Fuzz, r: httpx.Response, what: str) -> None:
    f.statuses[f"{what} {r.status_code}"] += 1
    what = f"{what} {r.request.content[:800]!r}"
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:500]}"
    if r.request.method == "HEAD":
        return
    if r.status_code >= 400 and r.url.path.startswith("/v1/"):
        error = r.json()["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str), error
    if r.status_code == 200 and r.headers.get("content-type", "").startswith(
            "text/event-stream"):
        # SSE lines end at \n only: str.splitlines() would also cut at U+2028, U+0085...,
        # which a model may write inside a JSON string (found by this fuzzer).
        events = [line for line in r.text.split("\n") if line.startswith("data:")]
        assert events and events[-1] == "data: [DONE]", r.text[-300:]
        for event in events[:-1]:
            payload = json.loads(event[5:])
            if "error" in payload:  # an in-band error must still be a client error
                assert int(payload["error"].get("code") or 400) < 500, f"{what}: {event}"


def post(f: Fuzz, path: str, body: Any, content_type: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": content_type} if content_type else {}
    return f.client.post(path, content=content, headers=headers)


# ----- the fuzzers -----------------------------------------------------------------------
@settings(max_examples=700, **FUZZ)  # type: ignore[arg-type]
@given(body=valid_chat | chat_bodies | raw_bodies, content_type=content_types)
def test_fuzz_chat_completions(fuzz: Fuzz, body: Any, content_type: str) -> None:
    r = post(fuzz, "/v1/chat/completions", tame(fuzz, body), content_type)
    check(fuzz, r, "POST /v1/chat/completions")


@settings(max_examples=500, **FUZZ)  # type: ignore[arg-type]
@given(body=valid_completion | completion_bodies | raw_bodies,
       content_type=content_types)
def test_fuzz_completions(fuzz: Fuzz, body: Any, content_type: str) -> None:
    r = post(fuzz, "/v1/completions", tame(fuzz, body), content_type)
    check(fuzz, r, "POST /v1/completions")


methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
query = st.dictionaries(st.text(st.characters(codec="ascii", exclude_categories=["Cc"]),
                                max_size=8),
                        st.text(max_size=8), max_size=3)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
    str.strip)  # httpx refuses to send surrounding whitespace
headers = st.dictionaries(st.sampled_from(["accept", "authorization", "x-request-id",
                                           "content-type", "accept-encoding", "x-zoe-model",
                                           "range", "if-none-match", "expect"]),
                          header_values, max_size=3)


@settings(max_examples=300, **FUZZ)  # type: ignore[arg-type]
@given(method=methods, path=st.sampled_from(["/v1/models", "/health", "/metrics",
                                             "/metrics/prometheus", "/openapi.json"]),
       params=query, extra=headers, body=st.binary(max_size=64))
def test_fuzz_read_only_endpoints(fuzz: Fuzz, method: str, path: str, params: dict[str, str],
                                  extra: dict[str, str], body: bytes) -> None:
    if extra.get("expect", "").lower().startswith("100"):
        extra.pop("expect")  # httpx does not implement 100-continue
    r = fuzz.client.request(method, path, params=params, headers=extra,
                            content=body if method not in ("GET", "HEAD") else None)
    check(fuzz, r, f"{method} {path}")
    if method == "GET":
        assert r.status_code == 200, r.text[:300]


# Ollama routes that change state or load models are exercised by their own tests.
SIDE_EFFECTS = re.compile(r"^/(admin|api/(pull|delete|create|copy|push|chat|generate|embed))")
segments = st.text(st.characters(codec="ascii", exclude_characters="/?#",
                                 exclude_categories=["Cc"]), max_size=12)
paths = st.tuples(st.sampled_from(["", "/v1", "/v2", "/api", "/metrics", "/health", "/v1/chat",
                                   "/openapi.json", "/.."]),
                  st.lists(segments, max_size=3)).map(lambda t: t[0] + "/" + "/".join(t[1]))


@settings(max_examples=800, **FUZZ)  # type: ignore[arg-type]
@given(method=methods, path=paths, params=query, extra=headers, body=raw_bodies)
def test_fuzz_arbitrary_paths_and_methods(fuzz: Fuzz, method: str, path: str,
                                          params: dict[str, str], extra: dict[str, str],
                                          body: bytes) -> None:
    extra.pop("expect", None)
    url = httpx.URL(fuzz.stack.url + path)  # absolute: "//x:y" is a path, not a host
    if SIDE_EFFECTS.match(url.path) or url.path.startswith("/v1/c"):  # covered above
        return
    r = fuzz.client.request(method, url, params=params, headers=extra,
                            content=body if method not in ("GET", "HEAD") else None)
    check(fuzz, r, f"{method} (any path)")


# ----- schemathesis against the served OpenAPI document -----------------------------------
def test_the_served_openapi_document_is_the_one_fuzzed_below(stack: Stack) -> None:
    r = httpx.get(f"{stack.url}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.json() == SPEC


# Loaded from the module the server serves (checked equal above): schemathesis' lazy
# ``from_fixture`` loader does not work with pytest 9 (it sets ``node._nodeid``).
openapi_schema = schemathesis.openapi.from_dict(SPEC)


@openapi_schema.parametrize()
@settings(max_examples=60, **FUZZ)  # type: ignore[arg-type]
def test_openapi_contract(case: Any, fuzz: Fuzz) -> None:
    """Every operation in /openapi.json, data generated from it (valid and invalid):
    no 5xx, and status codes, content types, headers and bodies as documented."""
    if isinstance(case.body, dict):
        case.body = tame(fuzz, case.body)
    response = case.call(base_url=fuzz.stack.url, timeout=120)
    fuzz.statuses[f"schemathesis {case.method} {case.path} {response.status_code}"] += 1
    case.validate_response(response, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance,
        response_headers_conformance, response_schema_conformance])


# ----- and afterwards ----------------------------------------------------------------------
def test_nothing_crashed_and_memory_stayed_flat(fuzz: Fuzz) -> None:
    assert fuzz.stack.proc.poll() is None, "the server exited"
    wait_for(lambda: identities(fuzz.stack) == fuzz.pids, 30,
             "the server and every worker to be the same processes, never restarted")
    # Every request ended, however odd: none still holds a slot, waits in a queue or runs
    # in an engine (a leaked slot would block its model for every later client).
    def held() -> dict[str, Any]:
        return {n: w for n, w in fuzz.stack.health()["workers"].items() if not idle(w)}
    try:
        wait_for(lambda: not held(), 30, "every worker to hold nothing")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still held: {held()}") from None
    growth = server_rss_mb(fuzz.stack) - fuzz.rss_mb
    total = sum(fuzz.statuses.values())
    by_status: Counter[str] = Counter()
    for key, n in fuzz.statuses.items():
        by_status[key.rsplit(" ", 1)[1]] += n
    contract = sum(n for key, n in fuzz.statuses.items() if key.startswith("schemathesis"))
    print(f"\nfuzz: {total} requests ({contract} of them schemathesis'), by status "
          f"{dict(sorted(by_status.items()))}; gateway RSS {fuzz.rss_mb:.1f} MB -> "
          f"{fuzz.rss_mb + growth:.1f} MB")
    assert growth < RSS_GROWTH_MB, f"the gateway grew by {growth:.1f} MB"
