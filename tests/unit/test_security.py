from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.edge.security import ApiKeyMiddleware, InsecureBind, check_bind, is_loopback


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = Starlette(routes=[Route(p, ok, methods=["GET", "POST"]) for p in
                            ("/health", "/metrics", "/v1/models", "/api/tags", "/")])
    app.add_middleware(ApiKeyMiddleware, keys=["s3cret", "other"], metrics_open=False)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("path", ["/v1/models", "/api/tags", "/", "/metrics"])
def test_every_endpoint_needs_a_key(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    if path.startswith("/v1/"):
        assert r.json()["error"]["code"] == "invalid_api_key"
    else:
        assert "unauthorized" in r.json()["error"]


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic s3cret", "s3cret", "Bearer "])
def test_wrong_keys_are_refused(client: TestClient, header: str) -> None:
    assert client.get("/v1/models", headers={"Authorization": header}).status_code == 401


@pytest.mark.parametrize("key", ["s3cret", "other"])
def test_any_configured_key_works(client: TestClient, key: str) -> None:
    r = client.get("/api/tags", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.text == "ok"


def test_health_stays_open(client: TestClient) -> None:
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.8.9.1", True),
                                       ("::1", True), ("localhost", True),
                                       ("0.0.0.0", False), ("192.168.1.5", False),
                                       ("::", False), ("example.com", False)])
def test_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_bind_refusal() -> None:
    check_bind("127.0.0.1", [], False)
    check_bind("0.0.0.0", ["k"], False)
    check_bind("0.0.0.0", [], True)
    with pytest.raises(InsecureBind, match="ZOE_VLLM_API_KEYS"):
        check_bind("0.0.0.0", [], False)
