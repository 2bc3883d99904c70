"""workers/supervision/eviction.py: what to stop and what to restore, as a table of cases."""

from __future__ import annotations

from dataclasses import replace

import pytest

from workers.supervision.eviction import Plan, Resident, Stop, plan

FAST = Resident("fast", alive=True)
TOOLS = Resident("tools", alive=True)
VISION = Resident("vision", alive=False, idle_limit_s=300, swap_out="tools")


def models(*rs: Resident) -> dict[str, Resident]:
    return {r.name: r for r in rs}


CASES = [
    pytest.param(models(FAST, TOOLS, VISION), {}, "vision",
                 Plan(stop=(Stop("tools", "swapped out for vision"),),
                      displaced={"tools": "vision"}), id="loading swaps its victim out"),
    pytest.param(models(FAST, replace(TOOLS, alive=False), VISION), {}, "vision",
                 Plan(), id="a victim that is not loaded is not recorded"),
    pytest.param(models(FAST, replace(TOOLS, alive=False), replace(VISION, alive=True)),
                 {"tools": "vision"}, "vision", Plan(displaced={"tools": "vision"}),
                 id="the target itself is never restored from"),
    pytest.param(models(FAST, TOOLS, replace(VISION, alive=True, idle_s=10)), {}, None,
                 Plan(), id="under its idle limit it stays"),
    pytest.param(models(FAST, replace(TOOLS, alive=False),
                        replace(VISION, alive=True, idle_s=300)), {"tools": "vision"}, None,
                 Plan(stop=(Stop("vision", "idle for 300s (idle_unload_s)"),),
                      restore=("tools",)), id="idle: unloaded and its victim restored"),
    pytest.param(models(FAST, TOOLS, replace(VISION, alive=True, idle_s=900, busy=True)), {},
                 None, Plan(), id="busy is never idle"),
    pytest.param(models(FAST, replace(TOOLS, alive=False), VISION), {"tools": "vision"}, None,
                 Plan(restore=("tools",)), id="the displacer crashed: restore"),
    pytest.param(models(FAST, replace(TOOLS, idle_limit_s=0, limit_from="keep_alive")), {},
                 None, Plan(stop=(Stop("tools", "keep_alive 0", unloaded=True),)),
                 id="keep_alive 0"),
    pytest.param(models(replace(FAST, idle_s=61, idle_limit_s=60, limit_from="keep_alive")),
                 {}, None,
                 Plan(stop=(Stop("fast", "idle for 60s (keep_alive)", unloaded=True),)),
                 id="keep_alive duration ran out"),
    pytest.param(models(replace(FAST, idle_s=59, idle_limit_s=60, limit_from="keep_alive")),
                 {}, None, Plan(), id="keep_alive duration not yet out"),
    pytest.param(models(FAST, TOOLS), {}, None, Plan(), id="eager models without limits stay"),
]


@pytest.mark.parametrize(("residents", "displaced", "target", "expected"), CASES)
def test_plan(residents: dict[str, Resident], displaced: dict[str, str], target: str | None,
              expected: Plan) -> None:
    got = plan(residents, displaced, target)
    assert (got.stop, got.restore, dict(got.displaced)) == \
        (expected.stop, expected.restore, dict(expected.displaced))


def test_the_plan_does_not_change_what_it_was_given() -> None:
    displaced = {"tools": "vision"}
    plan(models(FAST, replace(TOOLS, alive=False), VISION), displaced)
    assert displaced == {"tools": "vision"}


def test_an_empty_plan_says_so() -> None:
    assert plan(models(FAST, TOOLS), {}).empty
    assert not plan(models(FAST, TOOLS, VISION), {}, "vision").empty
