"""Token counts from vLLM's stat-logger hook (shapes of vLLM 0.32's stats objects)."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec

from shared import protocol as p
from workers.engine.engine import EngineStats


def scheduler(running: int, waiting: int = 0) -> SimpleNamespace:
    return SimpleNamespace(num_running_reqs=running, num_waiting_reqs=waiting,
                           kv_cache_usage=0.125,
                           prefix_cache_stats=SimpleNamespace(queries=10, hits=4))


def iteration(prompt: int, generated: int) -> SimpleNamespace:
    return SimpleNamespace(num_prompt_tokens=prompt, num_generation_tokens=generated)


def test_tokens_accumulate_and_are_relayed() -> None:
    changes = 0

    def changed() -> None:
        nonlocal changes
        changes += 1

    s = EngineStats("m", on_change=changed)
    s.record(scheduler(1), iteration(prompt=17, generated=1))
    s.record(scheduler(1), iteration(prompt=0, generated=1))
    s.record(None, iteration(prompt=0, generated=1))  # iteration without scheduler stats
    s.record(scheduler(0), None)
    snap = s.snapshot(active_requests=0)
    assert (snap.prompt_tokens, snap.generation_tokens) == (17, 3)
    assert snap.running == 0 and snap.prefix_cache_hit_rate == 12 / 30
    # every record that moved a token or a queue asks the worker to publish
    assert changes == 4
    s.record(scheduler(0), iteration(0, 0))
    assert changes == 4  # nothing moved
    wire = p.decode(*p.encode(snap))
    assert wire == snap


def test_stats_from_an_older_worker_decode_with_zero_tokens() -> None:
    class OldStats(msgspec.Struct, frozen=True):
        model: str
        running: int
        waiting: int

    frames = [bytes([p.MsgType.STATS]), msgspec.msgpack.encode(OldStats("m", 1, 0))]
    msg = p.decode(*frames)
    assert isinstance(msg, p.Stats) and msg.generation_tokens == 0
