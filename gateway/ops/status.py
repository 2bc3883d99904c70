"""The read-only status of the server: one health rule, one view of every model.

``/health``, ``/metrics``, ``/metrics/prometheus`` (:mod:`gateway.ops.collector`),
Ollama's ``/api/ps`` and ``zoe-vllm status`` (which reads ``/health``) are all written
from a :class:`StatusView`, so they cannot disagree. It reads the supervisor's model
slots, the request-path metrics and the hardware monitor's last sample (taken in
background threads: a request never waits on a hardware probe). The JSON shapes are
documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.ops.hardware import HardwareMonitor, HardwareSnapshot
from gateway.ops.metrics import Metrics, Outcome
from shared.config import LoadedConfig, Role, fallback_chain
from workers.supervision.lifecycle import State
from workers.supervision.slot import ModelSlot

LOADED = (State.READY, State.DRAINING)


@dataclass(frozen=True)
class Health:
    status: str  # ok | loading | degraded | failed
    ok: bool  # /health answers 200

    @property
    def code(self) -> int:
        return 200 if self.ok else 503


def health(default: ModelSlot, slots: Mapping[str, ModelSlot]) -> Health:
    """The one health rule. Healthy when the default model is READY, or was unloaded by a
    client's keep_alive (its next request loads it again; the default model is never
    swapped out, the configuration forbids it). A FAILED model anywhere makes it
    "degraded", or "failed" when the default is not serving."""
    unloaded = default.state is State.STOPPED and default.info.unloaded
    ok = default.state is State.READY or unloaded
    if any(s.state is State.FAILED for s in slots.values()):
        return Health("degraded" if ok else "failed", ok)
    return Health("ok" if ok else "loading", ok)


class StatusView:
    def __init__(self, cfg: LoadedConfig, slots: Mapping[str, ModelSlot], metrics: Metrics,
                 hardware: HardwareMonitor | None = None) -> None:
        self.cfg = cfg
        self.slots = slots
        self.metrics = metrics
        self.hardware = hardware if hardware is not None else HardwareMonitor(self.worker_pids)
        self.started = time.time()
        prime_series(metrics, cfg)

    def worker_pids(self) -> dict[str, int | None]:
        # Read from the sampler thread: plain attribute reads of a fixed dict.
        return {name: s.info.pid for name, s in self.slots.items()}

    def health(self) -> Health:
        return health(self.slots[self.cfg.default_model.name], self.slots)

    def health_body(self) -> dict[str, Any]:
        h = self.health()
        return {"status": h.status, "default_model": self.cfg.default_model.name,
                "uptime_s": round(time.time() - self.started, 1),
                "workers": self.models()}

    def models(self) -> dict[str, Any]:
        out = {}
        for name, s in self.slots.items():
            i = s.info
            out[name] = {"state": i.state.value, "role": s.model.role.value, "pid": i.pid,
                         "stage": i.stage.value, "detail": i.detail, "restarts": i.restarts,
                         "failures": i.probe_failures, "last_error": i.last_error or None,
                         "on_demand": s.model.on_demand,
                         "active_requests": s.in_flight,
                         "queued": s.admission.queued,
                         "crashes": i.crashes, "swapped_in": i.swapped_in,
                         "swapped_out": i.swapped_out,
                         "verdict": None if s.verdict is None else s.verdict.value,
                         "probes": {"total": i.probes_total, "failed": i.probe_failures_total,
                                    "last_at": i.last_probe_at, "last_ok": i.last_probe_ok,
                                    "last_seconds": i.last_probe_seconds},
                         "engine": None if i.stats is None else {
                             "running": i.stats.running, "waiting": i.stats.waiting,
                             "kv_cache_usage": i.stats.kv_cache_usage,
                             "prefix_cache_hit_rate": i.stats.prefix_cache_hit_rate,
                             "worker_requests": i.stats.active_requests}}
        return out

    def loaded(self) -> list[ModelSlot]:
        """The models holding memory and serving (Ollama's ``/api/ps``)."""
        return [s for s in self.slots.values() if s.state in LOADED]

    def metrics_document(self) -> dict[str, Any]:
        now = time.time()
        hw = self.hardware.snapshot()
        outcomes = self.metrics.requests_by_outcome()
        routes = self.metrics.routes_by_reason()
        models = self.models()
        for name, doc in models.items():
            models[name] = {**doc, **self._model_extra(name, now, hw, outcomes.get(name, {}),
                                                       routes.get(name, {}))}
        served = sum(o.get("ok", 0) for o in outcomes.values())
        return {
            "uptime_s": round(now - self.started, 1),
            "started_at": self.started,
            "health": {"status": self.health().status,
                       "default_model": self.cfg.default_model.name,
                       "ready": [n for n, s in self.slots.items() if s.state is State.READY]},
            "requests": {"served": served,
                         "total": sum(sum(o.values()) for o in outcomes.values())},
            "gpu": gpu_summary(hw),
            "hardware": hardware_json(hw, now),
            "models": models,
        }

    def _model_extra(self, name: str, now: float, hw: HardwareSnapshot,
                     outcomes: dict[str, int], routes: dict[str, int]) -> dict[str, Any]:
        i = self.slots[name].info
        serving = i.state in LOADED and i.ready_at is not None
        ttft = self.metrics.ttft_window.get(name)
        latency = self.metrics.latency_window.get(name)
        return {
            "loaded": i.state is State.READY,
            "failure_count": i.probe_failures_total + i.crashes,
            "last_health_check": i.last_probe_at,
            "uptime_s": round(now - i.ready_at, 1) if serving and i.ready_at else None,
            "load_seconds": i.load_seconds,
            "warmup_seconds": i.warmup_seconds,
            "memory_rss_bytes": None if hw.host is None else hw.host.worker_rss_bytes.get(name),
            "requests": {"served": outcomes.get("ok", 0), "by_outcome": outcomes,
                         "routes": routes},
            "tokens": {"prompt": None if i.stats is None else i.stats.prompt_tokens,
                       "generation": None if i.stats is None else i.stats.generation_tokens},
            "ttft_seconds": ttft.summary() if ttft else None,
            "latency_seconds": latency.summary() if latency else None,
        }


def prime_series(m: Metrics, cfg: LoadedConfig) -> None:
    """Create every bounded label combination at 0, so dashboards show 0, not "no data"."""
    for model in cfg.models:
        for outcome in Outcome:
            m.requests.labels(model.name, outcome.value)
        m.ttft.labels(model.name)
        m.latency.labels(model.name)
        if model.role is Role.EMBEDDING:
            m.embedding_inputs.labels(model.name)
            m.embedding_tokens.labels(model.name)
        chain = [model.name, *fallback_chain(cfg.config, model.name)]
        for src, dst in itertools.pairwise(chain):
            m.fallbacks.labels(src, dst)


def gpu_summary(hw: HardwareSnapshot) -> dict[str, Any] | None:
    """The seed's ``.gpu``: totals over all GPUs, or null on a machine without one."""
    if not hw.gpus:
        return None

    def total(attr: str) -> int | None:
        values = [getattr(d, attr) for d in hw.gpus if getattr(d, attr) is not None]
        return sum(values) if values else None

    utils = [d.utilization_percent for d in hw.gpus if d.utilization_percent is not None]
    temps = [d.temperature_c for d in hw.gpus if d.temperature_c is not None]
    return {"kind": hw.kind, "count": len(hw.gpus),
            "memory_used_bytes": total("memory_used_bytes"),
            "memory_total_bytes": total("memory_total_bytes"),
            "memory_free_bytes": total("memory_free_bytes"),
            "utilization_percent": round(sum(utils) / len(utils), 1) if utils else None,
            "temperature_c": max(temps) if temps else None}


def hardware_json(hw: HardwareSnapshot, now: float) -> dict[str, Any]:
    host = hw.host
    return {
        "kind": hw.kind,
        "gpus": [{"index": d.index, "name": d.name, "kind": d.kind,
                  "memory_used_bytes": d.memory_used_bytes,
                  "memory_total_bytes": d.memory_total_bytes,
                  "memory_free_bytes": d.memory_free_bytes,
                  "utilization_percent": d.utilization_percent,
                  "temperature_c": d.temperature_c} for d in hw.gpus],
        "cpu": None if host is None else {
            "model": host.cpu_model, "percent": host.cpu_percent,
            "per_core_percent": list(host.per_core_percent),
            "temperatures_c": dict(host.temperatures_c)},
        "memory": None if host is None else {
            "used_bytes": host.memory_used_bytes, "total_bytes": host.memory_total_bytes,
            "available_bytes": host.memory_available_bytes},
        "probes": {name: {"ok": r.error is None and r.value is not None, "error": r.error,
                          "age_s": None if r.at is None else round(now - r.at, 1),
                          "seconds": None if r.seconds is None else round(r.seconds, 4)}
                   for name, r in hw.probes.items()},
    }
