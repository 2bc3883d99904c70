"""The one path both APIs take: validate → route → admit → ensure ready → relay → fall back.

Each API (``gateway.openai``, ``gateway.ollama``) checks the shape of its own body and
writes answers in its own shape; everything between is here. What a request would be
refused for is found before anything is loaded, swapped or queued: routing, what the
model serves, tools, message limits and images (dearest, so last). The relay then admits
the request, has the supervisor make the model ready, and falls back down the chain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgspec
from starlette.requests import Request

from gateway.core import capabilities
from gateway.core.errors import BadRequest, Unsupported
from gateway.core.formats import Format
from gateway.core.images import ImageLimits, check_images
from gateway.core.relay import Models, Relay
from gateway.core.router import AUTO_NAMES, Decision, Router, RouteReason
from gateway.ops.metrics import Metrics
from shared import protocol as p
from shared.config import Backend, LoadedConfig, ModelConfig, Role, fallback_chain
from workers.supervision.slot import ModelSlot


def wants_tools(body: dict[str, Any]) -> bool:
    tools = body.get("tools")
    return isinstance(tools, list) and bool(tools) and body.get("tool_choice") != "none"


class Pool(Models, Protocol):
    """The relay's needs, plus the client-driven load and unload (the supervisor)."""

    async def unload(self, name: str, reason: str) -> None:
        """Unload ``name`` for a client; its next request loads it again."""

    def keep_alive(self, name: str, seconds: float | None) -> None:
        """Apply a request's keep_alive to ``name``."""


class Service:
    def __init__(self, cfg: LoadedConfig, pool: Pool, metrics: Metrics) -> None:
        self.cfg = cfg
        self.pool = pool
        self.metrics = metrics
        self.router = Router(cfg)
        srv = cfg.server
        self.image_limits = ImageLimits(
            max_images=srv.max_images, max_bytes=srv.max_image_bytes,
            max_pixels=srv.max_image_pixels,
            allowlist=frozenset(h.lower() for h in srv.image_url_allowlist),
            fetch_timeout_s=srv.image_fetch_timeout_s)

    @property
    def slots(self) -> Mapping[str, ModelSlot]:
        return self.pool.slots

    # ----- validate ----------------------------------------------------------
    async def read_json(self, request: Request) -> dict[str, Any]:
        """The request's JSON object, within the body size and time limits."""
        limit = self.cfg.server.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"request body exceeds {limit} bytes "
                                  "(server.max_body_bytes)")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.cfg.server.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise BadRequest(413, f"request body exceeds {limit} bytes "
                                              "(server.max_body_bytes)")
                    chunks.append(chunk)
        except TimeoutError:
            raise BadRequest(408, "the request body did not arrive within "
                                  f"{self.cfg.server.body_timeout_s:.0f}s "
                                  "(server.body_timeout_s)") from None
        raw = b"".join(chunks)
        if not raw.strip():
            raise BadRequest(400, "request body is empty; send a JSON object")
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise BadRequest(400, f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequest(400, "request body must be a JSON object")
        return body

    async def check_messages(self, messages: list[Any]) -> None:
        """Limits every API applies to OpenAI-shaped messages (BadRequest, ImageError)."""
        limit = self.cfg.server.max_messages
        if len(messages) > limit:
            raise BadRequest(400, f"{len(messages)} messages; the limit is {limit} "
                                  "(server.max_messages)", param="messages")
        await check_images(messages, self.image_limits)

    # ----- route -------------------------------------------------------------
    def model(self, name: str) -> ModelConfig:
        return self.cfg.model(name)

    def resolve(self, name: str) -> tuple[str, RouteReason] | None:
        return self.router.resolve(name)

    def can_call_tools(self, model: str) -> bool:
        """A local model calls tools only with a parser; a remote backend decides for itself."""
        m = self.cfg.model(model)
        return m.backend is not Backend.VLLM or m.tool_call_parser is not None

    def tool_models(self) -> list[str]:
        return [m.name for m in self.cfg.models if self.can_call_tools(m.name)]

    def serves(self, body: dict[str, Any], model: str, endpoint: p.Endpoint) -> bool:
        """Whether ``model`` can serve ``body`` on ``endpoint`` (tools included)."""
        return capabilities.serves(self.cfg.model(model), endpoint) and \
            (not wants_tools(body) or self.can_call_tools(model))

    def route(self, endpoint: p.Endpoint, view: dict[str, Any]) -> Decision:
        """The model for an OpenAI-shaped ``view``; raises UnknownModel, or Unsupported
        when that model cannot serve it (before anything is loaded or queued)."""
        decision = self.router.route(view)
        self.check_serves(decision.model, endpoint)
        if wants_tools(view) and not self.can_call_tools(decision.model):
            raise Unsupported(decision.model, endpoint, tools=True)
        return decision

    def check_serves(self, model: str, endpoint: p.Endpoint) -> None:
        if not capabilities.serves(self.cfg.model(model), endpoint):
            raise Unsupported(model, endpoint)

    def route_embeddings(self, requested: str | None) -> Decision:
        """The named model (which must embed), or the embedding model when none is named."""
        if requested is None or requested.strip().lower() in AUTO_NAMES:
            names = capabilities.models_serving(self.cfg, p.Endpoint.EMBEDDINGS)
            if not names:
                raise BadRequest(400, "this server has no embedding model (add one with "
                                      "`role: embedding` to the configuration)",
                                 param="model", code="model_not_supported")
            embedder = self.cfg.by_role(Role.EMBEDDING)
            return Decision(embedder.name if embedder else names[0], RouteReason.DEFAULT)
        decision = self.router.route({"model": requested})
        self.check_serves(decision.model, p.Endpoint.EMBEDDINGS)
        return decision

    # ----- admit, ensure ready, relay, fall back ------------------------------
    def relay(self, endpoint: p.Endpoint, body: dict[str, Any], stream: bool,
              decision: Decision, fmt: Format, view: dict[str, Any] | None = None,
              on_answered: Callable[[], None] | None = None) -> Relay:
        """The ASGI app that serves a routed OpenAI-shaped ``body`` in format ``fmt``;
        ``view`` is the body as routing saw it, when that differs."""
        self.metrics.routed(decision.model, decision.label)
        # A fallback that cannot serve the request would only fail it again.
        chain = [decision.model, *(m for m in fallback_chain(self.cfg.config, decision.model)
                                   if self.serves(view or body, m, endpoint))]
        return Relay(pool=self.pool, metrics=self.metrics, endpoint=endpoint, body=body,
                     stream=stream, models=chain, decision=decision, format=fmt,
                     on_answered=on_answered)

    # ----- load and unload on a client's request (Ollama) ----------------------
    async def load(self, model: str) -> bool:
        """Load ``model`` and wait for the whole load."""
        return await self.pool.ensure_ready(model, whole_load=True)

    async def unload(self, model: str, reason: str) -> None:
        await self.pool.unload(model, reason)

    def keep_alive(self, model: str, seconds: float | None) -> None:
        self.pool.keep_alive(model, seconds)
