"""Ollama's native API (``/api/*``), so Ollama clients keep working unchanged.

A chat or generate request becomes the OpenAI body vLLM understands
(:mod:`gateway.ollama.translate`) and takes the same path as an OpenAI
request through the same :class:`~gateway.core.service.Service` — the same checks,
router, admission, fallback chain and metrics — with :class:`OllamaFormat` writing
the answer. Mounted as its own app: every error under ``/api`` is Ollama's
``{"error": "..."}`` with its status codes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core import capabilities, chat_checks
from gateway.core.errors import BadRequest, Unsupported
from gateway.core.router import Decision, RouteReason, UnknownModel
from gateway.core.service import Service
from gateway.ollama import embed
from gateway.ollama.catalog import Catalog, tagged
from gateway.ollama.embed import EmbedKind
from gateway.ollama.format import Kind, OllamaFormat, control_answer, ollama_error_body
from gateway.ollama.keep_alive import FOREVER_SPAN, parse_keep_alive
from gateway.ollama.translate import (
    ChatRequest,
    GenerateRequest,
    chat_body,
    decode,
    generate_body,
)
from gateway.openai import embeddings as openai_embeddings
from gateway.ops.status import StatusView
from shared import protocol as p
from shared.config import Backend, ModelConfig, fallback_chain
from shared.process_tree import tree_rss

log = logging.getLogger("zoe.gateway")

# The Ollama release whose API this mirrors: clients gate features (tools,
# structured outputs, thinking) on the version they are told.
OLLAMA_VERSION = "0.12.6"
READ_ONLY = {"/api/create": "creating", "/api/copy": "copying", "/api/delete": "deleting",
             "/api/push": "pushing", "/api/blobs": "uploading"}


class OllamaError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def error(status: int, message: str) -> Response:
    return Response(ollama_error_body(message), status_code=status,
                    media_type="application/json")


def ok(body: Any) -> Response:
    return ok_raw(msgspec.json.encode(body))


def ok_raw(body: bytes) -> Response:
    return Response(body, media_type="application/json; charset=utf-8")


def not_found(name: str) -> OllamaError:
    return OllamaError(404, f'model "{name}" not found, try pulling it first')


class OllamaApi:
    def __init__(self, service: Service, status: StatusView) -> None:
        self.service = service
        self.status = status
        self.catalog = Catalog(service.cfg, status.started)

    # ----- helpers ----------------------------------------------------------
    async def body(self, request: Request) -> dict[str, Any]:
        try:
            return await self.service.read_json(request)
        except BadRequest as exc:
            raise OllamaError(exc.status, exc.message) from None

    def model(self, name: object) -> ModelConfig:
        if not isinstance(name, str) or not name.strip():
            raise OllamaError(400, "model is required")
        hit = self.service.resolve(name)
        if hit is None:
            raise not_found(name)
        return self.service.model(hit[0])

    def context_length(self, m: ModelConfig) -> int:
        return self.service.slots[m.name].info.max_model_len or m.max_model_len

    def expires_at(self, name: str) -> datetime:
        """When ``name`` unloads if nothing uses it (far in the future: never)."""
        left = self.service.slots[name].expires_in()
        now = datetime.now(UTC)
        return now + (FOREVER_SPAN if math.isinf(left) else timedelta(seconds=left))

    def clamp_max_tokens(self, body: dict[str, Any], model: str) -> None:
        """Ollama's num_predict is a cap (generation also ends with the context);
        vLLM refuses a max_tokens above max_model_len, so cap it there, for every
        model the request may fall back to."""
        if "max_tokens" not in body:
            return
        chain = [model, *fallback_chain(self.service.cfg.config, model)]
        body["max_tokens"] = min(body["max_tokens"],
                                 *(self.context_length(self.service.model(n)) for n in chain))

    # ----- chat and generate -------------------------------------------------
    async def chat(self, request: Request) -> Any:
        return await self.serve(request, "chat")

    async def generate(self, request: Request) -> Any:
        return await self.serve(request, "generate")

    async def serve(self, request: Request, kind: Kind) -> Any:
        try:
            raw = await self.body(request)
            req = decode(raw, ChatRequest if kind == "chat" else GenerateRequest)
            keep_s = parse_keep_alive(req.keep_alive)
            if not req.model.strip():
                raise OllamaError(400, "model is required")
            if isinstance(req, ChatRequest):
                if not req.messages:
                    return await self.load_or_unload(req.model, kind, keep_s)
                endpoint, body = p.Endpoint.CHAT, chat_body(req)
            else:
                if not req.prompt and not req.images:
                    return await self.load_or_unload(req.model, kind, keep_s)
                endpoint, body = generate_body(req)
            if endpoint is p.Endpoint.CHAT:
                chat_checks.check_messages_shape(body["messages"])
            chat_checks.check_sampling(body)
            decision = self.service.route(endpoint, body)
            if endpoint is p.Endpoint.CHAT:  # last: images are the dearest check
                await self.service.check_messages(body["messages"])
            self.clamp_max_tokens(body, decision.model)
        except (OllamaError, BadRequest) as exc:
            return error(exc.status, exc.message)
        except Unsupported as exc:
            return error(400, f"{json.dumps(req.model)} does not support "
                              f"{'tools' if exc.tools else kind}")
        except ValueError as exc:  # TranslateError, ImageError, a bad keep_alive
            return error(400, str(exc))
        except UnknownModel as exc:
            return error(404, not_found(exc.name).message)
        fmt = OllamaFormat(model=req.model, kind=kind, stream=req.stream)
        return self.service.relay(endpoint, body, True, decision, fmt,
                                  on_answered=self.keeping(decision.model, keep_s))

    def keeping(self, model: str, keep_s: float | None) -> Any:
        """The hook that applies a request's keep_alive to ``model`` once it is answered."""
        return lambda: self.service.keep_alive(model, keep_s)

    async def load_or_unload(self, name: str, kind: Kind, keep_s: float | None) -> Response:
        """An empty chat/generate loads the model, or with keep_alive 0 unloads it."""
        t0 = time.perf_counter_ns()
        m = self.model(name)
        endpoint = p.Endpoint.CHAT if kind == "chat" else p.Endpoint.COMPLETION
        if not capabilities.serves(m, endpoint):
            raise OllamaError(400, f"{json.dumps(name)} does not support {kind}")
        if keep_s == 0:
            await self.service.unload(m.name, "unloaded by a client (keep_alive 0)")
            total = time.perf_counter_ns() - t0
            return Response(control_answer(model=name, kind=kind, reason="unload",
                                           total_ns=total, load_ns=0),
                            media_type="application/json; charset=utf-8")
        if not await self.service.load(m.name):
            w = self.service.slots[m.name]
            raise OllamaError(503, f'model "{name}" could not be loaded ({w.state.value}'
                                   f'{": " + w.info.last_error if w.info.last_error else ""})')
        self.service.keep_alive(m.name, keep_s)
        total = time.perf_counter_ns() - t0
        return Response(control_answer(model=name, kind=kind, reason="load", total_ns=total,
                                       load_ns=total),
                        media_type="application/json; charset=utf-8")

    # ----- models --------------------------------------------------------------
    async def tags(self, request: Request) -> Response:
        return ok({"models": self.catalog.tags()})

    async def show(self, request: Request) -> Response:
        try:
            raw = await self.body(request)
            name = raw.get("model") or raw.get("name")
            m = self.model(name)
        except OllamaError as exc:
            return error(exc.status, exc.message)
        return ok(self.catalog.show(m, self.context_length(m)))

    async def ps(self, request: Request) -> Response:
        models = []
        for w in self.status.loaded():
            m = w.model
            rss = tree_rss(w.info.pid) or 0
            f = self.catalog.facts(m)
            models.append({"name": tagged(m.name), "model": tagged(m.name), "size": rss,
                           "digest": f.digest, "details": self.catalog.details(m),
                           "expires_at": self.expires_at(m.name).isoformat()
                           .replace("+00:00", "Z"),
                           "size_vram": rss, "context_length": self.context_length(m)})
        return ok({"models": models})

    async def pull(self, request: Request) -> Response:
        """Models come from the configuration: pulling one that is configured succeeds."""
        try:
            raw = await self.body(request)
            name = raw.get("model") or raw.get("name")
            if not isinstance(name, str) or not name.strip():
                raise OllamaError(400, "model is required")
            if self.service.resolve(name) is None:
                known = ", ".join(tagged(n) for n in self.service.router.known_names())
                raise OllamaError(404, f'pull model manifest: model "{name}" is not '
                                       f"configured on this server (it serves: {known})")
        except OllamaError as exc:
            return error(exc.status, exc.message)
        if raw.get("stream", True) is False:
            return ok({"status": "success"})
        lines = [{"status": "pulling manifest"}, {"status": "success"}]
        return Response(b"".join(msgspec.json.encode(x) + b"\n" for x in lines),
                        media_type="application/x-ndjson")

    async def embed(self, request: Request) -> Any:
        return await self.embed_as(request, "embed")

    async def embeddings(self, request: Request) -> Any:
        return await self.embed_as(request, "embeddings")

    async def embed_as(self, request: Request, kind: EmbedKind) -> Any:
        """``/api/embed`` and the legacy ``/api/embeddings``: the OpenAI embeddings path,
        answered in Ollama's shape. No input loads the model and embeds nothing."""
        try:
            raw = await self.body(request)
            req = embed.decode_ollama(raw, kind)
            keep_s = parse_keep_alive(req.keep_alive)
            m = self.model(req.model)
            if not capabilities.serves(m, p.Endpoint.EMBEDDINGS):
                raise OllamaError(400, f"{json.dumps(req.model)} does not support embeddings")
            fmt = embed.OllamaEmbedFormat(
                model=req.model, kind=kind,
                dimensions=req.dimensions if isinstance(req, embed.EmbedRequest) else None)
            if not embed.ollama_inputs(req):
                if not await self.service.load(m.name):
                    raise OllamaError(503, f'model "{req.model}" could not be loaded')
                fmt.loaded()
                self.service.keep_alive(m.name, keep_s)
                return ok_raw(fmt.empty())
            body = embed.ollama_body(req, m.name, vllm=m.backend is Backend.VLLM)
            openai_embeddings.check_openai(
                body, max_inputs=self.service.cfg.server.max_embedding_inputs,
                max_model_len=m.max_model_len)
        except (OllamaError, BadRequest) as exc:
            return error(exc.status, exc.message)
        except ValueError as exc:  # a bad keep_alive
            return error(400, str(exc))
        hit = self.service.resolve(req.model)
        decision = Decision(m.name, hit[1] if hit else RouteReason.EXPLICIT)
        return self.service.relay(p.Endpoint.EMBEDDINGS, body, False, decision, fmt,
                                  on_answered=self.keeping(m.name, keep_s))

    async def read_only(self, request: Request) -> Response:
        path = request.url.path
        what = next(v for k, v in READ_ONLY.items() if path.startswith(k))
        return error(400, f"{what} models is not supported: zoe-vllm serves the models in its "
                          "configuration file (edit the profile to add or remove one)")

    # ----- misc ------------------------------------------------------------------
    async def version(self, request: Request) -> Response:
        return ok({"version": OLLAMA_VERSION})

    async def unknown(self, request: Request) -> Response:
        path = request.url.path
        if path in KNOWN_PATHS or path.startswith("/api/blobs/"):
            return error(405, f"method {request.method} is not allowed on {path}")
        return error(404, f"no Ollama endpoint {request.method} {path}")


