"""The client library against the running stack, through both of its APIs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from shared import client as zc
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = "smollm2-135m-chat"


@pytest.fixture(params=["vllm", "ollama"])
def provider(request: pytest.FixtureRequest, stack: Stack) -> Iterator[zc.Provider]:
    cls = zc.VLLMProvider if request.param == "vllm" else zc.OllamaProvider
    p = cls(url=stack.url, model=CHAT)
    zc.set_provider(p)
    yield p
    zc.set_provider(None)


def test_blocking_chat_and_stream(provider: zc.Provider) -> None:
    assert "Paris" in provider.chat(PARIS, temperature=0, **_limit(provider, 30))
    pieces = list(provider.stream(PARIS, **_limit(provider, 12)))
    assert len(pieces) > 1 and all(isinstance(x, str) for x in pieces)


def test_async_chat_and_stream(provider: zc.Provider) -> None:
    async def run() -> tuple[str, list[str]]:
        text = await provider.achat(PARIS, temperature=0, **_limit(provider, 30))
        pieces = [x async for x in provider.astream(PARIS, **_limit(provider, 12))]
        return text, pieces

    text, pieces = asyncio.run(run())
    assert "Paris" in text and len(pieces) > 1


def test_legacy_functions_use_the_current_provider(provider: zc.Provider) -> None:
    async def run() -> tuple[str, str]:
        direct = await zc.call_ollama_direct("What is the capital of France?", CHAT,
                                             "You answer in one short sentence.")
        stream = await zc.call_ollama_streaming("Say hello.", CHAT)
        return direct, "".join([piece async for piece in stream])

    direct, streamed = asyncio.run(run())
    assert direct.strip() and streamed.strip()
    assert zc.get_provider() is provider


def test_errors_surface_with_the_servers_message(provider: zc.Provider) -> None:
    with pytest.raises(zc.ProviderError, match="HTTP 404"):
        provider.chat(PARIS, model="no-such-model")


def _limit(provider: zc.Provider, tokens: int) -> dict[str, int]:
    return {"max_tokens": tokens} if provider.name == "vllm" else {"num_predict": tokens}
