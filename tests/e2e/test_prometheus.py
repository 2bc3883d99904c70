"""A real Prometheus scrapes the real stack; every query of the Grafana dashboard has data.

Prometheus is Debian's package (`make test-deps` installs it); it runs here on
a free loopback port with a throw-away TSDB, scraping every second.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.conftest import REPO, Stack, prometheus_query, running_prometheus, wait_for

pytestmark = pytest.mark.e2e

DASHBOARD = REPO / "deploy/grafana/dashboards/zoe-vllm.json"
CHAT, TOOLS = "smollm2-135m-chat", "smollm2-135m-tools"
# Grafana's variables, as Grafana would expand them with "All" models selected.
VARIABLES = {"$__rate_interval": "1m", "$model": ".*", "${model}": ".*"}


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_prometheus(stack, tmp_path_factory.mktemp("prometheus")) as url:
        yield url


query = prometheus_query


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target, and label_values() variables as selectors."""
    dash = json.loads(DASHBOARD.read_text())
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            out.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
        assert m, f"variable {var['name']}: unsupported query {var['query']}"
        out.append((f"variable {var['name']}", f"count by ({m[2]}) ({m[1]})"))
    return out


def expand(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"unexpanded Grafana variable in {expr}"
    return expr


def traffic(stack: Stack) -> None:
    """Something for every request-path series: routes, outcomes, TTFT, tokens."""
    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{stack.v1}/chat/completions", json=body, timeout=120)

    hello = [{"role": "user", "content": "Say hello."}]
    assert post({"model": CHAT, "max_tokens": 8, "messages": hello}).status_code == 200
    assert post({"max_tokens": 8, "messages": hello}).status_code == 200  # routed: default
    assert post({"model": "hermes3:8b", "max_tokens": 8,  # alias of the tools model
                 "messages": hello}).status_code == 200
    with httpx.stream("POST", f"{stack.v1}/chat/completions", timeout=120, json={
            "model": CHAT, "max_tokens": 8, "stream": True, "messages": hello}) as r:
        assert r.status_code == 200
        assert any(line == "data: [DONE]" for line in r.iter_lines())
    assert post({"model": "no-such-model", "messages": hello}).status_code == 404


def test_every_dashboard_query_returns_data(stack: Stack, prometheus: str) -> None:
    wait_for(lambda: [r for r in query(prometheus, 'up{job="zoe-vllm"}')
                      if r["value"][1] == "1"], 60, "prometheus to scrape the stack")
    traffic(stack)
    queries = dashboard_queries()
    assert len(queries) >= 30
    missing: list[tuple[str, str]] = []

    def all_answer() -> bool:
        missing[:] = [(t, e) for t, e in queries if not query(prometheus, expand(e))]
        return not missing

    # Rates need two scrapes after the traffic; the scrape interval is 1 s.
    try:
        wait_for(all_answer, 60, "every dashboard query to return data", every=1)
    except AssertionError:
        raise AssertionError(f"dashboard queries without data: {missing}") from None


def test_dashboard_values_are_real(stack: Stack, prometheus: str) -> None:
    """Not only "some data": the figures agree with the stack and the machine."""
    wait_for(lambda: [r for r in query(prometheus, 'up{job="zoe-vllm"}')
                      if r["value"][1] == "1"], 60, "prometheus to scrape the stack")
    traffic(stack)
    doc = httpx.get(f"{stack.url}/metrics", timeout=10).json()
    kind = doc["hardware"]["kind"]
    (info,) = query(prometheus, expand(_expr("Hardware")))
    assert info["metric"]["kind"] == kind

    def series(title: str, index: int = 0) -> list[dict[str, Any]]:
        return query(prometheus, expand(_expr(title, index)))

    if kind == "cpu":  # no GPU: the GPU panels show RAM and CPU, labelled so
        (total,) = series("GPU memory", 1)
        assert total["metric"]["kind"] == "cpu"
        assert float(total["value"][1]) == psutil.virtual_memory().total
        (util,) = series("GPU utilization")
        assert util["metric"]["kind"] == "cpu" and 0 <= float(util["value"][1]) <= 100
        temps = series("GPU temperature")
        assert temps and all(t["metric"]["kind"] == "cpu" for t in temps)
        if not psutil.sensors_temperatures():
            assert [t["metric"]["sensor"] for t in temps] == ["none"]
            assert math.isnan(float(temps[0]["value"][1]))

    def generating() -> list[dict[str, Any]]:
        rows = series("Tokens per second")
        return [r for r in rows if r["metric"]["model"] == CHAT and float(r["value"][1]) > 0]

    def ttft() -> list[float]:
        rows = [r for r in series("Time to first token") if r["metric"]["model"] == CHAT]
        return [v for r in rows if not math.isnan(v := float(r["value"][1]))]

    def reasons() -> set[str]:
        rows = series("Route reasons")
        return {r["metric"]["reason"] for r in rows if float(r["value"][1]) > 0}

    assert wait_for(generating, 30, "a positive generation rate for the chat model")
    assert 0 < wait_for(ttft, 30, "a time-to-first-token p50 for the chat model")[0] < 60
    wait_for(lambda: {"explicit", "default", "alias"} <= reasons(), 30, "route reasons")
    states = {r["metric"]["model"]: r["metric"]["state"] for r in series("Worker state")}
    assert states[CHAT] == states[TOOLS] == "ready"


def _expr(title: str, index: int = 0) -> str:
    dash = json.loads(Path(DASHBOARD).read_text())
    for panel in dash["panels"]:
        if panel["title"] == title:
            expr: str = panel["targets"][index]["expr"]
            return expr
    raise AssertionError(f"no panel {title!r}")
