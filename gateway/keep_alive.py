"""Ollama's ``keep_alive``: how long a model stays loaded after a request.

``0`` unloads the model once the answer is sent; a duration (``"5m"``, or
seconds) unloads it after that long without requests (OpenAI requests count
as use too); a negative value, or none at all, leaves the model to the
server's own policy: eager models stay loaded, on-demand models leave after
their ``idle_unload_s``. A model unloaded this way is loaded back by its next
request (:meth:`Supervisor.unload`, :meth:`Gateway.ensure_ready`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from workers.lifecycle import State
from workers.supervisor import Supervisor

log = logging.getLogger("zoe.gateway")

FOREVER = math.inf
# Ollama shows a model kept "forever" with an expiry this far out (Go's
# largest time.Duration, about 292 years).
FOREVER_SPAN = timedelta(seconds=(2**63 - 1) / 1e9)
BUSY_POLL_S = 1.0
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_keep_alive(value: object) -> float | None:
    """Seconds to stay loaded after a request; ``FOREVER``; None when not given.

    Accepts what Ollama accepts — a number of seconds, or a Go duration such
    as ``"5m"``, ``"1h30m"``, ``"-1"`` — and a bare number in a string.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}: use seconds or a duration like \"5m\"")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"invalid keep_alive {value!r}")
        return FOREVER if value < 0 else float(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        seconds: float | None = None
        with contextlib.suppress(ValueError):
            seconds = float(body)
        if seconds is None and body and _PART.sub("", body) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(body))
        if seconds is not None and math.isfinite(seconds):
            return FOREVER if sign < 0 and seconds > 0 else seconds
    raise ValueError(f"invalid keep_alive {value!r}: use a number of seconds or a duration "
                     "like \"5m\" (negative: keep the model loaded)")


class KeepAlive:
    """Per model: the idle time the latest Ollama request asked for, and its timer."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.idle_s: dict[str, float] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}

    def after_request(self, model: str, seconds: float | None) -> None:
        """Apply a request's ``keep_alive`` once its answer has been sent."""
        timer = self._timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        if seconds is None or seconds == FOREVER:
            self.idle_s.pop(model, None)
            return
        self.idle_s[model] = seconds
        if seconds == 0:
            self.sup.spawn_task(self.unload(model, "keep_alive 0"))
        else:
            self._timers[model] = asyncio.create_task(self._expire(model, seconds))

    async def unload(self, model: str, reason: str) -> None:
        self.idle_s.pop(model, None)
        await self.sup.unload(model, reason)

    async def load(self, model: str, ensure_ready: Callable[[str], Awaitable[bool]]) -> bool:
        """Load ``model`` and wait for it: an empty chat or generate is a load request,
        so it waits for the whole load, not just ``request_wait_s``."""
        if await ensure_ready(model):
            return True
        w = self.sup.workers[model]
        if w.state in (State.FAILED, State.STOPPED):
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w.ready.wait(), self.sup.cfg.config.supervisor.start_timeout_s)
            return True
        return False

    def expires_at(self, model: str) -> datetime:
        """When ``model`` unloads if nothing uses it (far in the future: never)."""
        w = self.sup.workers[model]
        limits = [s for s in (self.idle_s.get(model),
                              w.model.idle_unload_s if w.model.on_demand else None)
                  if s is not None]
        now = datetime.now(UTC)
        if not limits:
            return now + FOREVER_SPAN
        idle_for = time.monotonic() - self._last_used(model)
        if self.sup.dispatcher.active.get(model, 0):
            idle_for = 0.0
        return now + timedelta(seconds=max(0.0, min(limits) - idle_for))

    def _last_used(self, model: str) -> float:
        return max(self.sup.dispatcher.last_used.get(model, 0.0),
                   self.sup.workers[model].info.ready_mono)

    async def _expire(self, model: str, idle_s: float) -> None:
        w = self.sup.workers[model]
        while w.state is State.READY:
            if self.sup.dispatcher.active.get(model, 0):
                await asyncio.sleep(min(idle_s, BUSY_POLL_S))
                continue
            due = self._last_used(model) + idle_s - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
                continue
            self._timers.pop(model, None)
            log.info("model %s idle for %.0fs (keep_alive): unloading it", model, idle_s)
            # Not awaited here: a new request's keep_alive cancels this timer,
            # and that must never interrupt an unload half-way.
            self.sup.spawn_task(self.unload(model, f"keep_alive {idle_s:g}s expired"))
            return