KNOWN_PATHS = frozenset({"/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat",
                         "/api/generate", "/api/pull", "/api/embed", "/api/embeddings",
                         "/api/create", "/api/copy", "/api/delete", "/api/push"})
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def not_found_route(request: Request, exc: Exception) -> Response:
    return error(404, f"no Ollama endpoint {request.method} {request.url.path}")


async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal server error"}, status_code=500)


def ollama_app(service: Service, status: StatusView) -> Starlette:
    """The Ollama API, to mount at ``/api``; its last route answers any other path in
    Ollama's error shape, so it must stay last."""
    api = OllamaApi(service, status)
    return Starlette(routes=[
        Route("/version", api.version, methods=["GET"]),
        Route("/tags", api.tags, methods=["GET"]),
        Route("/ps", api.ps, methods=["GET"]),
        Route("/show", api.show, methods=["POST"]),
        Route("/chat", api.chat, methods=["POST"]),
        Route("/generate", api.generate, methods=["POST"]),
        Route("/pull", api.pull, methods=["POST"]),
        Route("/embed", api.embed, methods=["POST"]),
        Route("/embeddings", api.embeddings, methods=["POST"]),
        Route("/create", api.read_only, methods=["POST"]),
        Route("/copy", api.read_only, methods=["POST"]),
        Route("/delete", api.read_only, methods=["DELETE"]),
        Route("/push", api.read_only, methods=["POST"]),
        Route("/blobs/{digest}", api.read_only, methods=["HEAD", "POST"]),
        Route("/{rest:path}", api.unknown, methods=ALL_METHODS),
    ], exception_handlers={404: not_found_route, Exception: internal_error})


async def root(request: Request) -> Response:
    """``GET /``: what Ollama answers, so clients that check for it find a server."""
    return Response("Ollama is running", media_type="text/plain; charset=utf-8")
