"""One model in the main process, and the one owner of what is known about it.

A :class:`ModelSlot` holds the worker's handle (process, lifecycle state, health
record), the backend its requests go to (local or remote, one interface), its
admission gate, the ``keep_alive`` asked by the latest Ollama request and the
last probe verdict. The supervisor changes a slot; the request path and the
status views read it.
"""

from __future__ import annotations

import math
import time

from shared.config import Backend, ModelConfig
from workers.supervision.admission import Admission
from workers.supervision.backends import ModelBackend
from workers.supervision.eviction import Resident
from workers.supervision.handle import WorkerHandle, WorkerInfo
from workers.supervision.lifecycle import ALIVE, State
from workers.supervision.probes import Verdict


class ModelSlot:
    def __init__(self, model: ModelConfig, handle: WorkerHandle, backend: ModelBackend,
                 admission: Admission) -> None:
        self.model = model
        self.handle = handle
        self.backend = backend
        self.admission = admission
        # Seconds unused before unloading, from the latest Ollama keep_alive (None: the
        # server's policy; math.inf: never).
        self.keep_alive_s: float | None = None
        self.verdict: Verdict | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def state(self) -> State:
        return self.handle.state

    @property
    def info(self) -> WorkerInfo:
        return self.handle.info

    @property
    def remote(self) -> bool:
        return self.model.backend is not Backend.VLLM

    @property
    def in_flight(self) -> int:
        return self.backend.usage.active

    @property
    def last_used(self) -> float:
        """Monotonic time of the last request, or of becoming ready if later."""
        return max(self.backend.usage.last_used, self.info.ready_mono)

    def idle_limit(self) -> tuple[float | None, str]:
        """Seconds unused before this model is unloaded (None: never), and what set it."""
        if self.keep_alive_s is not None:
            return (None if math.isinf(self.keep_alive_s) else self.keep_alive_s), "keep_alive"
        if self.model.on_demand:
            return self.model.idle_unload_s, "idle_unload_s"
        return None, ""

    def idle_for(self, now: float | None = None) -> float:
        if self.in_flight:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self.last_used)

    def resident(self, now: float) -> Resident:
        limit, source = self.idle_limit()
        return Resident(name=self.name, alive=self.state in ALIVE and not self.remote,
                        busy=self.in_flight > 0, idle_s=self.idle_for(now),
                        idle_limit_s=limit if self.state is State.READY else None,
                        limit_from=source or "idle_unload_s", swap_out=self.model.swap_out)

    def expires_in(self, now: float | None = None) -> float:
        """Seconds until this model unloads if nothing uses it (math.inf: never)."""
        limit, _ = self.idle_limit()
        if limit is None:
            return math.inf
        return max(0.0, limit - self.idle_for(now))
