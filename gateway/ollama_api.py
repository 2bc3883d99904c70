"""Ollama's native API (``/api/*``), so Ollama clients keep working unchanged.

A chat or generate request becomes the OpenAI body vLLM understands
(:mod:`gateway.ollama_translate`) and takes the same path as an OpenAI
request — the same checks, router, admission, fallback chain and metrics
(:meth:`Gateway.relay`) — with :class:`OllamaFormat` writing the answer.
Errors are Ollama's ``{"error": "..."}`` with its status codes.
"""

from __future__ import annotations

import json
import time
from collections.abc import MutableMapping
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import capabilities, chat_checks, embeddings
from gateway.app import Gateway
from gateway.embeddings import EmbedKind
from gateway.errors import BadRequest
from gateway.keep_alive import KeepAlive, parse_keep_alive
from gateway.ollama_catalog import Catalog, tagged
from gateway.ollama_format import Kind, OllamaFormat, control_answer, ollama_error_body
from gateway.ollama_translate import (
    ChatRequest,
    GenerateRequest,
    chat_body,
    decode,
    generate_body,
)
from gateway.relay import Receive, Relay, Scope, Send
from gateway.router import Decision, UnknownModel
from shared import protocol as p
from shared.config import Backend, ModelConfig, fallback_chain
from shared.process_tree import tree_rss
from workers.lifecycle import State

