from __future__ import annotations

import itertools

import pytest

from workers.supervision.lifecycle import TRANSITIONS, State, TransitionError, check


def test_normal_life_is_allowed() -> None:
    path = [State.STOPPED, State.STARTING, State.WARMING, State.READY, State.DRAINING,
            State.STOPPING, State.STOPPED]
    for old, new in itertools.pairwise(path):
        check(old, new)


@pytest.mark.parametrize("old,new", [
    (State.STOPPED, State.READY), (State.FAILED, State.READY), (State.STOPPING, State.READY),
    (State.READY, State.STARTING), (State.WARMING, State.DRAINING),
])
def test_invalid_transitions_are_refused(old: State, new: State) -> None:
    with pytest.raises(TransitionError, match=f"{old.value} -> {new.value}"):
        check(old, new)


def test_every_state_has_a_way_out() -> None:
    assert set(TRANSITIONS) == set(State)
    assert all(TRANSITIONS[s] for s in State)


def test_a_crash_can_happen_in_every_live_state() -> None:
    for s in (State.STARTING, State.WARMING, State.READY, State.DRAINING, State.STOPPING):
        check(s, State.STOPPED)
