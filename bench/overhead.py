"""The gateway's own cost: the real gateway and supervisor in front of an instant worker.

``bench/echo_worker.py`` answers at once, so a client's time through the
gateway is the gateway's work (HTTP, routing, ZeroMQ both ways) plus the
worker's own (reported in every answer, subtracted here). A bare
Starlette/uvicorn app answering the same requests (``bench/baseline_app.py``)
is the reference ceiling: what any Python HTTP server costs on this machine.
Also: the router's decision time and the gateway's memory.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
import timeit
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.progress import Progress, TaskID

from bench.common import (
    Say,
    Server,
    free_port,
    gateway_argv,
    pcts,
    process_rss_mb,
    spawn,
    wait_ready,
)
from gateway.core.router import Router
from shared import config as cfgmod

MODEL = "echo"


@dataclass(frozen=True)
class Settings:
    rounds: int
    n_plain: int  # non-streamed requests per round and server, one at a time
    n_stream: int  # streamed requests per round and server, one at a time
    n_parallel: int  # non-streamed requests per round and server, 8 at a time
    chunks: int  # streamed chunks per answer
    router_number: int  # decisions per timing run (best of 5 runs)


QUICK = Settings(rounds=1, n_plain=60, n_stream=20, n_parallel=80, chunks=64,
                 router_number=2000)
FULL = Settings(rounds=3, n_plain=600, n_stream=200, n_parallel=800, chunks=64,
                router_number=20000)


def echo_config(tmp: Path, port: int) -> Path:
    """One model whose path exists and needs no weights; probes effectively off."""
    tmp.mkdir(parents=True, exist_ok=True)
    data = {
        "server": {"host": "127.0.0.1", "port": port, "default_model": MODEL},
        "paths": {"models": str(tmp), "logs": str(tmp / "logs"), "run": str(tmp / "run")},
        "supervisor": {"sequential_start": False, "warmup_requests": 0,
                       "health_interval_s": 3600},
        "models": [{"name": MODEL, "role": "fast", "path": str(tmp), "max_num_seqs": 64,
                    "max_queued": 256}],
    }
    path = tmp / "echo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def body(stream: bool, chunks: int) -> bytes:
    return json.dumps({"model": MODEL, "stream": stream, "max_tokens": chunks,
                       "messages": [{"role": "user", "content": "What is the capital of "
                                                                "France?"}]}).encode()


async def plain(client: httpx.AsyncClient, url: str, payload: bytes) -> tuple[float, float]:
    """(client seconds, worker seconds) for one non-streamed request."""
    t0 = time.perf_counter()
    r = await client.post(url, content=payload, headers={"content-type": "application/json"})
    total = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return total, float(r.json().get("echo_worker_s", 0.0))


async def streamed(client: httpx.AsyncClient, url: str,
                   payload: bytes) -> tuple[float, float, float]:
    """(first byte, whole stream, worker) seconds for one streamed request."""
    t0 = time.perf_counter()
    first: float | None = None
    parts: list[bytes] = []
    async with client.stream("POST", url, content=payload,
                             headers={"content-type": "application/json"}) as r:
        async for raw in r.aiter_raw():
            if first is None:
                first = time.perf_counter() - t0
            parts.append(raw)
    total = time.perf_counter() - t0
    text = b"".join(parts).decode()
    worker = 0.0
    marker = '"echo_worker_s":'
    if (at := text.find(marker)) >= 0:
        worker = float(text[at + len(marker):].split("}", 1)[0])
    return first or total, total, worker


async def parallel(client: httpx.AsyncClient, url: str, payload: bytes, n: int,
                   concurrency: int = 8) -> float:
    """Requests per second with ``concurrency`` in flight."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await plain(client, url, payload)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


async def run(tmp: Path, quick: bool, progress: Progress, say: Say,
              min_free_gib: float) -> dict[str, Any]:
    st = QUICK if quick else FULL
    task = progress.add_task("overhead: router", total=st.rounds * 2 * (
        st.n_plain + st.n_stream + st.n_parallel) + 1)
    router = router_timings(st.router_number)
    progress.advance(task)
    port = free_port()
    gateway = spawn("zoe-vllm (echo worker)", gateway_argv(echo_config(tmp, port)),
                    tmp / "gateway.log", f"http://127.0.0.1:{port}",
                    env={"ZOE_VLLM_WORKER_MODULE": "bench.echo_worker"})
    bare_port = free_port()
    bare = spawn("bare starlette", [sys.executable, "-m", "bench.baseline_app", "--port",
                                    str(bare_port)], tmp / "bare.log",
                 f"http://127.0.0.1:{bare_port}")
    try:
        progress.update(task, description="overhead: starting the gateway")
        await wait_ready(gateway, "/health", 60)
        await wait_ready(bare, "/hello", 60)
        rss_idle = process_rss_mb(gateway.proc.pid)
        say(f"gateway with the echo worker ready in {gateway.ready_s:.2f}s "
            f"({rss_idle:.0f} MB RSS)")
        result = await _measure(st, {"gateway": gateway, "bare": bare}, progress, task)
        result["rss_mb"] = {"gateway_idle": rss_idle,
                            "gateway_after": process_rss_mb(gateway.proc.pid),
                            "bare_after": process_rss_mb(bare.proc.pid)}
        result["gateway_ready_s"] = gateway.ready_s
    finally:
        gateway.stop()
        bare.stop()
    result["router_us"] = router
    result["settings"] = asdict(st)
    progress.update(task, description="overhead: done")
    return result


