"""workers/supervision/remote.py: an OpenAI backend's SSE stream is passed on one whole
event per chunk
(over an httpx.MockTransport; no server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from shared import config as c
from shared import protocol as p
from workers.supervision.remote import RemoteBackend

URL = "http://desk:8000"
CONFIG = {"server": {"default_model": "fast"},
          "models": [{"name": "fast", "role": "fast", "path": "/m/fast"},
                     {"name": "desk", "role": "general", "backend": "openai", "url": URL,
                      "remote_model": "Qwen/Qwen2.5-7B"}]}

# The Responses API names each event: two lines, then a blank one.
RESPONSES_EVENTS = [
    'event: response.created\ndata: {"type": "response.created", "sequence_number": 0}',
    'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", '
    '"delta": "Hi"}',
    'event: response.completed\ndata: {"type": "response.completed", "sequence_number": 2}',
]
# Chat completions: one `data:` line an event.
CHAT_EVENTS = [
    'data: {"choices": [{"delta": {"role": "assistant"}}]}',
    'data: {"choices": [{"delta": {"content": "Hi"}}]}',
    "data: [DONE]",
]


def pieces(text: str, size: int) -> AsyncIterator[bytes]:
    """``text`` in ``size``-byte pieces: lines and events cut anywhere, as a network does."""
    raw = text.encode()

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), size):
            yield raw[i:i + size]
    return gen()


def run(endpoint: p.Endpoint, sse: str, size: int = 7
        ) -> tuple[list[p.Message], list[httpx.Request]]:
    """Stream ``sse`` from a mock OpenAI server; what the call's queue got, and what the
    server was sent."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=pieces(sse, size))

    async def go() -> list[p.Message]:
        cfg = c.parse(yaml.safe_dump(CONFIG), Path("x.yaml"))
        backend = RemoteBackend(cfg, cfg.model("desk"))
        await backend.client.aclose()
        backend.client = httpx.AsyncClient(transport=httpx.MockTransport(handler),
                                           base_url=URL)
        call = await backend.submit(endpoint, {"input": "hi", "stream": True}, stream=True)
        got: list[p.Message] = []
        try:
            async with asyncio.timeout(10):
                while not got or not isinstance(got[-1], p.Response | p.Error):
                    got.append(await call.next())
        finally:
            backend.release(call)
            await backend.close()
        return got

    return asyncio.run(go()), sent


def chunks(messages: list[p.Message]) -> list[str]:
    assert isinstance(messages[-1], p.Response), messages[-1]
    assert (messages[-1].status, messages[-1].body) == (200, b"")
    assert all(isinstance(m, p.Chunk) for m in messages[:-1])
    return [m.data for m in messages[:-1] if isinstance(m, p.Chunk)]


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_a_responses_event_of_two_lines_is_one_chunk(size: int) -> None:
    sse = "".join(event + "\n\n" for event in RESPONSES_EVENTS)
    messages, sent = run(p.Endpoint.RESPONSES, sse, size)
    assert chunks(messages) == [event + "\n\n" for event in RESPONSES_EVENTS]
    # each chunk is a whole event: its `event:` name and its `data:` together
    for chunk in chunks(messages):
        name, data = chunk.removesuffix("\n\n").split("\n")
        assert json.loads(data.removeprefix("data: "))["type"] == \
            name.removeprefix("event: ")
    (request,) = sent
    assert request.url.path == "/v1/responses"
    assert json.loads(request.content)["model"] == "Qwen/Qwen2.5-7B"


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_a_chat_stream_is_still_one_chunk_per_data_line(size: int) -> None:
    sse = "".join(event + "\n\n" for event in CHAT_EVENTS)
    messages, sent = run(p.Endpoint.CHAT, sse, size)
    assert chunks(messages) == [event + "\n\n" for event in CHAT_EVENTS]
    assert sent[0].url.path == "/v1/chat/completions"


def test_crlf_extra_blank_lines_and_an_unterminated_last_event() -> None:
    # SSE allows \r\n; blank lines between events are no events; a stream that ends
    # without the last blank line still delivers its last event.
    sse = ("\r\n" + RESPONSES_EVENTS[0].replace("\n", "\r\n") + "\r\n\r\n\r\n"
           + RESPONSES_EVENTS[1] + "\n\n\n\n" + RESPONSES_EVENTS[2])
    messages, _ = run(p.Endpoint.RESPONSES, sse)
    assert chunks(messages) == [event + "\n\n" for event in RESPONSES_EVENTS]
