"""The operator's endpoints: ``/health``, ``/metrics``, ``/metrics/prometheus`` and
``POST /admin/models/{name}/reload``, in OpenAI's error shape."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.router import Router
from gateway.openai.errors import openai_error
from gateway.ops.status import StatusView

Reload = Callable[[str, str], Coroutine[Any, Any, bool]]


def ops_routes(status: StatusView, router: Router, reload: Reload,
               spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> list[Route]:
    async def health(request: Request) -> Response:
        h = status.health()
        return JSONResponse(status.health_body(), status_code=h.code)

    async def metrics_json(request: Request) -> Response:
        return JSONResponse(status.metrics_document())

    async def metrics_prometheus(request: Request) -> Response:
        return Response(generate_latest(status.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    async def reload_model(request: Request) -> Response:
        """Unload and load again, even from FAILED."""
        name = request.path_params["name"]
        hit = router.resolve(name)
        if hit is None:
            return openai_error(404, f"no model {name!r}", code="model_not_found")
        slot = status.slots[hit[0]]
        if slot.remote:
            return openai_error(409, f"{slot.name!r} is a remote backend: it comes back "
                                     "by itself when its probes succeed")
        spawn(reload(slot.name, "reload requested by an operator"))
        return JSONResponse({"model": slot.name, "state": slot.state.value,
                             "reloading": True}, status_code=202)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_json, methods=["GET"]),
        Route("/metrics/prometheus", metrics_prometheus, methods=["GET"]),
        Route("/admin/models/{name}/reload", reload_model, methods=["POST"]),
    ]
