"""The main process's end of the ZeroMQ link to the workers.

One ROUTER socket, bound by the long-lived main process; workers connect with
their model name as identity. One reader task decodes every incoming message:
request-scoped ones go into that request's :class:`Call` queue (the reader
never waits on a slow consumer), lifecycle ones go to the supervisor's
callback. When a worker dies, :meth:`Dispatcher.fail_model` drops an error into
every call it had, so every waiting client wakes up and fails cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import zmq
import zmq.asyncio

from shared import protocol as p

log = logging.getLogger("zoe.dispatch")

OnWorkerMessage = Callable[[str, p.Message], None]


class WorkerUnavailable(RuntimeError):
    """The worker is not connected; nothing was sent."""


class Call:
    """One request in flight on one worker."""

    __slots__ = ("endpoint", "finished", "model", "queue", "request_id", "streamed")

    def __init__(self, request_id: str, model: str, endpoint: p.Endpoint) -> None:
        self.request_id = request_id
        self.model = model
        self.endpoint = endpoint
        self.queue: asyncio.Queue[p.Message] = asyncio.Queue()
        self.streamed = False
        self.finished = False

    async def next(self) -> p.Message:
        msg = await self.queue.get()
        if isinstance(msg, p.Chunk):
            self.streamed = True
        elif isinstance(msg, p.Response | p.Error):
            self.finished = True
        return msg


class Dispatcher:
    def __init__(self, endpoint: str, on_worker_message: OnWorkerMessage) -> None:
        self.endpoint = endpoint
        self.on_worker_message = on_worker_message
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        # A restarted worker reconnects under the same identity and takes it over.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Sending to a worker that is not connected raises instead of dropping silently.
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.calls: dict[str, Call] = {}
        self.active: dict[str, int] = {}
        self.last_used: dict[str, float] = {}  # monotonic time of the last submit/release
        self.last_heard: dict[str, float] = {}  # monotonic time of a worker's last message
        self._idle: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.sock.bind(self.endpoint)
        self._reader = asyncio.create_task(self._read(), name="zmq-reader")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.sock.close(linger=0)
        self.ctx.term()

    async def send(self, model: str, msg: p.Message) -> None:
        try:
            await self.sock.send_multipart([model.encode(), *p.encode(msg)])
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise WorkerUnavailable(model) from exc
            raise

    async def submit(self, model: str, endpoint: p.Endpoint, body: bytes,
                     stream: bool) -> Call:
        """Send a request to ``model``'s worker and return its call to read from."""
        rid = uuid.uuid4().hex
        call = Call(rid, model, endpoint)
        self.calls[rid] = call
        self.active[model] = self.active.get(model, 0) + 1
        self.last_used[model] = time.monotonic()
        self._idle_event(model).clear()
        try:
            await self.send(model, p.Request(request_id=rid, endpoint=endpoint, body=body,
                                             stream=stream))
        except BaseException:
            self.release(call)
            raise
        return call

    def release(self, call: Call) -> None:
        """Forget ``call``; if it never finished, tell the worker to abort it."""
        if self.calls.pop(call.request_id, None) is None:
            return
        self.active[call.model] -= 1
        self.last_used[call.model] = time.monotonic()
        if self.active[call.model] == 0:
            self._idle_event(call.model).set()
        if not call.finished:
            call.finished = True
            task = asyncio.create_task(self._abort(call))
            task.add_done_callback(_log_failure)

    def _idle_event(self, model: str) -> asyncio.Event:
        event = self._idle.get(model)
        if event is None:
            event = self._idle[model] = asyncio.Event()
            if not self.active.get(model):
                event.set()
        return event

    async def wait_idle(self, model: str, bound_s: float) -> bool:
        """Wait until ``model`` has no request in flight; False if ``bound_s`` ran out."""
        try:
            await asyncio.wait_for(self._idle_event(model).wait(), bound_s)
        except TimeoutError:
            return False
        return True

    async def _abort(self, call: Call) -> None:
        with contextlib.suppress(WorkerUnavailable):
            await self.send(call.model, p.Abort(request_id=call.request_id))

    def fail_model(self, model: str, message: str) -> int:
        """Fail every in-flight call on ``model`` (its worker died); returns how many."""
        failed = 0
        for call in list(self.calls.values()):
            if call.model == model and not call.finished:
                call.queue.put_nowait(p.Error(
                    request_id=call.request_id, kind=p.ErrorKind.ENGINE_DEAD, status=503,
                    message=message, code="worker_unavailable",
                    streamed=call.streamed))
                failed += 1
        return failed

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            if len(frames) != 3:
                log.warning("dropping a message of %d frames", len(frames))
                continue
            ident, type_frame, payload = frames
            self.last_heard[ident.decode(errors="replace")] = time.monotonic()
            try:
                msg = p.decode(type_frame, payload)
            except p.ProtocolError as exc:
                log.warning("dropping a malformed message from %r: %s", ident, exc)
                continue
            rid = getattr(msg, "request_id", None)
            if rid is not None:
                call = self.calls.get(rid)
                if call is not None:
                    call.queue.put_nowait(msg)
                continue
            try:
                self.on_worker_message(ident.decode(errors="replace"), msg)
            except Exception:
                log.exception("handling %s from %r failed", type(msg).__name__, ident)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("abort failed: %s", task.exception())
