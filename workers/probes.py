"""Health probes: a real one-token generation per idle READY worker.

Local workers: three consecutive failures (or time-outs) → unload, wait 2 s,
reload (the seed's recovery). Remote backends have no process: three failures
mark them down (skipped by requests) and they are probed until they answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from shared import protocol as p
from shared.dispatch import WorkerUnavailable
from workers.handle import WorkerHandle
from workers.lifecycle import State

if TYPE_CHECKING:
    from workers.supervisor import Supervisor

log = logging.getLogger("zoe.supervisor")

PROBE_STRIKES = 3
RECOVERY_PAUSE_S = 2.0


class HealthProbes:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self._seq = 0
        self._waiters: dict[int, asyncio.Future[p.ProbeResult]] = {}

    def on_result(self, msg: p.ProbeResult) -> None:
        fut = self._waiters.pop(msg.probe_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def run(self) -> None:
        interval = self.sup.cfg.config.supervisor.health_interval_s
        while True:
            await asyncio.sleep(interval)
            await self.probe_all()

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(w) for w in self.sup.workers.values()
                               if w.state is State.READY and w.model.name not in self.sup.remotes))

    async def watch_remote(self, w: WorkerHandle) -> None:
        """Probe a remote backend forever: up after one success, down after three failures.

        A remote has no process to restart; while it is down requests skip it
        (straight to the fallback chain), and it is probed more often so that
        it comes back soon after its server does.
        """
        remote = self.sup.remotes[w.model.name]
        sup = self.sup.cfg.config.supervisor
        while True:
            if not (w.state is State.READY and remote.active):
                result = await remote.probe(sup.probe_timeout_s)
                self._record(w, result.ok, result.detail, result.seconds)
                if result.ok and w.state is not State.READY:
                    w.set_state(State.STARTING, f"probing {self.sup.cfg.url(w.model)}")
                    w.info.ready_at, w.info.ready_mono = time.time(), time.monotonic()
                    w.info.stage, w.info.detail = "ready", ""
                    w.set_state(State.READY, f"remote {w.model.backend.value} backend answers")
                elif not result.ok and w.state is State.READY and \
                        w.info.probe_failures >= PROBE_STRIKES:
                    w.info.probe_failures = 0
                    reason = (f"remote backend down: {PROBE_STRIKES} failed health probes "
                              f"({result.detail})")
                    w.info.stage, w.info.detail = "down", reason
                    w.set_state(State.STOPPED, reason)
            interval = sup.health_interval_s if w.state is State.READY else \
                min(sup.health_interval_s, 5.0)
            await asyncio.sleep(interval)

    def _record(self, w: WorkerHandle, ok: bool, detail: str,
                      seconds: float | None) -> None:
        w.info.probes_total += 1
        w.info.last_probe_at = time.time()
        w.info.last_probe_ok = ok
        w.info.last_probe_seconds = seconds
        if ok:
            w.info.probe_failures = 0
            return
        w.info.probe_failures += 1
        w.info.probe_failures_total += 1
        w.info.last_error = f"health probe failed: {detail}"
        log.warning("worker %s: health probe failed (%d/%d): %s", w.model.name,
                    w.info.probe_failures, PROBE_STRIKES, detail)

    def _silent(self, w: WorkerHandle) -> bool:
        """No message since the last request went in, for a whole probe timeout. A
        generating engine reports token counts several times a second, so a busy worker
        this quiet is hung (stopped, deadlocked) and its clients would wait forever."""
        d, name = self.sup.dispatcher, w.model.name
        last = max(d.last_heard.get(name, 0.0), d.last_used.get(name, 0.0))
        return time.monotonic() - last > self.sup.cfg.config.supervisor.probe_timeout_s

    async def probe(self, w: WorkerHandle) -> bool | None:
        """One health probe; None when skipped because the worker is busy."""
        if self.sup.dispatcher.active.get(w.model.name, 0) > 0:
            if not self._silent(w):
                w.info.probe_failures = 0  # it is talking: alive, whatever came before
                return None
            log.warning("worker %s: requests in flight but silent for over %.0fs; probing it",
                        w.model.name, self.sup.cfg.config.supervisor.probe_timeout_s)
        self._seq += 1
        pid = self._seq
        fut: asyncio.Future[p.ProbeResult] = asyncio.get_running_loop().create_future()
        self._waiters[pid] = fut
        timeout = self.sup.cfg.config.supervisor.probe_timeout_s
        ok, detail = False, ""
        try:
            await self.sup.dispatcher.send(w.model.name, p.Probe(probe_id=pid))
            result = await asyncio.wait_for(fut, timeout)
            ok, detail = result.ok, result.detail
            w.info.last_probe_seconds = result.seconds
        except TimeoutError:
            detail = f"no answer within {timeout:.0f}s"
        except WorkerUnavailable:
            detail = "worker not connected"
        finally:
            self._waiters.pop(pid, None)
        self._record(w, ok, detail, w.info.last_probe_seconds if ok else None)
        if ok:
            return True
        if w.info.probe_failures >= PROBE_STRIKES:
            w.info.probe_failures = 0
            self.sup.spawn_task(self.sup.restart_worker(
                w.model.name, f"{PROBE_STRIKES} failed health probes", RECOVERY_PAUSE_S))
        return False
