"""API keys and exposure: who may call, and where the server may listen."""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import msgspec

from gateway.openai import errors
from shared.config import LoadedConfig

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
KEYS_ENV = "ZOE_VLLM_API_KEYS"

OPEN_PATHS = frozenset({"/health"})
METRICS_PATHS = frozenset({"/metrics", "/metrics/prometheus"})


class InsecureBind(RuntimeError):
    pass


def load_keys(cfg: LoadedConfig) -> list[str]:
    """Keys from the config, ``ZOE_VLLM_API_KEYS`` (comma-separated) and a keys file."""
    keys = list(cfg.server.api_keys)
    keys += [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    if cfg.server.api_keys_file:
        path = cfg.expand(cfg.server.api_keys_file)
        keys += [line.strip() for line in Path(path).read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: list[str], allow_unauthenticated: bool) -> None:
    """Refuse to listen beyond this machine with no key, unless told to."""
    if is_loopback(host) or keys or allow_unauthenticated:
        return
    raise InsecureBind(
        f"refusing to listen on {host} without an API key: anyone on the network could "
        f"use the models. Set {KEYS_ENV} (or server.api_keys / server.api_keys_file), or "
        "pass --allow-unauthenticated (server.allow_unauthenticated: true) if this network "
        "is trusted.")


class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` on every path but /health (and /metrics if open)."""

    def __init__(self, app: ASGIApp, keys: list[str], metrics_open: bool) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open = OPEN_PATHS | (METRICS_PATHS if metrics_open else frozenset())

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open:
            await self.app(scope, receive, send)
            return
        if self._authorized(scope):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/v1/"):
            body = errors.openai_error_body(401, "missing or invalid API key: send "
                                            "`Authorization: Bearer <key>`", code="invalid_api_key")
        else:
            body = msgspec.json.encode({"error": "unauthorized: missing or invalid API key"})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                token = token.strip()
                # compare_digest against every key: timing does not reveal which matched.
                return any([hmac.compare_digest(token, k) for k in self.keys])
        return False
