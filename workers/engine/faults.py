"""Fault injection for tests and drills; off unless ``ZOE_VLLM_FAULTS`` is set.

``ZOE_VLLM_FAULTS`` names a JSON file, read again at every request and probe
so a test can arm and disarm faults on a running worker::

    {"smollm2-135m-tools": {"oom_on_request": 2, "crash_mid_stream": 1,
                            "probe": "fail"}}

- ``oom_on_request: N``: the Nth request after the file last changed raises
  ``MemoryError`` before any output, as an out-of-memory engine would.
- ``crash_mid_stream: N``: on the Nth request (counted the same way) the
  process exits hard after its eighth streamed chunk, as a segfault or the
  kernel's OOM killer would. Earlier chunks left decode steps before, and the
  link is flushed before the exit, so output has surely reached the client:
  a crash before that is a failure before any output, which the gateway
  answers like ``oom_on_request`` (down the fallback chain).
- ``probe: "fail" | "hang"``: health probes fail at once, or never answer.
- ``crash_on_start: true``: the worker exits as soon as it starts (a broken
  install or model), so the supervisor's give-up rule can be seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import protocol as p

log = logging.getLogger("zoe.faults")
ENV = "ZOE_VLLM_FAULTS"
CRASH_AFTER_CHUNKS = 8


@dataclass
class Faults:
    model: str
    path: Path | None
    # Delivers what is queued on the link to the gateway; a hard exit drops it.
    flush: Callable[[], None]
    requests_seen: int = 0
    _last_raw: str | None = None

    @classmethod
    def from_env(cls, model: str, flush: Callable[[], None]) -> Faults:
        raw = os.environ.get(ENV)
        if raw:
            log.warning("fault injection is ON for %s (from %s)", model, raw)
        return cls(model=model, path=Path(raw) if raw else None, flush=flush)

    def current(self) -> dict[str, Any]:
        """This worker's armed faults; a changed file restarts the request count."""
        if self.path is None:
            return {}
        try:
            raw = self.path.read_text()
            data = json.loads(raw)
        except (OSError, ValueError):
            return {}
        if raw != self._last_raw:
            self._last_raw = raw
            self.requests_seen = 0
        entry = data.get(self.model, {}) if isinstance(data, dict) else {}
        return entry if isinstance(entry, dict) else {}

    async def wrap(self, handler: Any, req: p.Request) -> None:
        if self.path is None:
            await handler.run(req)
            return
        faults = self.current()
        self.requests_seen += 1
        n = self.requests_seen
        if faults.get("oom_on_request") == n:
            await handler.run(req, before_engine=self._oom)
            return
        if faults.get("crash_mid_stream") == n:
            chunks = 0

            def count_then_crash() -> None:
                nonlocal chunks
                chunks += 1
                if chunks == CRASH_AFTER_CHUNKS:
                    self._crash()
            await handler.run(req, on_chunk=count_then_crash)
            return
        await handler.run(req)

    @staticmethod
    def _oom() -> None:
        log.error("injected fault: out of memory")
        raise MemoryError("out of memory (injected fault)")

    def _crash(self) -> None:
        log.error("injected fault: crashing mid-stream")
        for h in logging.getLogger().handlers:
            h.flush()
        self.flush()
        os._exit(137)

    def on_start(self) -> None:
        if self.current().get("crash_on_start"):
            log.error("injected fault: crashing at start")
            os._exit(3)

    async def before_probe(self) -> None:
        mode = self.current().get("probe")
        if mode == "fail":
            raise RuntimeError("health probe failure (injected fault)")
        if mode == "hang":
            await asyncio.Event().wait()
