"""How long the stack takes to swap, to recover, and what warm-up buys.

On the full cpu profile (chat, tools, on-demand vision): the vision model's
swap-in (first image request, end to end), a worker killed with SIGKILL back
to READY, three failed health probes (fault injection) back to READY. Then a
chat-only stack started with ``warmup_requests: 0`` and with ``2``: the first
request's latency right after ``/health`` turns 200.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from rich.progress import Progress

from bench.client import stream_one
from bench.common import (
    BenchError,
    Say,
    Server,
    all_ready,
    free_port,
    gateway_argv,
    spawn,
    stack_config,
    wait_for_memory,
    wait_ready,
)
from bench.compare import CHAT_MODEL, load_split, request_body
from shared import config as cfgmod

VISION_MODEL = "tiny-idefics3-vision"
START_TIMEOUT_S = 900
RECOVERY_TIMEOUT_S = 600


@dataclass(frozen=True)
class Settings:
    warm_cold_repeats: int  # stack starts per warm-up setting
    first_request_tokens: int


QUICK = Settings(warm_cold_repeats=1, first_request_tokens=16)
FULL = Settings(warm_cold_repeats=2, first_request_tokens=32)


def image_request() -> dict[str, Any]:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"max_tokens": 8, "temperature": 0.0, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": url}}]}]}


def _worker(health: dict[str, Any], model: str) -> dict[str, Any]:
    w: dict[str, Any] = health["workers"][model]
    return w


async def _poll(client: httpx.AsyncClient, server: Server,
                until: Callable[[dict[str, Any]], bool], what: str,
                timeout_s: float = RECOVERY_TIMEOUT_S) -> float:
    """Poll /health every 50 ms until ``until(body)``; the monotonic time it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited:\n{server.tail()}")
        try:
            body = (await client.get(f"{server.url}/health")).json()
        except (httpx.HTTPError, ValueError):
            body = None
        now = time.monotonic()
        if body is not None and until(body):
            return now
        await asyncio.sleep(0.05)
    raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")


async def run(tmp: Path, quick: bool, progress: Progress, say: Say,
              min_free_gib: float) -> dict[str, Any]:
    st = QUICK if quick else FULL
    task = progress.add_task("recovery: starting the cpu profile",
                             total=4 + 2 * st.warm_cold_repeats)
    out: dict[str, Any] = {"settings": asdict(st)}
    faults = tmp / "faults.json"
    arm(faults, {})
    cfg_path = stack_config(tmp / "stack", free_port(), supervisor={
        "health_interval_s": 1.0, "probe_timeout_s": 5.0})
    await wait_for_memory(min_free_gib, say)
    port = _port_of(cfg_path)
    srv = spawn("zoe-vllm (cpu profile)", gateway_argv(cfg_path), tmp / "stack.log",
                f"http://127.0.0.1:{port}", env={"ZOE_VLLM_FAULTS": str(faults)})
    try:
        out["stack_startup_s"] = await wait_ready(srv, "/health", START_TIMEOUT_S, all_ready)
        progress.advance(task)
        async with httpx.AsyncClient(timeout=RECOVERY_TIMEOUT_S) as client:
            progress.update(task, description="recovery: vision swap-in")
            out["vision"] = await vision_swap(client, srv)
            say(f"vision swap-in {out['vision']['first_s']:.1f}s")
            progress.advance(task)
            progress.update(task, description="recovery: kill -9 a worker")
            out["crash_to_ready_s"] = await crash(client, srv, CHAT_MODEL)
            say(f"kill -9 -> READY {out['crash_to_ready_s']:.1f}s")
            progress.advance(task)
            progress.update(task, description="recovery: three failed probes")
            out["probes"] = await failed_probes(client, srv, faults, CHAT_MODEL)
            say(f"3 failed probes -> READY {out['probes']['detected_to_ready_s']:.1f}s")
            progress.advance(task)
    finally:
        srv.stop()
    out["warm_cold"] = []
    for i in range(st.warm_cold_repeats):
        for warmup in ((0, 2) if i % 2 == 0 else (2, 0)):
            progress.update(task, description=f"recovery: first request, warm-up {warmup}")
            await wait_for_memory(min_free_gib, say)
            out["warm_cold"].append(
                await first_request(tmp / f"warm{warmup}-{i}", warmup, st.first_request_tokens))
            progress.advance(task)
    progress.update(task, description="recovery: done")
    return out


