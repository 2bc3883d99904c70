from __future__ import annotations

from workers.supervision.backoff import RestartPolicy


def test_delay_doubles_for_crashes_close_together() -> None:
    policy = RestartPolicy(base_s=1, max_s=8, window_s=100, max_fast_failures=10)
    assert [policy.on_exit(t) for t in (0, 1, 2, 3, 4)] == [1, 2, 4, 8, 8]


def test_gives_up_after_repeated_fast_failures() -> None:
    policy = RestartPolicy(base_s=1, window_s=60, max_fast_failures=3)
    assert policy.on_exit(0) is not None
    assert policy.on_exit(10) is not None
    assert policy.on_exit(20) is None
    assert policy.recent_failures == 3


def test_old_crashes_are_forgotten() -> None:
    policy = RestartPolicy(base_s=1, window_s=60, max_fast_failures=3)
    policy.on_exit(0)
    policy.on_exit(10)
    assert policy.on_exit(200) == 1  # the two early crashes left the window
    assert policy.recent_failures == 1


def test_reset_starts_over() -> None:
    policy = RestartPolicy(base_s=2, window_s=60, max_fast_failures=3)
    policy.on_exit(0)
    policy.on_exit(1)
    policy.reset()
    assert policy.on_exit(2) == 2
