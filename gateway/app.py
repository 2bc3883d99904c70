"""The composition root: builds the server from its parts; nothing imports it but the CLI.

The supervisor owns the models (their slots, processes and eviction). The
:class:`~gateway.core.service.Service` is the one request path both APIs use. The
:class:`~gateway.ops.status.StatusView` is the one read-only view that health, metrics
and ``/api/ps`` are written from. The OpenAI API is mounted at ``/v1``, Ollama's at
``/api``, each with its own error shape; the edge (API keys, header limits) wraps all.
The gateway never imports vLLM or torch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from gateway.core.service import Service
from gateway.edge.http_limits import HeaderLimitMiddleware
from gateway.edge.security import ApiKeyMiddleware, load_keys
from gateway.ollama.api import ollama_app, root
from gateway.openai import api as openai_api
from gateway.openai.openapi import openapi_json
from gateway.ops.collector import GatewayCollector
from gateway.ops.hardware import HardwareMonitor
from gateway.ops.metrics import Metrics
from gateway.ops.routes import ops_routes
from gateway.ops.status import StatusView
from shared.config import LoadedConfig
from workers.supervision.supervisor import Supervisor

log = logging.getLogger("zoe.gateway")


def build_app(cfg: LoadedConfig, supervisor: Supervisor | None = None,
              hardware: HardwareMonitor | None = None) -> Starlette:
    sup = supervisor or Supervisor(cfg)
    metrics = Metrics(models=[m.name for m in cfg.models])
    service = Service(cfg, sup, metrics)
    status = StatusView(cfg, sup.slots, metrics, hardware)
    metrics.registry.register(GatewayCollector(status))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        status.hardware.start()
        await sup.start()
        try:
            yield
        finally:
            await sup.close()
            status.hardware.stop()

    async def internal_error(request: Request, exc: Exception) -> Response:
        # A bug must still answer in the API's shape (Starlette's default is plain text).
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        if request.url.path.startswith("/api/"):  # Ollama's error shape
            return JSONResponse({"error": "internal server error"}, status_code=500)
        return await openai_api.internal_error(request, exc)

    routes = [
        Mount("/v1", app=openai_api.openai_app(service, status)),
        Mount("/api", app=ollama_app(service, status)),
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *ops_routes(status, service.router, sup.reload, sup.spawn_task),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={**openai_api.ERROR_HANDLERS, Exception: internal_error})
    app.state.supervisor = sup
    app.state.status = status
    keys = load_keys(cfg)
    if keys:
        app.add_middleware(ApiKeyMiddleware, keys=keys, metrics_open=cfg.server.metrics_open)
    # Added last, so outermost: oversized headers are refused before anything reads them.
    app.add_middleware(HeaderLimitMiddleware, max_bytes=cfg.server.max_header_bytes)
    return app
