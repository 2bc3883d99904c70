"""Where the two text models run when both are busy: the ``layout`` section of ``make bench``.

The cpu profile gives the chat model (0.5B) and the tools model (1.5B) every core, which is
what one request alone wants (``engines``: first token 136 ms on both cores, 182 on one).
When both generate at once, each engine's OpenMP threads then share the cores with the
other's. This starts our stack with both models in each layout, one layout at a time (the two
at once do not fit in memory), and measures each model alone and then while the other keeps
generating: output tokens/s and time to first token of 64 forced tokens, one request at a
time per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.progress import Progress, TaskID

from bench.client import Load, run_load, summarize
from bench.common import (
    BenchError,
    Say,
    Server,
    all_ready,
    free_port,
    gateway_argv,
    spawn,
    stack_config,
    tree_memory,
    wait_for_memory,
    wait_ready,
)
from bench.cpu_engines import PROMPT, stream_body
from shared import config as cfgmod
from workers.provision.models import resolved_kind

CHAT, TOOLS = "qwen2.5-coder-0.5b-chat", "qwen2.5-coder-1.5b-tools"
START_TIMEOUT_S = 1200
LAST = (os.cpu_count() or 1) - 1


@dataclass(frozen=True)
class Layout:
    key: str
    label: str
    cores: dict[str, str]  # model -> cpu_cores


# With one core there is nothing to split: only the shared layout is measured.
LAYOUTS = tuple(x for x in (
    Layout("shared", "both models on every core (the cpu profile)",
           {CHAT: f"0-{LAST}", TOOLS: f"0-{LAST}"}),
    Layout("split", f"chat on core 0, tools on core{'s 1-' if LAST > 1 else ' '}{LAST}",
           {CHAT: "0", TOOLS: f"1-{LAST}"}),
) if x.key == "shared" or LAST >= 1)


@dataclass(frozen=True)
class Settings:
    rounds: int
    n: int  # requests per model per measurement, one at a time
    max_tokens: int


QUICK = Settings(rounds=1, n=1, max_tokens=16)
FULL = Settings(rounds=2, n=4, max_tokens=64)


async def _start(layout: Layout, tmp: Path, say: Say, min_free_gib: float) -> Server:
    await wait_for_memory(min_free_gib, say)
    port = free_port()
    cfg = stack_config(tmp / layout.key, port, models=[CHAT, TOOLS],
                       supervisor={"health_interval_s": 3600},
                       per_model={m: {"cpu_cores": c} for m, c in layout.cores.items()})
    srv = spawn(f"zoe-vllm, {layout.key}", gateway_argv(cfg), tmp / f"{layout.key}.log",
                f"http://127.0.0.1:{port}")
    try:
        await wait_ready(srv, "/health", START_TIMEOUT_S, all_ready)
    except BaseException:
        srv.stop()
        raise
    return srv


async def _measure(srv: Server, st: Settings, progress: Progress,
                   task: TaskID) -> dict[str, Any]:
    url = f"{srv.url}/v1/chat/completions"
    body = {m: stream_body(m, [{"role": "user", "content": PROMPT}], st.max_tokens,
                           ignore_eos=True) for m in (CHAT, TOOLS)}

    def tick() -> None:
        progress.advance(task)

    for m in (CHAT, TOOLS):  # warm-up, unmeasured
        await run_load(url, body[m], 1, 1)
    alone: dict[str, list[Load]] = {CHAT: [], TOOLS: []}
    together: dict[str, list[Load]] = {CHAT: [], TOOLS: []}
    for _ in range(st.rounds):
        for m, other in ((CHAT, TOOLS), (TOOLS, CHAT)):
            alone[m].append(await run_load(url, body[m], st.n, 1, tick))
            # The other model generates for as long as this one is measured.
            busy = asyncio.create_task(_keep_busy(url, body[other]))
            try:
                together[m].append(await run_load(url, body[m], st.n, 1, tick))
            finally:
                busy.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await busy
            # The cancelled request is aborted, not left generating into the next "alone".
            await _until_idle(srv)
    return {"alone": {m: summarize(v) for m, v in alone.items()},
            "together": {m: summarize(v) for m, v in together.items()}}


async def _until_idle(srv: Server, timeout_s: float = 60.0) -> None:
    """Until no model has a request in flight, in the gateway or in its engine."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            workers = (await client.get(f"{srv.url}/health")).json()["workers"]
            if all(w["active_requests"] == 0 and not (w["engine"] or {}).get("running")
                   for w in workers.values()):
                return
            await asyncio.sleep(0.2)
    raise BenchError(f"requests still running {timeout_s:.0f}s after their clients left")


async def _keep_busy(url: str, body: dict[str, Any]) -> None:
    """One request in flight after another, until cancelled."""
    while True:
        await run_load(url, body, 1, 1)


async def run(tmp: Path, quick: bool, progress: Progress, say: Say,
              min_free_gib: float) -> dict[str, Any]:
    st = QUICK if quick else FULL
    task = progress.add_task("layout: starting", total=len(LAYOUTS) * st.rounds * st.n * 4)
    layouts: dict[str, Any] = {}
    for layout in LAYOUTS:
        progress.update(task, description=f"layout: {layout.label}")
        srv = await _start(layout, tmp, say, min_free_gib)
        try:
            say(f"layout {layout.key}: ready in {srv.ready_s:.1f}s")
            layouts[layout.key] = {"label": layout.label, "cores": layout.cores,
                                   **await _measure(srv, st, progress, task),
                                   "rss_mb": tree_memory(srv.proc.pid).rss_mb}
        finally:
            srv.stop()
    progress.update(task, description="layout: done")
    cpu = cfgmod.load(profile="cpu")
    weights = {m: resolved_kind(cpu.model(m).provision.value) for m in (CHAT, TOOLS)}
    return {"layouts": layouts, "settings": {"rounds": st.rounds, "n": st.n,
                                             "max_tokens": st.max_tokens,
                                             "models": [CHAT, TOOLS], "weights": weights}}
