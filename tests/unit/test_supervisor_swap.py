"""The supervisor carrying out eviction plans: which model an on-demand load swaps out,
and which it gives back.

No processes: the supervisor's own start_worker / drain_and_stop / spawn_task are stubbed
to record what they were asked and to move the workers through their states."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from shared import config as c
from workers.supervision.lifecycle import State
from workers.supervision.supervisor import Supervisor

CONFIG = """
server: {{default_model: fast}}
paths: {{run: {tmp}/run, logs: {tmp}/logs}}
models:
  - {{name: fast, role: fast, path: /m/fast}}
  - {{name: tools, role: tools, path: /m/tools}}
  - {{name: vision, role: vision, path: /m/vision, on_demand: true, swap_out: tools}}
"""


class Stubbed:
    """A Supervisor whose lifecycle operations only record and change states."""

    def __init__(self, tmp: Path) -> None:
        self.sup = Supervisor(c.parse(CONFIG.format(tmp=tmp), tmp / "test.yaml"))
        self.start_ok = True
        self.started: list[tuple[str, str]] = []
        self.stopped: list[tuple[str, str]] = []
        self.spawned: list[Coroutine[Any, Any, Any]] = []
        self.sup.start_worker = self.start_worker  # type: ignore[method-assign]
        self.sup.drain_and_stop = self.drain_and_stop  # type: ignore[method-assign]
        self.sup.spawn_task = self.spawn_task  # type: ignore[method-assign]

    async def start_worker(self, name: str, reason: str = "start") -> bool:
        self.started.append((name, reason))
        w = self.sup.handle(name)
        w.set_state(State.STARTING, reason)
        if not self.start_ok:
            w.set_state(State.STOPPED, "exited with code 1")
            return False
        w.set_state(State.READY, "loaded")
        return True

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.spawned.append(coro)  # run by run_spawned, not behind the test's back

    async def drain_and_stop(self, w: Any, reason: str) -> None:
        self.stopped.append((w.model.name, reason))
        w.set_state(State.DRAINING, reason)
        w.set_state(State.STOPPING, reason)
        w.set_state(State.STOPPED, "stopped")

    async def run_spawned(self) -> None:
        """Run what the supervisor spawned."""
        spawned, self.spawned = self.spawned, []
        for coro in spawned:
            await coro

    async def unload(self, name: str) -> None:
        """``name`` goes (idle, or crashed); the next eviction pass reacts."""
        await self.drain_and_stop(self.sup.handle(name), "idle")
        await self.sup.evict()

    def state(self, name: str) -> State:
        return self.sup.handle(name).state

    async def close(self) -> None:
        for coro in self.spawned:
            coro.close()
        await self.sup.dispatcher.close()


def scenario(tmp: Path, go: Any) -> None:
    async def main() -> None:
        s = Stubbed(tmp)
        try:
            await go(s)
        finally:
            await s.close()
    asyncio.run(main())


def test_a_loaded_model_is_swapped_out_and_given_back(tmp_path: Path) -> None:
    async def go(s: Stubbed) -> None:
        await s.start_worker("tools")
        assert await s.sup.load_on_demand("vision")
        assert s.stopped == [("tools", "swapped out for vision")]
        assert s.sup.displaced == {"tools": "vision"}
        assert s.sup.handle("tools").info.swapped_out == 1
        assert s.sup.handle("vision").info.swapped_in == 1
        assert (s.state("tools"), s.state("vision")) == (State.STOPPED, State.READY)
        # the vision model unloads (its idle unloader ends so): tools comes back
        await s.unload("vision")
        await s.run_spawned()
        assert s.started[-1] == ("tools", "restored after vision unloaded")
        assert s.state("tools") is State.READY and s.sup.displaced == {}

    scenario(tmp_path, go)


@pytest.mark.parametrize("how", ["never started", "unloaded by a client"])
def test_a_model_that_was_not_loaded_is_not_loaded_later(tmp_path: Path, how: str) -> None:
    """Only a model that was alive is recorded as swapped out: one that was not (unloaded
    by keep_alive, or never started) stays as it was when the on-demand model unloads."""
    async def go(s: Stubbed) -> None:
        if how == "unloaded by a client":
            await s.start_worker("tools")
            await s.drain_and_stop(s.sup.handle("tools"), "unloaded by a client")
            s.stopped.clear()
        assert s.state("tools") is State.STOPPED
        assert await s.sup.load_on_demand("vision")
        assert s.stopped == []  # nothing to stop
        assert s.sup.displaced == {}
        assert s.sup.handle("tools").info.swapped_out == 0
        await s.unload("vision")
        await s.run_spawned()
        assert [name for name, _ in s.started].count("tools") == \
            (1 if how == "unloaded by a client" else 0)
        assert s.state("tools") is State.STOPPED

    scenario(tmp_path, go)


def test_a_failed_load_gives_the_swapped_out_model_back_at_once(tmp_path: Path) -> None:
    async def go(s: Stubbed) -> None:
        await s.start_worker("tools")
        s.start_ok = False
        assert not await s.sup.load_on_demand("vision")
        assert s.stopped == [("tools", "swapped out for vision")]
        assert s.sup.displaced == {}  # already handed back...
        s.start_ok = True
        await s.run_spawned()  # ...by the start it spawned
        assert s.started[-1] == ("tools", "restored after vision unloaded")
        assert s.state("tools") is State.READY

    scenario(tmp_path, go)


def test_a_ready_on_demand_model_swaps_nothing(tmp_path: Path) -> None:
    async def go(s: Stubbed) -> None:
        await s.start_worker("tools")
        assert await s.sup.load_on_demand("vision")
        s.stopped.clear()
        assert await s.sup.load_on_demand("vision")  # already READY
        assert s.stopped == [] and s.sup.handle("vision").info.swapped_in == 1

    scenario(tmp_path, go)
