"""The Starlette application: OpenAI endpoints, health and metrics.

One ``lifespan`` starts the supervisor (which starts the workers) and stops
everything on shutdown. The gateway never imports vLLM or torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import (
    capabilities,
    chat_checks,
    embeddings,
    errors,
    observability,
    responses_api,
)
from gateway.admission import Admission
from gateway.errors import BadRequest
from gateway.formats import Format, OpenAIFormat
from gateway.http_limits import HeaderLimitMiddleware
from gateway.images import ImageError, ImageLimits, check_images
from gateway.metrics import Metrics
from gateway.openapi import openapi_json
from gateway.relay import Relay
from gateway.router import AUTO_NAMES, Decision, Router, UnknownModel
from gateway.security import ApiKeyMiddleware, load_keys
from shared import protocol as p
from shared.config import Backend, LoadedConfig, Role, fallback_chain
from workers.lifecycle import State
from workers.supervisor import Supervisor

log = logging.getLogger("zoe.gateway")


def wants_tools(body: dict[str, Any]) -> bool:
    tools = body.get("tools")
    return isinstance(tools, list) and bool(tools) and body.get("tool_choice") != "none"


class Gateway:
    def __init__(self, cfg: LoadedConfig, supervisor: Supervisor | None = None) -> None:
        self.cfg = cfg
        self.sup = supervisor or Supervisor(cfg)
        self.router = Router(cfg)
        self.metrics = Metrics(models=[m.name for m in cfg.models])
        srv = cfg.server
        self.image_limits = ImageLimits(
            max_images=srv.max_images, max_bytes=srv.max_image_bytes,
            max_pixels=srv.max_image_pixels,
            allowlist=frozenset(h.lower() for h in srv.image_url_allowlist),
            fetch_timeout_s=srv.image_fetch_timeout_s)
        self.admission = {m.name: Admission(m.max_num_seqs, m.max_queued,
                                            cfg.server.queue_timeout_s) for m in cfg.models}
        self.started = time.time()
        self.observability = observability.Observability(self)

    # ----- helpers for the request path --------------------------------------
    async def read_json(self, request: Request) -> dict[str, Any]:
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

    async def ensure_ready(self, model: str) -> bool:
        w = self.sup.workers[model]
        if w.state is State.READY:
            return True
        if w.state is State.FAILED or model in self.sup.backends.remotes:
            return False  # a remote that is down is skipped until its probes recover
        if (w.model.on_demand or w.info.unloaded) and w.state is State.STOPPED:
            self.sup.request_load(model)
        bound = w.model.request_wait_s or self.cfg.config.supervisor.request_wait_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w.ready.wait(), bound)
            return True
        return False

    def can_call_tools(self, model: str) -> bool:
        """A local model calls tools only with a parser; a remote backend decides for itself."""
        m = self.cfg.model(model)
        return m.backend is not Backend.VLLM or m.tool_call_parser is not None

    def tool_models(self) -> list[str]:
        return [m.name for m in self.cfg.models if self.can_call_tools(m.name)]

    def serves_tools(self, body: dict[str, Any], model: str) -> bool:
        """False where ``body`` offers tools to a model that cannot call them: refused
        before anything is loaded or queued, in the client's words, not vLLM's flags."""
        return not wants_tools(body) or self.can_call_tools(model)

    def on_oom(self, model: str) -> None:
        log.error("worker %s ran out of memory: unloading and reloading it", model)
        self.sup.spawn_task(self.sup.restart_worker(model, "out of memory", 2.0))

    async def check_messages(self, messages: list[Any]) -> None:
        """Limits every API applies to OpenAI-shaped messages (BadRequest, ImageError)."""
        limit = self.cfg.server.max_messages
        if len(messages) > limit:
            raise BadRequest(400, f"{len(messages)} messages; the limit is {limit} "
                                  "(server.max_messages)", param="messages")
        await check_images(messages, self.image_limits)

    async def openai_call(self, request: Request, endpoint: p.Endpoint) -> Any:
        try:
            body = await self.read_json(request)
            decision, view = await self.check_openai(endpoint, body)
        except BadRequest as exc:
            # A stalled body leaves the connection mid-request: close it, don't keep it alive.
            close = {"connection": "close"} if exc.status == 408 else None
            return errors.openai_error(exc.status, exc.message, param=exc.param, code=exc.code,
                                       headers=close)
        except ImageError as exc:
            return errors.openai_error(400, str(exc), param=exc.param, code="invalid_image")
        except UnknownModel as exc:
            return errors.openai_error(
                404, f"The model {exc.name!r} does not exist. Known models and aliases: "
                     f"{', '.join(exc.known)}", param="model", code="model_not_found")
        fmt = responses_api.ResponsesFormat() if endpoint is p.Endpoint.RESPONSES else None
        # An embeddings answer is one JSON body, whatever `stream` says.
        stream = body.get("stream", False) and endpoint is not p.Endpoint.EMBEDDINGS
        return self.relay(endpoint, body, stream, decision, fmt=fmt, view=view)

    async def check_openai(self, endpoint: p.Endpoint, body: dict[str, Any]
                           ) -> tuple[Decision, dict[str, Any]]:
        """Everything that can be refused before a model is loaded or a slot taken; the
        routing decision for the rest, and the body as routing saw it (a Responses
        request's chat view)."""
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise BadRequest(400, "`model` must be a string", param="model")
        if not isinstance(body.get("stream", False), bool):
            raise BadRequest(400, "`stream` must be true or false", param="stream")
        if endpoint is p.Endpoint.EMBEDDINGS:
            decision = self.route_embeddings(model)
            embeddings.check_openai(
                body, max_inputs=self.cfg.server.max_embedding_inputs,
                max_model_len=self.cfg.model(decision.model).max_model_len)
            return decision, body
        view = body
        if endpoint is p.Endpoint.CHAT:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest(400, "`messages` must be a non-empty list of messages",
                                 param="messages")
            chat_checks.check_messages_shape(messages)
        elif endpoint is p.Endpoint.RESPONSES:
            responses_api.check(body)
            view = responses_api.chat_view(body)
        elif "prompt" not in body:
            raise BadRequest(400, "`prompt` is required", param="prompt")
        chat_checks.check_sampling(body)
        decision = self.router.route(view)
        self.check_serves(decision.model, endpoint)
        if not self.serves_tools(view, decision.model):
            raise BadRequest(
                400, f"model {decision.model!r} does not support tools (function "
                     f"calling); models that do: {', '.join(self.tool_models()) or 'none'}",
                param="tools", code="tools_not_supported")
        if endpoint is not p.Endpoint.COMPLETION:
            # Last: decoding (or fetching) images is the dearest check, and a model that
            # cannot serve the request must not make the gateway fetch anything.
            await self.check_messages(view["messages"])
            if endpoint is p.Endpoint.RESPONSES:
                responses_api.restore_image_parts(body)
        return decision, view

    def check_serves(self, model: str, endpoint: p.Endpoint) -> None:
        m = self.cfg.model(model)
        if not capabilities.serves(m, endpoint):
            raise BadRequest(400, capabilities.refusal(self.cfg, m, endpoint), param="model",
                             code="model_not_supported")

    def route_embeddings(self, requested: str | None) -> Decision:
        """The named model (which must embed), or the embedding model when none is named."""
        if requested is None or requested.strip().lower() in AUTO_NAMES:
            names = capabilities.models_serving(self.cfg, p.Endpoint.EMBEDDINGS)
            if not names:
                raise BadRequest(400, "this server has no embedding model (add one with "
                                      "`role: embedding` to the configuration)",
                                 param="model", code="model_not_supported")
            embedder = self.cfg.by_role(Role.EMBEDDING)
            return Decision(embedder.name if embedder else names[0], "default")
        decision = self.router.route({"model": requested})
        self.check_serves(decision.model, p.Endpoint.EMBEDDINGS)
        return decision

    def relay(self, endpoint: p.Endpoint, body: dict[str, Any], stream: bool,
              decision: Decision, fmt: Format | None = None,
              view: dict[str, Any] | None = None) -> Relay:
        """The ASGI app that serves a routed OpenAI-shaped ``body`` in format ``fmt``;
        ``view`` is the body as routing saw it, when that differs."""
        self.metrics.routed(decision.model, decision.reason)
        # A fallback that cannot serve the request would only fail it again.
        chain = [decision.model, *(m for m in fallback_chain(self.cfg.config, decision.model)
                                   if self.serves_tools(view or body, m)
                                   and capabilities.serves(self.cfg.model(m), endpoint))]
        return Relay(backends=self.sup.backends, admission=self.admission,
                     metrics=self.metrics,
                     ensure_ready=self.ensure_ready, on_oom=self.on_oom, endpoint=endpoint,
                     body=body, stream=stream, models=chain, reason=decision.reason,
                     format=fmt or OpenAIFormat())

    # ----- endpoints ---------------------------------------------------------
    async def chat_completions(self, request: Request) -> Any:
        return await self.openai_call(request, p.Endpoint.CHAT)

    async def completions(self, request: Request) -> Any:
        return await self.openai_call(request, p.Endpoint.COMPLETION)

    async def embeddings(self, request: Request) -> Any:
        return await self.openai_call(request, p.Endpoint.EMBEDDINGS)

    async def responses(self, request: Request) -> Any:
        return await self.openai_call(request, p.Endpoint.RESPONSES)

    async def list_models(self, request: Request) -> Response:
        data = []
        for m in self.cfg.models:
            w = self.sup.workers[m.name]
            data.append({"id": m.name, "object": "model", "created": int(self.started),
                         "owned_by": "zoe-vllm", "max_model_len": m.max_model_len,
                         "zoe": {"role": m.role.value, "aliases": m.aliases,
                                 "state": w.state.value, "on_demand": m.on_demand,
                                 "description": m.description}})
        return JSONResponse({"object": "list", "data": data})

    def worker_status(self) -> dict[str, Any]:
        out = {}
        for name, w in self.sup.workers.items():
            i = w.info
            out[name] = {"state": i.state.value, "role": w.model.role.value, "pid": i.pid,
                         "stage": i.stage, "detail": i.detail, "restarts": i.restarts,
                         "failures": i.probe_failures, "last_error": i.last_error or None,
                         "on_demand": w.model.on_demand,
                         "active_requests": self.sup.backends.active(name),
                         "queued": self.admission[name].queued,
                         "crashes": i.crashes, "swapped_in": i.swapped_in,
                         "swapped_out": i.swapped_out,
                         "probes": {"total": i.probes_total, "failed": i.probe_failures_total,
                                    "last_at": i.last_probe_at, "last_ok": i.last_probe_ok,
                                    "last_seconds": i.last_probe_seconds},
                         "engine": None if i.stats is None else {
                             "running": i.stats.running, "waiting": i.stats.waiting,
                             "kv_cache_usage": i.stats.kv_cache_usage,
                             "prefix_cache_hit_rate": i.stats.prefix_cache_hit_rate,
                             "worker_requests": i.stats.active_requests}}
        return out

    async def reload_model(self, request: Request) -> Response:
        """``POST /admin/models/{name}/reload``: unload and load again, even from FAILED."""
        name = request.path_params["name"]
        hit = self.router.resolve(name)
        if hit is None:
            return errors.openai_error(404, f"no model {name!r}", code="model_not_found")
        model = hit[0]
        if model in self.sup.backends.remotes:
            return errors.openai_error(409, f"{model!r} is a remote backend: it comes back "
                                            "by itself when its probes succeed")
        self.sup.spawn_task(self.sup.reload(model, "reload requested by an operator"))
        return JSONResponse({"model": model, "state": self.sup.workers[model].state.value,
                             "reloading": True}, status_code=202)

    async def health(self, request: Request) -> Response:
        default = self.cfg.default_model.name
        w = self.sup.workers[default]
        # Unloaded on a client's request (Ollama keep_alive) is healthy: the
        # next request loads it again.
        ok = w.state is State.READY or (w.info.unloaded and w.state is State.STOPPED)
        body = {"status": "ok" if ok else "loading", "default_model": default,
                "uptime_s": round(time.time() - self.started, 1),
                "workers": self.worker_status()}
        if any(w.state is State.FAILED for w in self.sup.workers.values()):
            body["status"] = "degraded" if ok else "failed"
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_json(self, request: Request) -> Response:
        return await observability.metrics_json(self, request)

    async def metrics_prometheus(self, request: Request) -> Response:
        return await observability.metrics_prometheus(self, request)


def build_app(cfg: LoadedConfig, gateway: Gateway | None = None) -> Starlette:
    gw = gateway or Gateway(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw.observability.start()
        await gw.sup.start()
        try:
            yield
        finally:
            await gw.sup.close()
            gw.observability.stop()

    async def not_found(request: Request, exc: Exception) -> Response:
        return errors.openai_error(404, f"no route for {request.method} {request.url.path}")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return errors.openai_error(405, f"method {request.method} is not allowed on "
                                        f"{request.url.path}")

    async def internal_error(request: Request, exc: Exception) -> Response:
        # A bug must still answer in the API's shape (Starlette's default is plain text).
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        if request.url.path.startswith("/api/"):  # Ollama's error shape
            return JSONResponse({"error": "internal server error"}, status_code=500)
        return errors.openai_error(500, "internal server error", type="server_error")

    routes = [
        Route("/v1/chat/completions", gw.chat_completions, methods=["POST"]),
        Route("/v1/completions", gw.completions, methods=["POST"]),
        Route("/v1/embeddings", gw.embeddings, methods=["POST"]),
        Route("/v1/responses", gw.responses, methods=["POST"]),
        Route("/v1/models", gw.list_models, methods=["GET"]),
        Route("/health", gw.health, methods=["GET"]),
        Route("/admin/models/{name}/reload", gw.reload_model, methods=["POST"]),
        Route("/metrics", gw.metrics_json, methods=["GET"]),
        Route("/metrics/prometheus", gw.metrics_prometheus, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]
    from gateway.ollama_api import ollama_routes  # imports this module: import here

    routes += ollama_routes(gw)
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: method_not_allowed,
                                        Exception: internal_error})
    app.state.gateway = gw
    keys = load_keys(cfg)
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys, metrics_open=cfg.server.metrics_open)
    # Added last, so outermost: oversized headers are refused before anything reads them.
    app.add_middleware(HeaderLimitMiddleware, max_bytes=cfg.server.max_header_bytes)
    return app