async def _measure(st: Settings, servers: dict[str, Server], progress: Progress,
                   task: TaskID) -> dict[str, Any]:
    plain_body, stream_body = body(False, st.chunks), body(True, st.chunks)
    got: dict[str, dict[str, list[float]]] = {
        n: {k: [] for k in ("plain", "plain_worker", "ttfb", "stream", "stream_worker",
                            "hello", "rps8")} for n in servers}
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        for s in servers.values():  # connections, imports, first-call caches
            for _ in range(20):
                await plain(client, f"{s.url}/v1/chat/completions", plain_body)
        for r in range(st.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                url = f"{servers[name].url}/v1/chat/completions"
                g = got[name]
                progress.update(task, description=f"overhead: round {r + 1}/{st.rounds}, "
                                                  f"{name}")
                for _ in range(st.n_plain):
                    total, worker = await plain(client, url, plain_body)
                    g["plain"].append(total)
                    g["plain_worker"].append(worker)
                    progress.advance(task)
                for _ in range(st.n_stream):
                    first, total, worker = await streamed(client, url, stream_body)
                    g["ttfb"].append(first)
                    g["stream"].append(total)
                    g["stream_worker"].append(worker)
                    progress.advance(task)
                g["rps8"].append(await parallel(client, url, plain_body, st.n_parallel))
                progress.advance(task, st.n_parallel)
        for _ in range(st.n_plain):  # the floor: a GET on the bare app
            t0 = time.perf_counter()
            await client.get(f"{servers['bare'].url}/hello")
            got["bare"]["hello"].append(time.perf_counter() - t0)
    result: dict[str, Any] = {name: {"plain_ms": pcts(g["plain"], 1e3),
                   "plain_worker_ms": pcts(g["plain_worker"], 1e3),
                   "stream_ttfb_ms": pcts(g["ttfb"], 1e3),
                   "stream_ms": pcts(g["stream"], 1e3),
                   "stream_worker_ms": pcts(g["stream_worker"], 1e3),
                   "hello_ms": pcts(g["hello"], 1e3) if g["hello"] else None,
                   "req_s_8": sum(g["rps8"]) / len(g["rps8"])}
            for name, g in got.items()}
    result["chunks"] = st.chunks
    return result


def router_bodies() -> dict[str, dict[str, Any]]:
    """Realistic requests, one per routing outcome, a few with a conversation behind."""
    history: list[dict[str, Any]] = []
    for i in range(4):
        history += [{"role": "user", "content": f"Question {i}: what's the weather like?"},
                    {"role": "assistant", "content": "Sunny, 21 degrees, light wind."}]
    tool = {"type": "function", "function": {
        "name": "light_turn_off", "description": "Turn off the lights in an area",
        "parameters": {"type": "object", "properties": {"area": {"type": "string"}},
                       "required": ["area"]}}}
    image = [{"type": "text", "text": "What is in this picture?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    ask = [{"role": "system", "content": "You are a helpful home assistant."}, *history]
    return {
        "explicit name": {"model": "qwen2.5-coder-0.5b-chat",
                          "messages": [{"role": "user", "content": "Hi there"}]},
        "alias (hermes3:8b)": {"model": "hermes3:8b",
                               "messages": [{"role": "user", "content": "Hi there"}]},
        "image part": {"messages": [*ask, {"role": "user", "content": image}]},
        "tools present": {"messages": [*ask, {"role": "user", "content": "Lights off"}],
                          "tools": [tool], "tool_choice": "auto"},
        "keyword (turn)": {"messages": [*ask, {"role": "user",
                                               "content": "Please turn off the kitchen lights"}]},
        "default (10 messages)": {"messages": [*ask, {
            "role": "user", "content": "What is the capital of France? Answer in one word."}]},
    }


def router_timings(number: int) -> dict[str, float]:
    """Microseconds per decision, best of five timing runs, per kind of request."""
    router = Router(cfgmod.load(profile="cpu"))
    out: dict[str, float] = {}
    for label, req in router_bodies().items():
        timer = timeit.Timer(functools.partial(router.route, req))
        out[label] = min(timer.repeat(repeat=5, number=number)) / number * 1e6
    return out
