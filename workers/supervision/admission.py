"""Backpressure: per model, a bounded number running and a bounded FIFO queue.

A model runs at most ``limit`` requests at once (its ``max_num_seqs``: the
engine would only queue more internally, where nobody can time them out or
send them elsewhere). Up to ``max_queued`` more wait here, in order, for at
most ``queue_timeout_s``; past that the caller tries the fallback chain or
answers "busy". Models never share a queue, so no request waits on another
model's work.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Busy(Exception):
    """The queue is full: refuse at once."""


class QueueTimeout(Exception):
    """Waited the whole bound without getting a slot."""


class Admission:
    def __init__(self, limit: int, max_queued: int, queue_timeout_s: float) -> None:
        self.limit = limit
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.refused = 0
        self.timed_out = 0

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; raises Busy or QueueTimeout."""
        if self.running < self.limit and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queued:
            self.refused += 1
            raise Busy
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await fut
        except TimeoutError:
            self._give_back(fut)
            self.timed_out += 1
            raise QueueTimeout from None
        except asyncio.CancelledError:
            self._give_back(fut)
            raise

    def _give_back(self, fut: asyncio.Future[None]) -> None:
        """Leave the line; a slot handed over in the meantime goes to the next one."""
        if fut.done() and not fut.cancelled():
            self.release()
        else:
            fut.cancel()
            self._waiters.remove(fut)

    def release(self) -> None:
        # Hand the slot straight to the next waiter, so nobody can jump the line.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1
