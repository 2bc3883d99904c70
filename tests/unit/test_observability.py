"""/metrics and /metrics/prometheus on a gateway whose workers are set up as data."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import build_app
from gateway.ops import status_table
from gateway.ops.gpu_probes import GpuReading
from gateway.ops.hardware import HardwareMonitor, HostReading
from gateway.ops.metrics import MAX_REASONS, Metrics, Outcome, Window
from gateway.ops.status import StatusView
from shared import config as c
from shared import protocol as p
from workers.supervision.lifecycle import State
from workers.supervision.supervisor import Supervisor

GIB = 1024**3
CONFIG = """
server: {{default_model: fast}}
paths: {{run: {tmp}/run, logs: {tmp}/logs}}
models:
  - {{name: fast, role: fast, path: /m/fast}}
  - {{name: tools, role: tools, path: /m/tools, fallback: fast}}
"""
HOST = HostReading(cpu_percent=12.5, per_core_percent=(10.0, 15.0),
                   memory_used_bytes=3 * GIB, memory_total_bytes=24 * GIB,
                   memory_available_bytes=21 * GIB, temperatures_c={},
                   worker_rss_bytes={"fast": 2 * GIB}, cpu_model="Test CPU")


class FixedGpu:
    def __init__(self, kind: str, readings: list[GpuReading]) -> None:
        self.kind, self.readings = kind, readings

    def read(self) -> list[GpuReading]:
        return self.readings

    def close(self) -> None:
        pass


class Gateway:
    """The app as built for serving, with handles on its supervisor and status view."""

    def __init__(self, cfg: c.LoadedConfig, hardware: HardwareMonitor) -> None:
        self.cfg = cfg
        self.sup = Supervisor(cfg)
        self.app = build_app(cfg, self.sup, hardware)
        self.status: StatusView = self.app.state.status
        self.metrics = self.status.metrics


MakeGateway = Callable[..., Gateway]


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[MakeGateway]:
    made: list[Gateway] = []

    def make(gpus: list[GpuReading] | None = None, host: HostReading = HOST) -> Gateway:
        gw = new_gateway(tmp_path, gpus, host)
        made.append(gw)
        return gw

    yield make
    for gw in made:  # an open ZeroMQ socket would keep the interpreter from exiting
        asyncio.run(gw.sup.dispatcher.close())


def new_gateway(tmp: Path, gpus: list[GpuReading] | None, host: HostReading) -> Gateway:
    cfg = c.parse(CONFIG.format(tmp=tmp), tmp / "test.yaml")
    kind = "nvidia" if gpus else "cpu"
    mon = HardwareMonitor(lambda: {}, gpu=FixedGpu(kind, gpus or []), host=lambda: host)
    mon.gpu.sample_once()
    mon.host.sample_once()
    return Gateway(cfg, mon)  # the monitor is never started: sampled once, above


def serving(gw: Gateway) -> None:
    """`fast` READY with engine figures and traffic; `tools` stopped."""
    w = gw.sup.handle("fast")
    for s in (State.STARTING, State.WARMING, State.READY):
        w.set_state(s)
    i = w.info
    i.pid, i.ready_at, i.load_seconds, i.warmup_seconds = 4242, time.time() - 90, 41.5, 1.2
    i.probes_total, i.probe_failures_total, i.last_probe_at = 7, 2, time.time() - 3
    i.last_probe_ok, i.last_probe_seconds, i.restarts, i.crashes = True, 0.08, 1, 1
    i.stats = p.Stats(model="fast", running=2, waiting=1, kv_cache_usage=0.25,
                      prefix_cache_hit_rate=0.5, active_requests=2, prompt_tokens=120,
                      generation_tokens=345)
    gw.sup.handle("tools").info.swapped_out = 1
    for n in range(1, 101):
        gw.metrics.first_token("fast", n / 1000)
        gw.metrics.request_done("fast", Outcome.OK, n / 100)
    gw.metrics.routed("fast", "default")
    gw.metrics.request_done("fast", Outcome.ERROR)


def scrape(gw: Gateway) -> str:
    r = TestClient(gw.app).get("/metrics/prometheus")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def value(text: str, metric: str, /, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {metric}{labels}")


def test_every_series_is_described_prefixed_and_labelled(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    serving(gw)
    text = scrape(gw)
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 40
    typed = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helped = dict(re.findall(r"^# HELP (\S+) (.+)$", text, re.M))
    assert set(typed) == set(helped)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            base = re.sub(r"_(bucket|sum|count|created)$", "", name)
            assert name in typed or base in typed, f"{name} has no # TYPE"
    for fam in families:
        assert fam.name.startswith("zoe_"), fam.name
        assert fam.documentation.strip(), fam.name
        per_model = fam.name.startswith(("zoe_worker", "zoe_model", "zoe_engine",
                                         "zoe_health_check", "zoe_active", "zoe_queued"))
        for s in fam.samples:
            if per_model:
                assert s.labels["model"] in {"fast", "tools"}, (fam.name, s.labels)


def test_worker_series_read_the_supervisor(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    serving(gw)
    text = scrape(gw)
    assert value(text, "zoe_worker_state", model="fast", state="ready") == 1
    assert value(text, "zoe_worker_state", model="fast", state="stopped") == 0
    assert value(text, "zoe_worker_state", model="tools", state="stopped") == 1
    assert value(text, "zoe_model_loaded", model="fast") == 1
    assert value(text, "zoe_model_loaded", model="tools") == 0
    assert value(text, "zoe_health_checks_total", model="fast") == 7
    assert value(text, "zoe_health_check_failures_total", model="fast") == 2
    assert value(text, "zoe_worker_restarts_total", model="fast") == 1
    assert value(text, "zoe_worker_swaps_total", model="tools", direction="out") == 1
    assert value(text, "zoe_worker_transitions_total", model="fast", from_state="warming",
                 to_state="ready") == 1
    assert value(text, "zoe_model_load_seconds", model="fast") == 41.5
    assert 89 < value(text, "zoe_worker_uptime_seconds", model="fast") < 300
    assert value(text, "zoe_worker_uptime_seconds", model="tools") == 0
    assert value(text, "zoe_engine_running_sequences", model="fast") == 2
    assert value(text, "zoe_engine_kv_cache_usage_ratio", model="fast") == 0.25
    assert value(text, "zoe_prompt_tokens_total", model="fast") == 120
    assert value(text, "zoe_generation_tokens_total", model="fast") == 345
    assert value(text, "zoe_worker_memory_rss_bytes", model="fast") == 2 * GIB
    assert value(text, "zoe_requests_total", model="fast", outcome="ok") == 100
    assert value(text, "zoe_time_to_first_token_seconds_count", model="fast") == 100
    # stopped worker: no engine figures rather than stale ones
    with pytest.raises(AssertionError):
        value(text, "zoe_generation_tokens_total", model="tools")
    # series exist at 0 before any traffic, so dashboards show 0 rather than nothing
    assert value(text, "zoe_requests_total", model="tools", outcome="unavailable") == 0
    assert value(text, "zoe_fallbacks_total", from_model="tools", to_model="fast") == 0


def test_cpu_hardware_is_labelled_cpu_and_unknown_temperature_is_explicit(
        make_gateway: MakeGateway) -> None:
    text = scrape(make_gateway())
    assert value(text, "zoe_hardware_info", kind="cpu", cpu="Test CPU") == 1
    assert value(text, "zoe_memory_used_bytes", kind="cpu", device="ram") == 3 * GIB
    assert value(text, "zoe_cpu_utilization_percent", kind="cpu") == 12.5
    assert value(text, "zoe_cpu_core_utilization_percent", kind="cpu", core="1") == 15
    assert math.isnan(value(text, "zoe_cpu_temperature_celsius", sensor="none"))
    assert "zoe_gpu_memory_used_bytes{" not in text


def test_gpu_hardware_series(make_gateway: MakeGateway) -> None:
    gpu = GpuReading(index=0, name="NVIDIA H200", kind="nvidia", memory_used_bytes=5 * GIB,
                     memory_total_bytes=140 * GIB, memory_free_bytes=135 * GIB,
                     utilization_percent=80.0, temperature_c=None)
    hot = HostReading(**{**HOST.__dict__, "temperatures_c": {"k10temp/Tctl": 51.0}})
    gw = make_gateway([gpu], host=hot)
    text = scrape(gw)
    labels = {"kind": "nvidia", "device": "0", "name": "NVIDIA H200"}
    assert value(text, "zoe_gpu_memory_used_bytes", **labels) == 5 * GIB
    assert value(text, "zoe_gpu_utilization_percent", **labels) == 80
    assert "zoe_gpu_temperature_celsius{" not in text  # not supported: absent, not 0
    assert value(text, "zoe_cpu_temperature_celsius", sensor="k10temp/Tctl") == 51
    doc = TestClient(gw.app).get("/metrics").json()
    assert doc["gpu"] == {"kind": "nvidia", "count": 1, "memory_used_bytes": 5 * GIB,
                          "memory_total_bytes": 140 * GIB, "memory_free_bytes": 135 * GIB,
                          "utilization_percent": 80.0, "temperature_c": None}
    assert doc["hardware"]["kind"] == "nvidia"


def test_metrics_json_document(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    serving(gw)
    r = TestClient(gw.app).get("/metrics")
    assert r.status_code == 200
    doc = r.json()
    assert doc["uptime_s"] >= 0 and doc["gpu"] is None
    assert doc["health"] == {"status": "ok", "default_model": "fast", "ready": ["fast"]}
    assert doc["requests"] == {"served": 100, "total": 101}
    hw = doc["hardware"]
    assert hw["kind"] == "cpu" and hw["gpus"] == []
    assert hw["memory"] == {"used_bytes": 3 * GIB, "total_bytes": 24 * GIB,
                            "available_bytes": 21 * GIB}
    assert hw["cpu"]["per_core_percent"] == [10.0, 15.0]
    assert hw["probes"]["host"]["ok"] and hw["probes"]["gpu"]["ok"]
    fast = doc["models"]["fast"]
    assert fast["state"] == "ready" and fast["loaded"] is True
    assert fast["active_requests"] == 0 and fast["queued"] == 0
    assert fast["failure_count"] == 3 and fast["restarts"] == 1
    assert fast["last_health_check"] == pytest.approx(time.time() - 3, abs=5)
    assert fast["tokens"] == {"prompt": 120, "generation": 345}
    assert fast["memory_rss_bytes"] == 2 * GIB
    assert fast["requests"]["served"] == 100
    assert fast["requests"]["by_outcome"]["error"] == 1
    assert fast["requests"]["routes"] == {"default": 1}
    assert fast["ttft_seconds"] == {"count": 100, "window": 100, "p50": 0.05, "p90": 0.09,
                                    "p99": 0.099}
    assert fast["latency_seconds"]["p50"] == 0.5
    tools = doc["models"]["tools"]
    assert tools["loaded"] is False and tools["tokens"] == {"prompt": None, "generation": None}
    assert tools["ttft_seconds"] is None and tools["uptime_s"] is None


def test_window_is_bounded_and_percentiles_are_nearest_rank() -> None:
    w = Window(size=10)
    for n in range(1, 1001):
        w.add(float(n))
    assert list(w.values) == [float(n) for n in range(991, 1001)]
    assert w.summary() == {"count": 1000, "window": 10, "p50": 995.0, "p90": 999.0,
                           "p99": 1000.0}
    assert Window().summary()["p50"] is None


def test_label_values_cannot_explode() -> None:
    m = Metrics(models=["fast"])
    for n in range(500):
        m.routed("fast", f"keyword:{n}")
        m.request_done(f"model-{n}", Outcome.OK, 0.1)
    reasons = {s.labels["reason"] for f in m.routes.collect() for s in f.samples}
    assert len(reasons) == MAX_REASONS + 1 and "other" in reasons
    assert set(m.requests_by_outcome()) == {"other"}
    assert set(m.latency_window) == {"other"}


def test_status_table_renders_workers(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    serving(gw)
    client = TestClient(gw.app)
    health, metrics = client.get("/health").json(), client.get("/metrics").json()
    out = status_table.render(health, metrics, now=time.time())
    lines = out.splitlines()
    assert lines[0].startswith("zoe-vllm ok, up ") and "no GPU (hardware: cpu)" in lines[0]
    assert re.split(r"\s{2,}", lines[2]) == list(status_table.COLUMNS)
    fast = re.split(r"\s{2,}", lines[3])
    assert fast[:6] == ["fast", "ready", "4242", "2.0 GiB", "0", "0"]
    assert fast[6].startswith("1m") and fast[7].endswith("ago ok") and fast[8] == "1"
    tools = re.split(r"\s{2,}", lines[4])
    assert tools[:4] == ["tools", "stopped", "-", "-"] and tools[7] == "never"


def test_a_hung_gpu_probe_does_not_stall_the_endpoints(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    release = threading.Event()

    class Hangs:
        kind = "nvidia"

        def read(self) -> list[GpuReading]:
            release.wait()  # like an NVML call that never returns
            return []

        def close(self) -> None:
            pass

    mon = HardwareMonitor(lambda: {}, interval_s=0.2, gpu=Hangs(), host=lambda: HOST)
    gw.status.hardware = mon
    mon.start()
    client = TestClient(gw.app)
    # Should a request wait on the probe, this un-hangs it and the timing check fails.
    safety = threading.Timer(10, release.set)
    safety.start()
    try:
        def reported() -> dict[str, Any] | None:
            t0 = time.monotonic()
            doc: dict[str, Any] = client.get("/metrics").json()
            assert time.monotonic() - t0 < 1, "/metrics waited on the hung probe"
            gpu = doc["hardware"]["probes"]["gpu"]
            return doc if "has not answered" in (gpu["error"] or "") else None

        deadline = time.monotonic() + 10
        while (doc := reported()) is None:
            assert time.monotonic() < deadline, "the hung probe was never reported"
        assert doc["hardware"]["memory"]["total_bytes"] == 24 * GIB  # host figures go on
        t0 = time.monotonic()
        text = client.get("/metrics/prometheus").text
        assert time.monotonic() - t0 < 1, "/metrics/prometheus waited on the hung probe"
        assert value(text, "zoe_hardware_probe_up", probe="gpu") == 0
        assert value(text, "zoe_hardware_probe_up", probe="host") == 1
    finally:
        safety.cancel()
        release.set()
        mon.stop()
