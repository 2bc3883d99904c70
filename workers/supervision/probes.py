"""Health probes: a real one-token generation (or one embedding) per idle model.

A probe only judges; it changes nothing but the health record. :func:`probe`
returns a :class:`Verdict` and the supervisor acts on it: three consecutive
failures of a local worker mean unload, wait 2 s, reload (the seed's recovery);
three of a remote backend mark it down (requests skip it), and one success marks
it up again.
"""

from __future__ import annotations

import enum
import logging
import time

from shared import protocol as p
from workers.supervision.backends import ModelBackend
from workers.supervision.handle import WorkerInfo
from workers.supervision.lifecycle import State

log = logging.getLogger("zoe.supervisor")

PROBE_STRIKES = 3
RECOVERY_PAUSE_S = 2.0


class Verdict(enum.Enum):
    HEALTHY = "healthy"
    BUSY = "busy"  # not probed: requests in flight, and the worker is talking
    STRIKE = "strike"  # failed, fewer than PROBE_STRIKES times in a row
    RESTART = "restart"  # a local worker failed PROBE_STRIKES times: reload it
    DOWN = "down"  # a remote backend failed PROBE_STRIKES times: skip it
    UP = "up"  # a remote backend that was down answers again


def silent(backend: ModelBackend, timeout_s: float, now: float | None = None) -> bool:
    """No message since the last request went in, for a whole probe timeout. A
    generating engine reports token counts several times a second, so a busy worker
    this quiet is hung (stopped, deadlocked) and its clients would wait forever."""
    return (time.monotonic() if now is None else now) - backend.last_heard() > timeout_s


async def probe(backend: ModelBackend, info: WorkerInfo, *, remote: bool,
                timeout_s: float) -> Verdict:
    """Probe one model (READY, or a remote that is down) and record the result."""
    up = info.state is State.READY
    if backend.usage.active > 0:
        if remote and up:
            return Verdict.BUSY  # its answers are the proof of life
        if not remote and not silent(backend, timeout_s):
            info.probe_failures = 0  # it is talking: alive, whatever came before
            return Verdict.BUSY
        if not remote:
            log.warning("worker %s: requests in flight but silent for over %.0fs; probing it",
                        info.name, timeout_s)
    result = await backend.probe(timeout_s)
    record(info, result)
    if result.ok:
        return Verdict.HEALTHY if up else Verdict.UP
    if info.probe_failures >= PROBE_STRIKES and up:
        info.probe_failures = 0
        return Verdict.DOWN if remote else Verdict.RESTART
    return Verdict.STRIKE


def record(info: WorkerInfo, result: p.ProbeResult) -> None:
    info.probes_total += 1
    info.last_probe_at = time.time()
    info.last_probe_ok = result.ok
    info.last_probe_seconds = result.seconds if result.ok else None
    if result.ok:
        info.probe_failures = 0
        return
    info.probe_failures += 1
    info.probe_failures_total += 1
    info.last_error = f"health probe failed: {result.detail}"
    log.warning("worker %s: health probe failed (%d/%d): %s", info.name,
                info.probe_failures, PROBE_STRIKES, result.detail)