# The Ollama release whose API this mirrors: clients gate features (tools,
# structured outputs, thinking) on the version they are told.
OLLAMA_VERSION = "0.12.6"
LOADED = (State.READY, State.DRAINING)
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
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.keep = KeepAlive(gw.sup)
        self.catalog = Catalog(gw.cfg, gw.started)

    # ----- helpers ----------------------------------------------------------
    async def body(self, request: Request) -> dict[str, Any]:
        try:
            return await self.gw.read_json(request)
        except BadRequest as exc:
            raise OllamaError(exc.status, exc.message) from None

    def model(self, name: object) -> ModelConfig:
        if not isinstance(name, str) or not name.strip():
            raise OllamaError(400, "model is required")
        hit = self.gw.router.resolve(name)
        if hit is None:
            raise not_found(name)
        return self.gw.cfg.model(hit[0])

    def context_length(self, m: ModelConfig) -> int:
        return self.gw.sup.workers[m.name].info.max_model_len or m.max_model_len

    def clamp_max_tokens(self, body: dict[str, Any], model: str) -> None:
        """Ollama's num_predict is a cap (generation also ends with the context);
        vLLM refuses a max_tokens above max_model_len, so cap it there, for every
        model the request may fall back to."""
        if "max_tokens" not in body:
            return
        chain = [model, *fallback_chain(self.gw.cfg.config, model)]
        body["max_tokens"] = min(body["max_tokens"],
                                 *(self.context_length(self.gw.cfg.model(n)) for n in chain))

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
            decision = self.gw.router.route(body)
            if not capabilities.serves(self.gw.cfg.model(decision.model), endpoint):
                raise OllamaError(400, f"{json.dumps(req.model)} does not support {kind}")
            if not self.gw.serves_tools(body, decision.model):
                raise OllamaError(400, f"{json.dumps(req.model)} does not support tools")
            if endpoint is p.Endpoint.CHAT:  # last: images are the dearest check
                await self.gw.check_messages(body["messages"])
            self.clamp_max_tokens(body, decision.model)
        except (OllamaError, BadRequest) as exc:
            return error(exc.status, exc.message)
        except ValueError as exc:  # TranslateError, ImageError, a bad keep_alive
            return error(400, str(exc))
        except UnknownModel as exc:
            return error(404, not_found(exc.name).message)
        fmt = OllamaFormat(model=req.model, kind=kind, stream=req.stream)
        return self.keeping(self.gw.relay(endpoint, body, True, decision, fmt=fmt),
                            decision.model, keep_s)

    def keeping(self, relay: Relay, model: str, keep_s: float | None) -> Relay | Any:
        """``relay``, applying the request's keep_alive to ``model`` when the answer ends."""
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            applied = False

            async def send_then_keep(message: MutableMapping[str, Any]) -> None:
                # Apply keep_alive before the last byte goes out, so a client that
                # calls /api/ps right after its answer sees the new expiry.
                nonlocal applied
                if message["type"] == "http.response.body" and not message.get("more_body") \
                        and not applied:
                    applied = True
                    self.keep.after_request(model, keep_s)
                await send(message)

            try:
                await relay(scope, receive, send_then_keep)
            finally:
                if not applied:
                    self.keep.after_request(model, keep_s)

        return app

    async def load_or_unload(self, name: str, kind: Kind, keep_s: float | None) -> Response:
        """An empty chat/generate loads the model, or with keep_alive 0 unloads it."""
        t0 = time.perf_counter_ns()
        m = self.model(name)
        endpoint = p.Endpoint.CHAT if kind == "chat" else p.Endpoint.COMPLETION
        if not capabilities.serves(m, endpoint):
            raise OllamaError(400, f"{json.dumps(name)} does not support {kind}")
        if keep_s == 0:
            await self.keep.unload(m.name, "unloaded by a client (keep_alive 0)")
            total = time.perf_counter_ns() - t0
            return Response(control_answer(model=name, kind=kind, reason="unload",
                                           total_ns=total, load_ns=0),
                            media_type="application/json; charset=utf-8")
        if not await self.keep.load(m.name, self.gw.ensure_ready):
            w = self.gw.sup.workers[m.name]
            raise OllamaError(503, f'model "{name}" could not be loaded ({w.state.value}'
                                   f'{": " + w.info.last_error if w.info.last_error else ""})')
        self.keep.after_request(m.name, keep_s)
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
        for m in self.gw.cfg.models:
            w = self.gw.sup.workers[m.name]
            if w.state not in LOADED:
                continue
            rss = tree_rss(w.info.pid) or 0
            f = self.catalog.facts(m)
            models.append({"name": tagged(m.name), "model": tagged(m.name), "size": rss,
                           "digest": f.digest, "details": self.catalog.details(m),
                           "expires_at": self.keep.expires_at(m.name).isoformat()
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
            if self.gw.router.resolve(name) is None:
                known = ", ".join(tagged(n) for n in self.gw.router.known_names())
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
            req = embeddings.decode_ollama(raw, kind)
            keep_s = parse_keep_alive(req.keep_alive)
            m = self.model(req.model)
            if not capabilities.serves(m, p.Endpoint.EMBEDDINGS):
                raise OllamaError(400, f"{json.dumps(req.model)} does not support embeddings")
            fmt = embeddings.OllamaEmbedFormat(
                model=req.model, kind=kind,
                dimensions=req.dimensions if isinstance(req, embeddings.EmbedRequest) else None)
            if not embeddings.ollama_inputs(req):
                if not await self.keep.load(m.name, self.gw.ensure_ready):
                    raise OllamaError(503, f'model "{req.model}" could not be loaded')
                fmt.loaded()
                self.keep.after_request(m.name, keep_s)
                return ok_raw(fmt.empty())
            body = embeddings.ollama_body(req, m.name, vllm=m.backend is Backend.VLLM)
            embeddings.check_openai(body, max_inputs=self.gw.cfg.server.max_embedding_inputs,
                                    max_model_len=m.max_model_len)
        except (OllamaError, BadRequest) as exc:
            return error(exc.status, exc.message)
        except ValueError as exc:  # a bad keep_alive
            return error(400, str(exc))
        hit = self.gw.router.resolve(req.model)
        decision = Decision(m.name, hit[1] if hit else "explicit")
        return self.keeping(self.gw.relay(p.Endpoint.EMBEDDINGS, body, False, decision,
                                          fmt=fmt), m.name, keep_s)

    async def read_only(self, request: Request) -> Response:
        path = request.url.path
        what = next(v for k, v in READ_ONLY.items() if path.startswith(k))
        return error(400, f"{what} models is not supported: zoe-vllm serves the models in its "
                          "configuration file (edit the profile to add or remove one)")

    # ----- misc ------------------------------------------------------------------
    async def root(self, request: Request) -> Response:
        return Response("Ollama is running", media_type="text/plain; charset=utf-8")

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


def ollama_routes(gw: Gateway) -> list[Route]:
    """The Ollama API's routes; the last one answers any other ``/api/`` path in
    Ollama's error shape, so it must stay last."""
    api = OllamaApi(gw)
    return [
        Route("/", api.root, methods=["GET", "HEAD"]),
        Route("/api/version", api.version, methods=["GET"]),
        Route("/api/tags", api.tags, methods=["GET"]),
        Route("/api/ps", api.ps, methods=["GET"]),
        Route("/api/show", api.show, methods=["POST"]),
        Route("/api/chat", api.chat, methods=["POST"]),
        Route("/api/generate", api.generate, methods=["POST"]),
        Route("/api/pull", api.pull, methods=["POST"]),
        Route("/api/embed", api.embed, methods=["POST"]),
        Route("/api/embeddings", api.embeddings, methods=["POST"]),
        Route("/api/create", api.read_only, methods=["POST"]),
        Route("/api/copy", api.read_only, methods=["POST"]),
        Route("/api/delete", api.read_only, methods=["DELETE"]),
        Route("/api/push", api.read_only, methods=["POST"]),
        Route("/api/blobs/{digest}", api.read_only, methods=["HEAD", "POST"]),
        Route("/api/{rest:path}", api.unknown, methods=ALL_METHODS),
    ]
