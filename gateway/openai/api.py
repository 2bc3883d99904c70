"""The OpenAI API (``/v1/*``): a client of the :class:`~gateway.core.service.Service`.

Each endpoint checks the shape of its body here, lets the service route it and refuse
what the model cannot serve, and relays it in OpenAI's format. Mounted as its own app,
so every error under ``/v1`` (an unknown path included) is in OpenAI's shape.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core import capabilities, chat_checks
from gateway.core.errors import BadRequest, Unsupported
from gateway.core.images import ImageError
from gateway.core.router import Decision, UnknownModel
from gateway.core.service import Service
from gateway.openai import embeddings, responses
from gateway.openai.errors import OpenAIFormat, openai_error
from gateway.ops.status import StatusView
from shared import protocol as p

log = logging.getLogger("zoe.gateway")


def unsupported_message(service: Service, exc: Unsupported) -> tuple[str, str, str]:
    """(message, param, code) for a model that cannot serve the request."""
    if exc.tools:
        return (f"model {exc.model!r} does not support tools (function calling); models "
                f"that do: {', '.join(service.tool_models()) or 'none'}", "tools",
                "tools_not_supported")
    return (capabilities.refusal(service.cfg, service.model(exc.model), exc.endpoint),
            "model", "model_not_supported")


class OpenAIApi:
    def __init__(self, service: Service, status: StatusView) -> None:
        self.service = service
        self.status = status

    async def call(self, request: Request, endpoint: p.Endpoint) -> Any:
        try:
            body = await self.service.read_json(request)
            decision, view = await self.check(endpoint, body)
        except BadRequest as exc:
            # A stalled body leaves the connection mid-request: close it, don't keep it alive.
            close = {"connection": "close"} if exc.status == 408 else None
            return openai_error(exc.status, exc.message, param=exc.param, code=exc.code,
                                headers=close)
        except Unsupported as exc:
            message, param, code = unsupported_message(self.service, exc)
            return openai_error(400, message, param=param, code=code)
        except ImageError as exc:
            return openai_error(400, str(exc), param=exc.param, code="invalid_image")
        except UnknownModel as exc:
            return openai_error(
                404, f"The model {exc.name!r} does not exist. Known models and aliases: "
                     f"{', '.join(exc.known)}", param="model", code="model_not_found")
        fmt = responses.ResponsesFormat() if endpoint is p.Endpoint.RESPONSES \
            else OpenAIFormat()
        # An embeddings answer is one JSON body, whatever `stream` says.
        stream = body.get("stream", False) and endpoint is not p.Endpoint.EMBEDDINGS
        return self.service.relay(endpoint, body, stream, decision, fmt, view=view)

    async def check(self, endpoint: p.Endpoint, body: dict[str, Any]
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
            decision = self.service.route_embeddings(model)
            embeddings.check_openai(
                body, max_inputs=self.service.cfg.server.max_embedding_inputs,
                max_model_len=self.service.model(decision.model).max_model_len)
            return decision, body
        view = body
        if endpoint is p.Endpoint.CHAT:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest(400, "`messages` must be a non-empty list of messages",
                                 param="messages")
            chat_checks.check_messages_shape(messages)
        elif endpoint is p.Endpoint.RESPONSES:
            responses.check(body)
            view = responses.chat_view(body)
        elif "prompt" not in body:
            raise BadRequest(400, "`prompt` is required", param="prompt")
        chat_checks.check_sampling(body)
        decision = self.service.route(endpoint, view)
        if endpoint is not p.Endpoint.COMPLETION:
            # Last: decoding (or fetching) images is the dearest check, and a model that
            # cannot serve the request must not make the gateway fetch anything.
            await self.service.check_messages(view["messages"])
            if endpoint is p.Endpoint.RESPONSES:
                responses.restore_image_parts(body)
        return decision, view

    async def chat_completions(self, request: Request) -> Any:
        return await self.call(request, p.Endpoint.CHAT)

    async def completions(self, request: Request) -> Any:
        return await self.call(request, p.Endpoint.COMPLETION)

    async def embeddings(self, request: Request) -> Any:
        return await self.call(request, p.Endpoint.EMBEDDINGS)

    async def responses(self, request: Request) -> Any:
        return await self.call(request, p.Endpoint.RESPONSES)

    async def list_models(self, request: Request) -> Response:
        data = []
        for name, slot in self.status.slots.items():
            m = slot.model
            data.append({"id": name, "object": "model", "created": int(self.status.started),
                         "owned_by": "zoe-vllm", "max_model_len": m.max_model_len,
                         "zoe": {"role": m.role.value, "aliases": m.aliases,
                                 "state": slot.state.value, "on_demand": m.on_demand,
                                 "description": m.description}})
        return JSONResponse({"object": "list", "data": data})


async def not_found(request: Request, exc: Exception) -> Response:
    return openai_error(404, f"no route for {request.method} {request.url.path}")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    return openai_error(405, f"method {request.method} is not allowed on {request.url.path}")


async def internal_error(request: Request, exc: Exception) -> Response:
    # A bug must still answer in the API's shape (Starlette's default is plain text).
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return openai_error(500, "internal server error", type="server_error")


ERROR_HANDLERS: dict[Any, Any] = {404: not_found, 405: method_not_allowed,
                                  Exception: internal_error}


def openai_app(service: Service, status: StatusView) -> Starlette:
    api = OpenAIApi(service, status)
    return Starlette(routes=[
        Route("/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/completions", api.completions, methods=["POST"]),
        Route("/embeddings", api.embeddings, methods=["POST"]),
        Route("/responses", api.responses, methods=["POST"]),
        Route("/models", api.list_models, methods=["GET"]),
    ], exception_handlers=ERROR_HANDLERS)
