"""The on-demand vision model: swapped in for an image, out again when idle."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import REQUEST_WAIT_S, VISION_IDLE_S, Stack, wait_for

pytestmark = pytest.mark.e2e

CHAT, TOOLS, VISION = "smollm2-135m-chat", "smollm2-135m-tools", "tiny-idefics3-vision"
VISION_ALIAS = "gemma3n-e2b"  # its alias in the tiny profile


def png_data_url(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_chat(color: tuple[int, int, int]) -> dict[str, object]:
    return {"max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": png_data_url(color)}}]}]}


def test_image_swaps_the_vision_model_in_and_out(stack: Stack) -> None:
    stack.wait_state(TOOLS, "ready")
    assert stack.worker(VISION)["state"] == "stopped", "vision must not load at start"
    swaps_before = stack.worker(TOOLS)["swapped_out"]

    # Drain + unload the tools model, then a cold load of the vision model (slow on 2 busy cores).
    r = httpx.post(f"{stack.v1}/chat/completions", json=image_chat((200, 30, 30)), timeout=900)
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-model"] == VISION and r.headers["x-zoe-route"] == "image"
    assert r.json()["choices"][0]["message"]["content"]
    assert r.json()["usage"]["prompt_tokens"] > 20, "the image must expand into image tokens"

    # The tools model made room: drained, unloaded, and its requests fall back.
    tools = stack.worker(TOOLS)
    assert tools["state"] == "stopped" and tools["swapped_out"] == swaps_before + 1
    assert f"swapped out for {VISION}" in stack.log(TOOLS)
    r = httpx.post(f"{stack.v1}/chat/completions", timeout=60 + REQUEST_WAIT_S, json={
        "model": TOOLS, "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert r.headers["x-zoe-model"] == CHAT
    assert r.headers["x-zoe-route"] == f"fallback:{TOOLS}"

    # A second image is served by the already-loaded vision worker.
    # (If a slow machine let it idle out meanwhile, this loads it again: slower, same answer.)
    r = httpx.post(f"{stack.v1}/chat/completions", json=image_chat((0, 0, 255)), timeout=900)
    assert r.status_code == 200 and r.headers["x-zoe-model"] == VISION

    # Idle: vision unloads and the tools model comes back on its own.
    stack.wait_state(VISION, "stopped", VISION_IDLE_S + 60)
    stack.wait_state(TOOLS, "ready", 300)
    assert f"restored after {VISION} unloaded" in stack.log(TOOLS)
    assert f"idle for {VISION_IDLE_S:.0f}s" in stack.log(VISION)


def test_corrupt_image_is_a_client_error(stack: Stack) -> None:
    body = {"max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]}
    r = httpx.post(f"{stack.v1}/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert "image" in r.json()["error"]["message"].lower()


@contextlib.contextmanager
def open_client(stack: Stack) -> Iterator[httpx.Client]:
    """A client already connected, so the 100 ms bound times the server, not a TCP handshake."""
    with httpx.Client(timeout=60) as client:
        client.get(f"{stack.url}/health")
        yield client


@pytest.mark.parametrize(("change", "needle"), [
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]},
     "image"),
])
def test_an_invalid_body_to_the_vision_model_costs_nothing(
        stack: Stack, change: dict[str, object], needle: str) -> None:
    """Refused before routing: the on-demand model is not loaded, nothing is swapped out."""
    before = wait_for(lambda: (w := stack.worker(VISION))["state"] == "stopped" and w,
                      VISION_IDLE_S + 120, "the vision model to be unloaded", every=0.5)
    tools_before = wait_for(lambda: (w := stack.worker(TOOLS))["state"] == "ready" and w,
                            300, "the tools model to be back", every=0.5)
    refused = 0
    with open_client(stack) as client:
        # By name, by alias, and by an image part alone (routed to it by structure).
        for model in (VISION, VISION_ALIAS, "auto"):
            body = {**image_chat((0, 0, 200)), **change, "model": model}
            r = client.post(f"{stack.v1}/chat/completions", json=body)
            assert r.status_code == 400, r.text
            assert needle in r.json()["error"]["message"]
            assert r.elapsed.total_seconds() < 0.1, (model, r.elapsed)
            refused += 1
    assert refused == 3
    after = stack.worker(VISION)
    assert after["state"] == "stopped" and after["swapped_in"] == before["swapped_in"]
    tools = stack.worker(TOOLS)
    assert tools["state"] == "ready" and tools["swapped_out"] == tools_before["swapped_out"]


NOT_AN_IMAGE = base64.b64encode(b"not an image").decode()


@pytest.mark.parametrize(("raw", "needle"), [
    (b'{"model": "%s", "messages": [' % VISION.encode(), "not valid JSON"),
    (b'["%s"]' % VISION.encode(), "JSON object"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": 5}]}, "content"),
    ({"messages": [{"role": "user", "content": "hi"}], "options": {"temperature": -1}},
     "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "options": {"top_p": 0}}, "top_p"),
    ({"messages": [{"role": "user", "content": "What is it?", "images": [NOT_AN_IMAGE]}]},
     "image"),
])
def test_an_invalid_ollama_body_to_the_vision_model_costs_nothing(
        stack: Stack, raw: bytes | dict[str, object], needle: str) -> None:
    """The same through Ollama's API, in Ollama's error shape."""
    before = wait_for(lambda: (w := stack.worker(VISION))["state"] == "stopped" and w,
                      VISION_IDLE_S + 120, "the vision model to be unloaded", every=0.5)
    tools_before = wait_for(lambda: (w := stack.worker(TOOLS))["state"] == "ready" and w,
                            300, "the tools model to be back", every=0.5)
    models = [VISION] if isinstance(raw, bytes) else [VISION, VISION_ALIAS]
    refused = 0
    with open_client(stack) as client:
        for model in models:
            content = raw if isinstance(raw, bytes) else \
                json.dumps({**raw, "model": model, "stream": False}).encode()
            r = client.post(f"{stack.url}/api/chat", content=content,
                            headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert needle.lower() in r.json()["error"].lower()
            assert r.elapsed.total_seconds() < 0.1, (model, r.elapsed)
            refused += 1
    assert refused == len(models)
    after = stack.worker(VISION)
    assert after["state"] == "stopped" and after["swapped_in"] == before["swapped_in"]
    tools = stack.worker(TOOLS)
    assert tools["state"] == "ready" and tools["swapped_out"] == tools_before["swapped_out"]
