"""A worker as the supervisor sees it: its record (health as data) and handle.

:meth:`WorkerHandle.set_state` is the one place a state changes: it checks
the transition table, logs the change in the main log and in the worker's own
log, keeps it as an event, counts it, and tells listeners (metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from shared import protocol as p
from shared.config import Backend, ModelConfig
from workers.supervision import lifecycle
from workers.supervision.backoff import RestartPolicy
from workers.supervision.lifecycle import State

log = logging.getLogger("zoe.supervisor")


class Owner(Protocol):
    """What a handle needs from its supervisor."""

    listeners: list[Callable[[Event], None]]

    def write_worker_log(self, name: str, line: str) -> None: ...


@dataclass
class Event:
    at: float  # wall-clock time
    model: str
    old: State
    new: State
    reason: str


@dataclass
class WorkerInfo:
    """Health as data: what /health and /metrics read."""

    name: str
    state: State = State.STOPPED
    pid: int | None = None
    stage: p.Stage = p.Stage.NONE
    detail: str = ""
    ready_at: float | None = None
    ready_mono: float = 0.0
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    max_model_len: int | None = None
    restarts: int = 0
    crashes: int = 0
    probe_failures: int = 0  # consecutive
    probe_failures_total: int = 0
    probes_total: int = 0
    last_probe_at: float | None = None
    last_probe_ok: bool | None = None
    last_probe_seconds: float | None = None
    last_error: str = ""
    swapped_in: int = 0
    swapped_out: int = 0
    unloaded: bool = False  # by a client (Ollama keep_alive): its next request loads it
    stats: p.Stats | None = None
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=50))
    transitions: dict[tuple[str, str], int] = field(default_factory=dict)


class WorkerHandle:
    def __init__(self, sup: Owner, model: ModelConfig) -> None:
        self.sup = sup
        self.model = model
        self.info = WorkerInfo(name=model.name)
        self.proc: asyncio.subprocess.Process | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.policy = RestartPolicy()
        self.lock = asyncio.Lock()  # one lifecycle operation at a time
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self.exited.set()
        self.expected_exit = False

    @property
    def state(self) -> State:
        return self.info.state

    def set_state(self, new: State, reason: str = "") -> None:
        old = self.info.state
        if old is new:
            return
        lifecycle.check(old, new, remote=self.model.backend is not Backend.VLLM)
        self.info.state = new
        ev = Event(at=time.time(), model=self.model.name, old=old, new=new, reason=reason)
        self.info.events.append(ev)
        key = (old.value, new.value)
        self.info.transitions[key] = self.info.transitions.get(key, 0) + 1
        if new is State.READY:
            self.ready.set()
        else:
            self.ready.clear()
        line = f"worker {self.model.name}: {old.value} -> {new.value}"
        if reason:
            line += f" ({reason})"
        log.info("%s", line)
        self.sup.write_worker_log(self.model.name, line)
        for listener in self.sup.listeners:
            listener(ev)
