"""Relay one routed request to a worker and its answer back to the client.

The response status is chosen only when the worker's first message arrives,
so an error before any output is a plain 4xx/5xx JSON answer, and an
out-of-memory or dead worker can still hand the request down the fallback
chain. The body races the client's ``http.disconnect``: whichever ends first
cancels the other, and a disconnect becomes an ABORT inside the worker.

The relay reaches models only through :class:`Models` (the supervisor): each
model's slot gives its admission gate and backend, and ``ensure_ready`` is the
one place that decides whether a request may load a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.core.formats import Format
from gateway.core.router import Decision, RouteReason
from gateway.ops.metrics import Metrics, Outcome
from shared import protocol as p
from workers.supervision.admission import Admission, Busy, QueueTimeout
from workers.supervision.dispatch import Call, WorkerUnavailable
from workers.supervision.slot import ModelSlot

log = logging.getLogger("zoe.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Models(Protocol):
    """What the relay needs of the models (the supervisor is one)."""

    @property
    def slots(self) -> Mapping[str, ModelSlot]:
        """Every model's slot, by name."""

    async def ensure_ready(self, name: str, *, whole_load: bool = False) -> bool:
        """True once ``name`` is READY (this may load it)."""

    def on_oom(self, name: str) -> None:
        """``name`` ran out of memory: have it reloaded."""


STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
JSON_HEADERS = [(b"content-type", b"application/json")]
FALLBACK_KINDS = frozenset({p.ErrorKind.OOM, p.ErrorKind.ENGINE_DEAD})


