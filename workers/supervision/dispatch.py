"""The main process's end of the ZeroMQ link to the workers.

One ROUTER socket, bound by the long-lived main process; workers connect with
their model name as identity. One reader task decodes every incoming message:
request-scoped ones go into that request's :class:`Call` queue (the reader
never waits on a slow consumer), a probe's result to the probe that waits for
it, lifecycle ones to the supervisor's callback. It keeps no per-model counts:
each model's backend owns those (:class:`workers.supervision.backends.Usage`).
When a worker dies, :meth:`Dispatcher.fail_model` drops an error into every
call it had, so every waiting client wakes up and fails cleanly.
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
        self._heard: dict[str, float] = {}  # monotonic time of a worker's last message
        self._probes: dict[int, asyncio.Future[p.ProbeResult]] = {}
        self._probe_seq = 0
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

    def heard_at(self, model: str) -> float:
        """Monotonic time of ``model``'s worker's last message (0: never)."""
        return self._heard.get(model, 0.0)

    async def submit(self, model: str, endpoint: p.Endpoint, body: bytes,
                     stream: bool) -> Call:
        """Send a request to ``model``'s worker and return its call to read from."""
        rid = uuid.uuid4().hex
        call = Call(rid, model, endpoint)
        self.calls[rid] = call
        try:
            await self.send(model, p.Request(request_id=rid, endpoint=endpoint, body=body,
                                             stream=stream))
        except BaseException:
            self.calls.pop(rid, None)
            raise
        return call

    def release(self, call: Call) -> bool:
        """Forget ``call``; if it never finished, tell the worker to abort it. False if it
        was already released."""
        if self.calls.pop(call.request_id, None) is None:
            return False
        if not call.finished:
            call.finished = True
            task = asyncio.create_task(self._abort(call))
            task.add_done_callback(_log_failure)
        return True

    async def probe(self, model: str, timeout_s: float) -> p.ProbeResult:
        """One health probe of ``model``'s worker; a failed result when it does not
        answer in time or is not connected."""
        self._probe_seq += 1
        pid = self._probe_seq
        fut: asyncio.Future[p.ProbeResult] = asyncio.get_running_loop().create_future()
        self._probes[pid] = fut
        try:
            await self.send(model, p.Probe(probe_id=pid))
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            return p.ProbeResult(probe_id=pid, ok=False, seconds=timeout_s,
                                 detail=f"no answer within {timeout_s:.0f}s")
        except WorkerUnavailable:
            return p.ProbeResult(probe_id=pid, ok=False, seconds=0.0,
                                 detail="worker not connected")
        finally:
            self._probes.pop(pid, None)

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
            self._heard[ident.decode(errors="replace")] = time.monotonic()
            try:
                msg = p.decode(type_frame, payload)
            except p.ProtocolError as exc:
                log.warning("dropping a malformed message from %r: %s", ident, exc)
                continue
            if isinstance(msg, p.ProbeResult):
                fut = self._probes.pop(msg.probe_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
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
