"""Remote backends: a model served by another machine, over HTTP.

``openai``: any OpenAI-compatible server (``vllm serve``, llama.cpp's server,
another zoe-vllm). ``ollama``: an Ollama server's native API. A remote call
looks exactly like a local worker's: a :class:`~workers.supervision.dispatch.Call` whose
queue receives CHUNK / RESPONSE / ERROR messages, so routing, fallback,
backpressure and metrics treat both alike. Connection failures and 5xx
answers become ``engine_dead`` errors (eligible for the fallback chain).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec

from shared import protocol as p
from shared.config import Backend, LoadedConfig, ModelConfig, Role
from workers.supervision.backends import ModelBackend, Usage
from workers.supervision.dispatch import Call
from workers.supervision.ollama_client import OllamaStream, to_ollama_request

log = logging.getLogger("zoe.remote")

PATHS = {
    (Backend.OPENAI, p.Endpoint.CHAT): "/v1/chat/completions",
    (Backend.OPENAI, p.Endpoint.COMPLETION): "/v1/completions",
    (Backend.OPENAI, p.Endpoint.EMBEDDINGS): "/v1/embeddings",
    (Backend.OPENAI, p.Endpoint.RESPONSES): "/v1/responses",
    (Backend.OLLAMA, p.Endpoint.CHAT): "/api/chat",
    (Backend.OLLAMA, p.Endpoint.COMPLETION): "/api/generate",
}


def api_key(cfg: LoadedConfig, model: ModelConfig) -> str | None:
    """The backend's key, from its environment variable or secrets file; never logged."""
    if model.api_key_env and os.environ.get(model.api_key_env):
        return os.environ[model.api_key_env]
    if model.api_key_file:
        return Path(cfg.expand(model.api_key_file)).read_text().strip() or None
    return None


class RemoteCall(Call):
    __slots__ = ("task",)

    def __init__(self, request_id: str, model: str, endpoint: p.Endpoint) -> None:
        super().__init__(request_id, model, endpoint)
        self.task: asyncio.Task[None] | None = None


class RemoteBackend(ModelBackend):
    def __init__(self, cfg: LoadedConfig, model: ModelConfig) -> None:
        assert model.url is not None
        self.model = model
        self.name = model.name
        self.remote_name = model.remote_model or model.name
        headers = {}
        key = api_key(cfg, model)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.AsyncClient(
            base_url=cfg.url(model), headers=headers, verify=model.tls_verify,
            timeout=httpx.Timeout(model.read_timeout_s, connect=model.connect_timeout_s),
            limits=httpx.Limits(max_connections=model.max_num_seqs + model.max_queued))
        self.usage = Usage()

    async def close(self) -> None:
        await self.client.aclose()

    async def submit(self, endpoint: p.Endpoint, body: dict[str, Any], stream: bool) -> Call:
        call = RemoteCall(uuid.uuid4().hex, self.name, endpoint)
        self.usage.begin()
        call.task = asyncio.create_task(self._run(call, endpoint, body, stream))
        return call

    def release(self, call: Call) -> None:
        if isinstance(call, RemoteCall) and call.task is not None and not call.task.done():
            # Closing the HTTP stream is how a remote server learns to abort.
            call.task.cancel()
        if not call.finished:
            call.finished = True
        self.usage.end()

    async def _run(self, call: Call, endpoint: p.Endpoint, body: dict[str, Any],
                   stream: bool) -> None:
        rid = call.request_id
        backend = self.model.backend
        payload = {**body, "model": self.remote_name}
        ollama: OllamaStream | None = None
        if backend is Backend.OLLAMA:
            payload = to_ollama_request(payload, endpoint, stream)
            ollama = OllamaStream(self.name, endpoint, rid, include_usage=bool(
                (body.get("stream_options") or {}).get("include_usage")))
        try:
            async with self.client.stream("POST", PATHS[(backend, endpoint)],
                                          json=payload) as resp:
                if resp.status_code != 200:
                    call.queue.put_nowait(self._http_error(rid, resp.status_code,
                                                           await resp.aread()))
                    return
                if not stream:
                    raw = await resp.aread()
                    out = ollama.response(raw) if ollama is not None else raw
                    call.queue.put_nowait(p.Response(request_id=rid, status=200, body=out))
                    return
                event: list[str] = []  # an SSE event's lines (the Responses API's are two)
                async for line in resp.aiter_lines():
                    if ollama is not None:
                        for data in ollama.chunk(line) if line.strip() else ():
                            call.queue.put_nowait(p.Chunk(request_id=rid, data=data))
                    elif line.strip():
                        event.append(line)
                    elif event:
                        call.queue.put_nowait(p.Chunk(request_id=rid,
                                                      data="\n".join(event) + "\n\n"))
                        event = []
                if event:
                    call.queue.put_nowait(p.Chunk(request_id=rid, data="\n".join(event) + "\n\n"))
                call.queue.put_nowait(p.Response(request_id=rid, status=200, body=b""))
        except (httpx.HTTPError, ValueError, msgspec.DecodeError) as exc:
            call.queue.put_nowait(p.Error(
                request_id=rid, kind=p.ErrorKind.ENGINE_DEAD, status=503,
                message=f"remote backend {self.name!r} failed: {type(exc).__name__}",
                code="backend_unavailable", streamed=call.streamed))

    def _http_error(self, rid: str, status: int, raw: bytes) -> p.Error:
        message = f"remote backend {self.name!r} answered HTTP {status}"
        with contextlib.suppress(msgspec.DecodeError, AttributeError, TypeError):
            err = msgspec.json.decode(raw).get("error")
            detail = err.get("message") if isinstance(err, dict) else err
            if isinstance(detail, str):
                message = detail
        if 400 <= status < 500 and status not in (401, 403, 404, 408, 429):
            return p.Error(request_id=rid, kind=p.ErrorKind.BAD_REQUEST, status=status,
                           message=message)
        # The remote is down, overloaded or misconfigured: let the next model try.
        return p.Error(request_id=rid, kind=p.ErrorKind.ENGINE_DEAD, status=503,
                       message=message, code="backend_unavailable")

    async def probe(self, timeout_s: float) -> p.ProbeResult:
        """A real one-token generation (or one embedding) on the remote server."""
        t0 = time.monotonic()
        endpoint, body = p.Endpoint.CHAT, {"messages": [{"role": "user", "content": "ping"}],
                                           "max_tokens": 1, "temperature": 0}
        if self.model.role is Role.EMBEDDING:
            endpoint, body = p.Endpoint.EMBEDDINGS, {"input": "ping"}
        call = await self.submit(endpoint, body, stream=False)
        try:
            async with asyncio.timeout(timeout_s):
                msg = await call.next()
            ok = isinstance(msg, p.Response)
            detail = "" if ok else getattr(msg, "message", type(msg).__name__)
        except TimeoutError:
            ok, detail = False, f"no answer within {timeout_s:.0f}s"
        finally:
            self.release(call)
        return p.ProbeResult(probe_id=0, ok=ok, seconds=time.monotonic() - t0, detail=detail)
