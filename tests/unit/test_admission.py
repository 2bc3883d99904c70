from __future__ import annotations

import asyncio

import pytest

from workers.supervision.admission import Admission, Busy, QueueTimeout


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_admits_up_to_the_limit_then_queues_in_order() -> None:
    async def scenario() -> list[int]:
        gate = Admission(limit=2, max_queued=5, queue_timeout_s=5)
        await gate.acquire()
        await gate.acquire()
        order: list[int] = []

        async def waiter(i: int) -> None:
            await gate.acquire()
            order.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        assert (gate.running, gate.queued) == (2, 3)
        for _ in range(3):
            gate.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert (gate.running, gate.queued) == (2, 0)
        return order

    assert run(scenario()) == [0, 1, 2]


def test_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        gate = Admission(limit=1, max_queued=1, queue_timeout_s=5)
        await gate.acquire()
        queued = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            await gate.acquire()
        assert gate.refused == 1
        gate.release()
        await queued
        assert (gate.running, gate.queued) == (1, 0)

    run(scenario())


def test_waiting_past_the_bound_times_out_and_leaves_the_line() -> None:
    async def scenario() -> None:
        gate = Admission(limit=1, max_queued=3, queue_timeout_s=0.01)
        await gate.acquire()
        with pytest.raises(QueueTimeout):
            await gate.acquire()
        assert (gate.running, gate.queued, gate.timed_out) == (1, 0, 1)
        gate.release()
        assert gate.running == 0

    run(scenario())


def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    async def scenario() -> None:
        gate = Admission(limit=1, max_queued=3, queue_timeout_s=5)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.queued == 0
        gate.release()
        assert gate.running == 0
        await gate.acquire()  # the slot is free again
        assert gate.running == 1

    run(scenario())


def test_slot_handed_over_while_cancelled_is_passed_on() -> None:
    async def scenario() -> None:
        gate = Admission(limit=1, max_queued=3, queue_timeout_s=5)
        await gate.acquire()
        first = asyncio.create_task(gate.acquire())
        second = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        gate.release()  # hands the slot to `first`...
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await second  # the slot must reach `second`
        assert (gate.running, gate.queued) == (1, 0)

    run(scenario())