def arm(faults: Path, spec: dict[str, Any]) -> None:
    """Workers read the faults file at every request and probe (workers/engine/faults.py)."""
    faults.parent.mkdir(parents=True, exist_ok=True)
    faults.write_text(json.dumps(spec))


def _port_of(cfg_path: Path) -> int:
    return cfgmod.load(path=cfg_path).server.port


async def vision_swap(client: httpx.AsyncClient, srv: Server) -> dict[str, Any]:
    """First image request (swap the vision model in) and a second one, end to end."""
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        r = await client.post(f"{srv.url}/v1/chat/completions", json=image_request())
        times.append(time.perf_counter() - t0)
        if r.status_code != 200 or r.headers.get("x-zoe-model") != VISION_MODEL:
            raise BenchError(f"image request: HTTP {r.status_code} from "
                             f"{r.headers.get('x-zoe-model')}: {r.text[:300]}")
    return {"first_s": times[0], "second_s": times[1]}


async def crash(client: httpx.AsyncClient, srv: Server, model: str) -> float:
    """SIGKILL the worker; seconds until a new one is READY."""
    health = (await client.get(f"{srv.url}/health")).json()
    pid = _worker(health, model)["pid"]
    if not pid:
        raise BenchError(f"{model} has no pid: {_worker(health, model)}")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    done = await _poll(client, srv, lambda b: _worker(b, model)["state"] == "ready"
                       and _worker(b, model)["pid"] not in (None, pid),
                       f"{model} READY after kill -9")
    return done - t0


async def failed_probes(client: httpx.AsyncClient, srv: Server, faults: Path,
                        model: str) -> dict[str, float]:
    """Arm failing probes; time to the third strike (the worker leaves READY) and to READY."""
    t0 = time.monotonic()
    arm(faults, {model: {"probe": "fail"}})
    try:
        detected = await _poll(client, srv, lambda b: _worker(b, model)["state"] != "ready",
                               f"{model} to leave READY after failed probes")
    finally:
        arm(faults, {})  # the reloaded worker must pass its probes
    ready = await _poll(client, srv, lambda b: _worker(b, model)["state"] == "ready",
                        f"{model} READY after the probe restart")
    return {"armed_to_detected_s": detected - t0, "detected_to_ready_s": ready - detected,
            "armed_to_ready_s": ready - t0}


async def first_request(tmp: Path, warmup: int, tokens: int) -> dict[str, Any]:
    """Start a chat-only stack with ``warmup`` warm-up generations; time its first request."""
    cfg_path = stack_config(tmp, free_port(), models=[CHAT_MODEL], supervisor={
        "warmup_requests": warmup, "health_interval_s": 3600})
    srv = spawn(f"zoe-vllm (warm-up {warmup})", gateway_argv(cfg_path), tmp / "gateway.log",
                f"http://127.0.0.1:{_port_of(cfg_path)}")
    try:
        startup = await wait_ready(srv, "/health", START_TIMEOUT_S, all_ready)
        url = f"{srv.url}/v1/chat/completions"
        body = request_body(CHAT_MODEL, tokens)
        async with httpx.AsyncClient(timeout=300) as client:
            first = await stream_one(client, url, body)
            second = await stream_one(client, url, body)
    finally:
        srv.stop()
    if not (first.ok and second.ok):
        raise BenchError(f"warm-up {warmup}: {first.error or second.error}")
    load_s, warm_s = load_split(tmp / "logs" / f"{CHAT_MODEL}.log")
    return {"warmup_requests": warmup, "startup_s": startup, "load_s": load_s,
            "warmup_s": warm_s, "first_ttft_s": first.ttft_s, "first_total_s": first.total_s,
            "second_ttft_s": second.ttft_s, "second_total_s": second.total_s}
