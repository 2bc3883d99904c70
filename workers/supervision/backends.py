"""One interface to reach a model: a local worker over ZeroMQ, or a remote server.

As vLLM's ``make_client`` picks one engine client behind one interface, a
:class:`~workers.supervision.slot.ModelSlot` holds one :class:`ModelBackend`: the
request path and the probes use it without knowing which kind it is. Each backend
owns its model's in-flight count and last use (:class:`Usage`).
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import Any

import msgspec

from shared import protocol as p
from workers.supervision.dispatch import Call, Dispatcher


class Usage:
    """Requests in flight on one model and when it was last used (monotonic seconds)."""

    def __init__(self) -> None:
        self.active = 0
        self.last_used = 0.0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.active += 1
        self.last_used = time.monotonic()
        self._idle.clear()

    def end(self) -> None:
        self.active -= 1
        self.last_used = time.monotonic()
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self, bound_s: float) -> bool:
        """Wait until nothing is in flight; False if ``bound_s`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), bound_s)
        except TimeoutError:
            return False
        return True


class ModelBackend(abc.ABC):
    """Where one model's requests go."""

    name: str
    usage: Usage

    @abc.abstractmethod
    async def submit(self, endpoint: p.Endpoint, body: dict[str, Any], stream: bool) -> Call:
        """Send an OpenAI-shaped ``body``; raises WorkerUnavailable if nothing was sent."""

    @abc.abstractmethod
    def release(self, call: Call) -> None:
        """Forget ``call``, aborting it if it has not finished."""

    @abc.abstractmethod
    async def probe(self, timeout_s: float) -> p.ProbeResult:
        """One real generation (or embedding); never raises."""

    def last_heard(self) -> float:
        """Monotonic time of the backend's last sign of life (0: never)."""
        return self.usage.last_used

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the backend holds (connections)."""


class LocalBackend(ModelBackend):
    """A worker process of ours, over the dispatcher's ZeroMQ socket."""

    def __init__(self, dispatcher: Dispatcher, name: str) -> None:
        self.dispatcher = dispatcher
        self.name = name
        self.usage = Usage()

    async def submit(self, endpoint: p.Endpoint, body: dict[str, Any], stream: bool) -> Call:
        # vLLM checks `model` against its served name: the worker's own name.
        body["model"] = self.name
        self.usage.begin()
        try:
            return await self.dispatcher.submit(self.name, endpoint, msgspec.json.encode(body),
                                                stream)
        except BaseException:
            self.usage.end()
            raise

    def release(self, call: Call) -> None:
        if self.dispatcher.release(call):
            self.usage.end()

    async def probe(self, timeout_s: float) -> p.ProbeResult:
        return await self.dispatcher.probe(self.name, timeout_s)

    def last_heard(self) -> float:
        return max(self.dispatcher.heard_at(self.name), self.usage.last_used)
