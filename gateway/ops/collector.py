"""Prometheus series read at scrape time from the supervisor and the hardware monitor.

Nothing here keeps state of its own: each scrape reads the
:class:`~gateway.ops.status.StatusView` (the model slots, their health rule) and the
hardware monitor's last sample, so the exposition can never disagree with
``/health`` and a scrape costs a few dictionary reads. The request-path
series (routing, outcomes, fallbacks, latency histograms) live in
:class:`gateway.ops.metrics.Metrics`, in the same registry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.ops.hardware import HardwareSnapshot
from gateway.ops.status import StatusView
from workers.supervision.lifecycle import State

M = ["model"]
SERVING = (State.READY, State.DRAINING)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels if labels is not None else M)


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels if labels is not None else M)


class GatewayCollector(Collector):
    def __init__(self, status: StatusView, clock: Callable[[], float] = time.time) -> None:
        self.status = status
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        up = _gauge("zoe_uptime_seconds", "Seconds since the gateway started", [])
        up.add_metric([], now - self.status.started)
        yield up
        health = self.status.health()
        healthy = _gauge("zoe_health_status", "The server's health as /health reports it: "
                         "1 for the current status, 0 for the others", ["status"])
        for s in ("ok", "loading", "degraded", "failed"):
            healthy.add_metric([s], 1.0 if health.status == s else 0.0)
        yield healthy
        hw = self.status.hardware.snapshot()
        yield from self.workers(now, hw)
        yield from self.engines()
        yield from hardware_families(hw)

    def workers(self, now: float, hw: HardwareSnapshot) -> Iterator[Metric]:
        info = _gauge("zoe_model_info", "Configured models (value 1); backend=vllm is a "
                      "local worker", ["model", "role", "backend", "on_demand"])
        state = _gauge("zoe_worker_state", "Worker lifecycle state: 1 for the current state, "
                       "0 for the others", ["model", "state"])
        loaded = _gauge("zoe_model_loaded", "1 when the model's worker is READY to serve")
        active = _gauge("zoe_active_requests", "Requests in flight to the model's worker")
        queued = _gauge("zoe_queued_requests", "Requests waiting for a slot (backpressure "
                        "queue)")
        refused = _counter("zoe_admission_refused", "Requests refused because the queue "
                           "was full")
        timeouts = _counter("zoe_admission_timeouts", "Requests that waited the whole "
                            "queue timeout")
        probes = _counter("zoe_health_checks", "Health probes run")
        probe_fail = _counter("zoe_health_check_failures", "Health probes failed")
        consecutive = _gauge("zoe_health_check_consecutive_failures", "Consecutive failed "
                             "health probes (three restart the worker)")
        last_at = _gauge("zoe_health_check_last_timestamp_seconds", "Unix time of the last "
                         "health probe")
        last_ok = _gauge("zoe_health_check_last_ok", "1 if the last health probe passed")
        last_s = _gauge("zoe_health_check_last_duration_seconds", "Duration of the last "
                        "health probe")
        restarts = _counter("zoe_worker_restarts", "Worker restarts (crash, failed probes, "
                            "out of memory)")
        crashes = _counter("zoe_worker_crashes", "Unexpected worker process exits")
        swaps = _counter("zoe_worker_swaps", "On-demand swaps: direction=in (loaded on "
                         "demand) or out (displaced)", ["model", "direction"])
        transitions = _counter("zoe_worker_transitions", "Lifecycle transitions",
                               ["model", "from_state", "to_state"])
        load = _gauge("zoe_model_load_seconds", "Duration of the last model load (process "
                      "start to engine ready)")
        warm = _gauge("zoe_model_warmup_seconds", "Duration of the last warm-up")
        uptime = _gauge("zoe_worker_uptime_seconds", "Seconds since the worker became READY "
                        "(0 when not serving)")
        rss = _gauge("zoe_worker_memory_rss_bytes", "Resident memory of the worker's process "
                     "tree (worker, vLLM EngineCore and its children)")
        host = hw.host
        for name, w in self.status.slots.items():
            i, g = w.info, w.admission
            info.add_metric([name, w.model.role.value, w.model.backend.value,
                             str(w.model.on_demand).lower()], 1)
            for s in State:
                state.add_metric([name, s.value], 1.0 if i.state is s else 0.0)
            loaded.add_metric([name], 1.0 if i.state is State.READY else 0.0)
            active.add_metric([name], w.in_flight)
            queued.add_metric([name], g.queued)
            refused.add_metric([name], g.refused)
            timeouts.add_metric([name], g.timed_out)
            probes.add_metric([name], i.probes_total)
            probe_fail.add_metric([name], i.probe_failures_total)
            consecutive.add_metric([name], i.probe_failures)
            if i.last_probe_at is not None:
                last_at.add_metric([name], i.last_probe_at)
                last_ok.add_metric([name], 1.0 if i.last_probe_ok else 0.0)
            if i.last_probe_seconds is not None:
                last_s.add_metric([name], i.last_probe_seconds)
            restarts.add_metric([name], i.restarts)
            crashes.add_metric([name], i.crashes)
            swaps.add_metric([name, "in"], i.swapped_in)
            swaps.add_metric([name, "out"], i.swapped_out)
            for (old, new), n in list(i.transitions.items()):
                transitions.add_metric([name, old, new], n)
            if i.load_seconds is not None:
                load.add_metric([name], i.load_seconds)
            if i.warmup_seconds is not None:
                warm.add_metric([name], i.warmup_seconds)
            serving = i.state in SERVING and i.ready_at is not None
            uptime.add_metric([name], now - i.ready_at if serving and i.ready_at else 0.0)
            if host is not None and name in host.worker_rss_bytes:
                rss.add_metric([name], host.worker_rss_bytes[name])
        yield from (info, state, loaded, active, queued, refused, timeouts, probes, probe_fail,
                    consecutive, last_at, last_ok, last_s, restarts, crashes, swaps,
                    transitions, load, warm, uptime, rss)

    def engines(self) -> Iterator[Metric]:
        running = _gauge("zoe_engine_running_sequences", "Sequences the vLLM engine is "
                         "running")
        waiting = _gauge("zoe_engine_waiting_sequences", "Sequences waiting inside the vLLM "
                         "engine")
        kv = _gauge("zoe_engine_kv_cache_usage_ratio", "Fraction of the KV cache in use (0-1)")
        prefix = _gauge("zoe_engine_prefix_cache_hit_ratio", "Prefix-cache hit rate since the "
                        "worker started (0-1)")
        prompt = _counter("zoe_prompt_tokens", "Prompt tokens processed by the engine since "
                          "the worker started (warm-up and probes included; resets when the "
                          "worker restarts)")
        gen = _counter("zoe_generation_tokens", "Tokens generated by the engine since the "
                       "worker started (warm-up and probes included; resets when the worker "
                       "restarts)")
        for name, w in self.status.slots.items():
            s = w.info.stats
            if s is None:
                continue  # no worker process: no engine figures
            running.add_metric([name], s.running)
            waiting.add_metric([name], s.waiting)
            kv.add_metric([name], s.kv_cache_usage)
            prefix.add_metric([name], s.prefix_cache_hit_rate)
            prompt.add_metric([name], s.prompt_tokens)
            gen.add_metric([name], s.generation_tokens)
        yield from (running, waiting, kv, prefix, prompt, gen)


def hardware_families(hw: HardwareSnapshot) -> Iterator[Metric]:
    """GPU series carry kind=nvidia|jetson; host (CPU/RAM) series carry kind="cpu"."""
    host = hw.host
    info = _gauge("zoe_hardware_info", "What the hardware figures come from: kind=jetson "
                  "(jtop), nvidia (NVML) or cpu (no GPU; psutil only)", ["kind", "cpu"])
    info.add_metric([hw.kind, host.cpu_model if host else ""], 1)
    yield info
    g = ["kind", "device", "name"]
    used = _gauge("zoe_gpu_memory_used_bytes", "GPU memory in use (on a Jetson: RAM held "
                  "by the GPU)", g)
    total = _gauge("zoe_gpu_memory_total_bytes", "GPU memory (on a Jetson: the shared RAM)", g)
    free = _gauge("zoe_gpu_memory_free_bytes", "GPU memory free", g)
    util = _gauge("zoe_gpu_utilization_percent", "GPU utilization (0-100)", g)
    temp = _gauge("zoe_gpu_temperature_celsius", "GPU temperature", g)
    for d in hw.gpus:
        labels = [d.kind, str(d.index), d.name]
        for fam, value in ((used, d.memory_used_bytes), (total, d.memory_total_bytes),
                           (free, d.memory_free_bytes), (util, d.utilization_percent),
                           (temp, d.temperature_c)):
            if value is not None:
                fam.add_metric(labels, value)
    yield from (used, total, free, util, temp)
    cpu = _gauge("zoe_cpu_utilization_percent", "Host CPU utilization, all cores (0-100)",
                 ["kind"])
    core = _gauge("zoe_cpu_core_utilization_percent", "Host CPU utilization per core "
                  "(0-100)", ["kind", "core"])
    h = ["kind", "device"]
    mem_used = _gauge("zoe_memory_used_bytes", "Host RAM in use (total - available)", h)
    mem_total = _gauge("zoe_memory_total_bytes", "Host RAM", h)
    mem_avail = _gauge("zoe_memory_available_bytes", "Host RAM available", h)
    ctemp = _gauge("zoe_cpu_temperature_celsius", "Host temperature sensors; one NaN "
                   "sample with sensor=\"none\" when the host exposes no sensor",
                   ["kind", "sensor"])
    if host is not None:
        cpu.add_metric(["cpu"], host.cpu_percent)
        for n, pct in enumerate(host.per_core_percent):
            core.add_metric(["cpu", str(n)], pct)
        mem_used.add_metric(["cpu", "ram"], host.memory_used_bytes)
        mem_total.add_metric(["cpu", "ram"], host.memory_total_bytes)
        mem_avail.add_metric(["cpu", "ram"], host.memory_available_bytes)
        for sensor, c in host.temperatures_c.items():
            ctemp.add_metric(["cpu", sensor], c)
        if not host.temperatures_c:
            # Explicitly "unknown" rather than absent, so dashboards can say so.
            ctemp.add_metric(["cpu", "none"], math.nan)
    yield from (cpu, core, mem_used, mem_total, mem_avail, ctemp)
    probe_up = _gauge("zoe_hardware_probe_up", "1 if the hardware probe's last reading "
                      "succeeded", ["probe"])
    probe_s = _gauge("zoe_hardware_probe_duration_seconds", "How long the probe's last "
                     "reading took", ["probe"])
    for name, r in hw.probes.items():
        probe_up.add_metric([name], 1.0 if r.error is None and r.value is not None else 0.0)
        if r.seconds is not None:
            probe_s.add_metric([name], r.seconds)
    yield from (probe_up, probe_s)
