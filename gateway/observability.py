"""``/metrics`` (JSON) and ``/metrics/prometheus``, and the wiring behind them.

Both are built from the same sources at request time: the supervisor's
``WorkerInfo`` records, the request-path :class:`~gateway.metrics.Metrics`
and the hardware monitor's last sample (taken in background threads, so a
request never waits on a hardware probe). The JSON shape is documented in
``docs/metrics.md``.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.hardware import HardwareMonitor, HardwareSnapshot
from gateway.metrics_collector import GatewayCollector
from shared.config import Role, fallback_chain
from workers.lifecycle import State

if TYPE_CHECKING:
    from gateway.app import Gateway

OUTCOMES = ("ok", "error", "client_error", "busy", "unavailable", "disconnected")


class Observability:
    """Owns the hardware monitor and registers the scrape-time collector."""

    def __init__(self, gw: Gateway, hardware: HardwareMonitor | None = None) -> None:
        self.gw = gw
        self.hardware = hardware if hardware is not None else HardwareMonitor(self.worker_pids)
        gw.metrics.registry.register(GatewayCollector(gw))
        prime_series(gw)

    def worker_pids(self) -> dict[str, int | None]:
        # Read from the sampler thread: plain attribute reads of a fixed dict.
        return {name: w.info.pid for name, w in self.gw.sup.workers.items()}

    def start(self) -> None:
        self.hardware.start()

    def stop(self) -> None:
        self.hardware.stop()


def prime_series(gw: Gateway) -> None:
    """Create every bounded label combination at 0, so dashboards show 0, not "no data"."""
    m, config = gw.metrics, gw.cfg.config
    for model in gw.cfg.models:
        for outcome in OUTCOMES:
            m.requests.labels(model.name, outcome)
        m.ttft.labels(model.name)
        m.latency.labels(model.name)
        if model.role is Role.EMBEDDING:
            m.embedding_inputs.labels(model.name)
            m.embedding_tokens.labels(model.name)
        chain = [model.name, *fallback_chain(config, model.name)]
        for src, dst in itertools.pairwise(chain):
            m.fallbacks.labels(src, dst)


def health_status(gw: Gateway) -> str:
    ok = gw.sup.is_ready(gw.cfg.default_model.name)
    if any(w.state is State.FAILED for w in gw.sup.workers.values()):
        return "degraded" if ok else "failed"
    return "ok" if ok else "loading"


def metrics_document(gw: Gateway) -> dict[str, Any]:
    now = time.time()
    hw = gw.observability.hardware.snapshot()
    outcomes = gw.metrics.requests_by_outcome()
    routes = gw.metrics.routes_by_reason()
    models = gw.worker_status()
    for name, doc in models.items():
        models[name] = {**doc, **_model_extra(gw, name, now, hw, outcomes.get(name, {}),
                                              routes.get(name, {}))}
    served = sum(o.get("ok", 0) for o in outcomes.values())
    return {
        "uptime_s": round(now - gw.started, 1),
        "started_at": gw.started,
        "health": {"status": health_status(gw), "default_model": gw.cfg.default_model.name,
                   "ready": [n for n, w in gw.sup.workers.items() if w.state is State.READY]},
        "requests": {"served": served,
                     "total": sum(sum(o.values()) for o in outcomes.values())},
        "gpu": gpu_summary(hw),
        "hardware": hardware_json(hw, now),
        "models": models,
    }


def _model_extra(gw: Gateway, name: str, now: float, hw: HardwareSnapshot,
                 outcomes: dict[str, int], routes: dict[str, int]) -> dict[str, Any]:
    i = gw.sup.workers[name].info
    serving = i.state in (State.READY, State.DRAINING) and i.ready_at is not None
    ttft = gw.metrics.ttft_window.get(name)
    latency = gw.metrics.latency_window.get(name)
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


async def metrics_json(gw: Gateway, request: Request) -> Response:
    return JSONResponse(metrics_document(gw))


async def metrics_prometheus(gw: Gateway, request: Request) -> Response:
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