@dataclass
class Relay:
    """An ASGI app answering one request; ``models`` is the route then its fallbacks.
    ``on_answered`` runs once, just before the answer's last byte goes out (or when the
    client went away): Ollama applies ``keep_alive`` there."""

    pool: Models
    metrics: Metrics
    endpoint: p.Endpoint
    body: dict[str, Any]
    stream: bool
    models: list[str]
    decision: Decision
    format: Format
    on_answered: Callable[[], None] | None = None
    started: float = field(default_factory=time.perf_counter)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answered = False

        def done() -> None:
            nonlocal answered
            if not answered:
                answered = True
                if self.on_answered is not None:
                    self.on_answered()

        async def send_last_after_hook(message: Message) -> None:
            # Before the last byte, so a client that asks right after its answer (Ollama's
            # /api/ps) sees what the hook changed.
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done()
            await send(message)

        try:
            await self._race(receive, send_last_after_hook)
        finally:
            done()

    async def _race(self, receive: Receive, send: Send) -> None:
        serve = asyncio.create_task(self.serve(send))
        watch = asyncio.create_task(_wait_disconnect(receive))
        finished, _ = await asyncio.wait({serve, watch}, return_when=asyncio.FIRST_COMPLETED)
        if serve in finished:
            watch.cancel()
            serve.result()
            return
        # The client went away first: cancelling `serve` releases its call,
        # which sends ABORT to the worker.
        serve.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serve
        self.metrics.request_done(self.models[0], Outcome.DISCONNECTED)

    async def serve(self, send: Send) -> None:
        last_error: p.Error | None = None
        for i, model in enumerate(self.models):
            if i > 0:
                self.metrics.fallback(self.models[i - 1], model)
                log.warning("falling back from %s to %s", self.models[i - 1], model)
            ready = await self.pool.ensure_ready(model)
            if i == 0:
                self.format.loaded()
            if not ready:
                last_error = _unavailable(model)
                continue
            route = self.decision.label if i == 0 else \
                Decision(model, RouteReason.FALLBACK, self.models[0]).label
            slot = self.pool.slots[model]
            gate = slot.admission
            try:
                await gate.acquire()
            except (Busy, QueueTimeout) as exc:
                last_error = _busy(model, gate, exc)
                continue
            try:
                # Check again after the queue: a worker that died meanwhile may have a
                # successor starting up, which would never hear of a request sent now.
                if not await self.pool.ensure_ready(model):
                    last_error = _unavailable(model)
                    continue
                await self.attempt(send, slot, route)
                return
            except _TryNext as exc:
                last_error = exc.error
            finally:
                gate.release()
        assert last_error is not None
        outcome = Outcome.BUSY if last_error.kind is p.ErrorKind.BUSY else Outcome.UNAVAILABLE
        self.metrics.request_done(self.models[0], outcome)
        await self.send_error(send, last_error, self.models[-1], self.decision.label)

    async def attempt(self, send: Send, slot: ModelSlot, route: str) -> None:
        """One try on ``slot``'s model; raises _TryNext if the next should take over."""
        model, backend = slot.name, slot.backend
        try:
            call = await backend.submit(self.endpoint, self.body, self.stream)
        except WorkerUnavailable:
            raise _TryNext(p.Error(request_id="", kind=p.ErrorKind.ENGINE_DEAD, status=503,
                                   message=f"model {model!r} is not connected",
                                   code="model_unavailable")) from None
        try:
            first = await call.next()
            if isinstance(first, p.Error) and first.kind in FALLBACK_KINDS:
                if first.kind is p.ErrorKind.OOM:
                    self.pool.on_oom(model)
                raise _TryNext(first)
            await self.answer(send, call, first, model, route)
        finally:
            backend.release(call)

    def headers(self, model: str, route: str) -> list[tuple[bytes, bytes]]:
        return [(b"x-zoe-model", model.encode()), (b"x-zoe-route", route.encode())]

    async def answer(self, send: Send, call: Call, first: p.Message, model: str,
                     route: str) -> None:
        if isinstance(first, p.Error):
            self.metrics.request_done(
                model, Outcome.CLIENT_ERROR if first.status < 500 else Outcome.ERROR)
            await self.send_error(send, first, model, route)
            return
        if isinstance(first, p.Response):
            if self.endpoint is p.Endpoint.EMBEDDINGS:
                self.metrics.embedded(model, first.body)
            await send({"type": "http.response.start", "status": first.status,
                        "headers": JSON_HEADERS + self.headers(model, route)})
            await send({"type": "http.response.body", "body": self.format.response(first.body)})
            self.metrics.request_done(model, Outcome.OK, time.perf_counter() - self.started)
            return
        assert isinstance(first, p.Chunk)
        headers = [(b"content-type", self.format.stream_content_type), *STREAM_HEADERS]
        await send({"type": "http.response.start", "status": 200,
                    "headers": headers + self.headers(model, route)})
        self.metrics.first_token(model, time.perf_counter() - self.started)
        msg: p.Message = first
        while isinstance(msg, p.Chunk):
            out = self.format.chunk(msg.data)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            msg = await call.next()
        if isinstance(msg, p.Error):
            # Headers are gone: the format ends the stream with an error in-band.
            self.metrics.request_done(model, Outcome.ERROR)
            await send({"type": "http.response.body", "body": self.format.stream_error(msg)})
            return
        self.metrics.request_done(model, Outcome.OK, time.perf_counter() - self.started)
        await send({"type": "http.response.body", "body": self.format.end()})

    async def send_error(self, send: Send, err: p.Error, model: str, route: str) -> None:
        body = self.format.error(err)
        headers = JSON_HEADERS + self.headers(model, route)
        if err.status == 503:
            headers.append((b"retry-after", b"5"))
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TryNext(Exception):
    def __init__(self, error: p.Error) -> None:
        super().__init__(error.message)
        self.error = error


def _unavailable(model: str) -> p.Error:
    return p.Error(request_id="", kind=p.ErrorKind.ENGINE_DEAD, status=503,
                   message=f"model {model!r} is not available (loading or restarting); "
                           "try again shortly", code="model_unavailable")


def _busy(model: str, gate: Admission, exc: Exception) -> p.Error:
    why = "maximum pending requests exceeded" if isinstance(exc, Busy) else \
        f"waited {gate.queue_timeout_s:.0f}s in the queue (server.queue_timeout_s)"
    return p.Error(request_id="", kind=p.ErrorKind.BUSY, status=503,
                   message=f"server busy, please try again. {why} (model {model!r}: "
                           f"{gate.running} running, {gate.queued} queued)",
                   code="server_busy")


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
