"""``zoe-vllm status``: the workers as a terminal table, like ``ollama ps``.

It reads ``/health`` and ``/metrics`` over HTTP (the server may run as
another user or in a container), so it only needs the port and, if the
metrics are closed, an API key.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from typing import Any

COLUMNS = ("NAME", "STATE", "PID", "MEMORY", "ACTIVE", "QUEUED", "UPTIME", "LAST PROBE",
           "RESTARTS")


def fetch(url: str, key: str | None = None, timeout: float = 5) -> tuple[int, Any]:
    """(status, decoded JSON body); status 0 and None when nothing answers."""
    req = urllib.request.Request(url)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(exc.read())
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"  # unreachable


def duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def last_probe(w: dict[str, Any], now: float) -> str:
    probes = w.get("probes") or {}
    at = probes.get("last_at")
    if at is None:
        return "never"
    verdict = "ok" if probes.get("last_ok") else "FAILED"
    return f"{duration(max(0.0, now - at))} ago {verdict}"


def rows(health: dict[str, Any], metrics: dict[str, Any] | None,
         now: float) -> list[tuple[str, ...]]:
    models = (metrics or {}).get("models") or {}
    out: list[tuple[str, ...]] = []
    for name, w in health.get("workers", {}).items():
        m = models.get(name, {})
        state = w["state"]
        if w.get("stage") and state not in ("ready", "stopped"):
            state += f" ({w['stage']})"
        out.append((name, state, str(w.get("pid") or "-"), size(m.get("memory_rss_bytes")),
                    str(w.get("active_requests", 0)), str(w.get("queued", 0)),
                    duration(m.get("uptime_s")), last_probe(w, now), str(w.get("restarts", 0))))
    return out


def table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()
                     for r in [header, *body])


def summary(health: dict[str, Any], metrics: dict[str, Any] | None) -> str:
    line = f"zoe-vllm {health.get('status', '?')}, up {duration(health.get('uptime_s'))}"
    hw = (metrics or {}).get("hardware") or {}
    gpu = (metrics or {}).get("gpu")
    if gpu:
        line += (f"; {gpu['kind']} GPU: {size(gpu.get('memory_used_bytes'))} / "
                 f"{size(gpu.get('memory_total_bytes'))}")
        if gpu.get("utilization_percent") is not None:
            line += f", {gpu['utilization_percent']:.0f}%"
        if gpu.get("temperature_c") is not None:
            line += f", {gpu['temperature_c']:.0f} °C"
    elif hw:
        line += "; no GPU (hardware: cpu)"
    if hw.get("cpu") and hw.get("memory"):
        line += (f"; CPU {hw['cpu']['percent']:.0f}%, RAM "
                 f"{size(hw['memory']['used_bytes'])} / {size(hw['memory']['total_bytes'])}")
    return line


def render(health: dict[str, Any], metrics: dict[str, Any] | None,
           now: float | None = None) -> str:
    now = time.time() if now is None else now
    return summary(health, metrics) + "\n\n" + table(COLUMNS, rows(health, metrics, now))
