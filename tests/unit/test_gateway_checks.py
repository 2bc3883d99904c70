"""``Gateway.check_openai``: what is refused before routing loads anything, per endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.errors import BadRequest
from shared import config
from shared import protocol as p


@pytest.fixture(scope="module")
def gw() -> Gateway:
    return Gateway(config.load(profile="cpu"))  # nothing is started


def check(gw: Gateway, endpoint: p.Endpoint, body: dict[str, Any]) -> Any:
    return asyncio.run(gw.check_openai(endpoint, body))


def test_a_completion_ignores_a_stray_messages_field(gw: Gateway) -> None:
    decision, _ = check(gw, p.Endpoint.COMPLETION, {"prompt": "x", "messages": 5})
    assert decision.model == gw.cfg.default_model.name


def test_each_endpoint_routes_to_a_model_that_serves_it(gw: Gateway) -> None:
    assert check(gw, p.Endpoint.EMBEDDINGS, {"input": "x"})[0].model == "all-minilm"
    decision, view = check(gw, p.Endpoint.RESPONSES, {"input": "hi", "tools": [
        {"type": "function", "name": "f", "parameters": {"type": "object"}}]})
    assert decision.reason == "tools" and view["messages"][0]["content"] == "hi"
    with pytest.raises(BadRequest) as err:
        check(gw, p.Endpoint.CHAT, {"model": "all-minilm",
                                    "messages": [{"role": "user", "content": "hi"}]})
    assert err.value.code == "model_not_supported"


def test_the_capability_is_checked_before_any_image(gw: Gateway) -> None:
    """A corrupt image to the embedding model is refused for the model, not the image:
    nothing is decoded (or fetched) for a request that cannot be served."""
    with pytest.raises(BadRequest) as err:
        check(gw, p.Endpoint.CHAT, {"model": "all-minilm", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {
                "url": "data:image/png;base64,AAAA"}}]}]})
    assert err.value.code == "model_not_supported"
