"""/health, /metrics and /metrics/prometheus agree in every state of the default model,
because all three are written from one health rule (gateway/ops/status.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import build_app
from shared import config as c
from workers.supervision.handle import WorkerHandle
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


def walk(h: WorkerHandle, *states: State) -> None:
    for s in states:
        h.set_state(s)


def ready(sup: Supervisor) -> None:
    walk(sup.handle("fast"), State.STARTING, State.WARMING, State.READY)


def unloaded_by_keep_alive(sup: Supervisor) -> None:
    ready(sup)
    sup.handle("fast").info.unloaded = True
    walk(sup.handle("fast"), State.DRAINING, State.STOPPING, State.STOPPED)


def swapped_out(sup: Supervisor) -> None:
    """The default model never is (the configuration forbids it); another one is."""
    ready(sup)
    walk(sup.handle("tools"), State.STARTING, State.READY, State.DRAINING, State.STOPPING,
         State.STOPPED)
    sup.displaced["tools"] = "vision"
    walk(sup.handle("vision"), State.STARTING, State.READY)


def failed(sup: Supervisor) -> None:
    walk(sup.handle("fast"), State.FAILED)


def restarting(sup: Supervisor) -> None:
    ready(sup)
    walk(sup.handle("fast"), State.STOPPED, State.STARTING)


def another_failed(sup: Supervisor) -> None:
    ready(sup)
    walk(sup.handle("vision"), State.FAILED)


Setup = Callable[[Supervisor], None]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[[Setup], TestClient]]:
    made: list[Supervisor] = []

    def build(setup: Setup) -> TestClient:
        sup = Supervisor(c.parse(CONFIG.format(tmp=tmp_path), tmp_path / "t.yaml"))
        made.append(sup)
        setup(sup)
        return TestClient(build_app(sup.cfg, sup))  # no lifespan: no worker starts

    yield build
    for sup in made:  # an open ZeroMQ socket would keep the interpreter from exiting
        sup.dispatcher.sock.close(linger=0)
        sup.dispatcher.ctx.term()


@pytest.mark.parametrize(("setup", "status", "code"), [
    (ready, "ok", 200),
    (unloaded_by_keep_alive, "ok", 200),
    (swapped_out, "ok", 200),
    (failed, "failed", 503),
    (restarting, "loading", 503),
    (another_failed, "degraded", 200),
])
def test_health_and_metrics_agree(make: Callable[[Setup], TestClient], setup: Setup,
                                  status: str, code: int) -> None:
    client = make(setup)
    health = client.get("/health")
    assert (health.status_code, health.json()["status"]) == (code, status)
    assert client.get("/metrics").json()["health"]["status"] == status
    text = client.get("/metrics/prometheus").text
    current = [s.labels["status"] for fam in text_string_to_metric_families(text)
               for s in fam.samples if s.name == "zoe_health_status" and s.value == 1]
    assert current == [status]
