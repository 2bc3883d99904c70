"""Worker lifecycle: states and the only transitions allowed between them."""

from __future__ import annotations

import enum


class State(enum.Enum):
    STOPPED = "stopped"  # no process
    STARTING = "starting"  # process spawned: provisioning, loading the engine
    WARMING = "warming"  # engine up, running the warm-up generations
    READY = "ready"  # serving
    DRAINING = "draining"  # no new requests; in-flight ones finish
    STOPPING = "stopping"  # asked to exit; SIGTERM then SIGKILL
    FAILED = "failed"  # gave up after repeated fast failures; needs a reload


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({S.STARTING, S.FAILED}),
    S.STARTING: frozenset({S.WARMING, S.READY, S.STOPPING, S.STOPPED}),
    S.WARMING: frozenset({S.READY, S.STOPPING, S.STOPPED}),
    S.READY: frozenset({S.DRAINING, S.STOPPING, S.STOPPED}),
    S.DRAINING: frozenset({S.STOPPING, S.READY, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.FAILED: frozenset({S.STARTING}),
}


# A remote backend has no process: its probes find it up or down.
REMOTE_TRANSITIONS: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({S.READY}),
    S.READY: frozenset({S.STOPPED}),
}


class TransitionError(RuntimeError):
    """A lifecycle change that the table does not allow."""


def check(current: State, new: State, *, remote: bool = False) -> None:
    table = REMOTE_TRANSITIONS if remote else TRANSITIONS
    if new not in table.get(current, frozenset()):
        raise TransitionError(f"{current.value} -> {new.value} is not a valid transition")


# States in which a process exists and may hold memory.
ALIVE = frozenset({S.STARTING, S.WARMING, S.READY, S.DRAINING, S.STOPPING})
