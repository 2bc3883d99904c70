"""What a voice request waits for on the cpu profile: the ``assistant`` section of ``make bench``.

Time to first token of the fast model for a short question, and for a Home Assistant-sized
request (its system prompt, ``evals/tools/ha_system_prompt.txt``, about 1,460 tokens) on its
first turn (nothing cached) and its second turn (the conversation so far is in vLLM's prefix
cache). Each first turn opens with a line of its own, so no cache is shared between rounds.
The tools model's latency per call is ``make eval-tools``'s (docs/benchmarks/tools.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from rich.progress import Progress

from bench.client import stream_one
from bench.common import (
    REPO,
    BenchError,
    Say,
    all_ready,
    free_port,
    gateway_argv,
    pcts,
    spawn,
    stack_config,
    wait_for_memory,
    wait_ready,
)
from shared import config as cfgmod

SYSTEM = REPO / "evals" / "tools" / "ha_system_prompt.txt"
SHORT = "What is the capital of France?"
FIRST, SECOND = "What can you do for me?", "And what is the weather like today?"
ROUNDS = {False: 8, True: 1}
START_TIMEOUT_S = 900


def _body(model: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    return {"model": model, "messages": messages, "max_tokens": 16, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}


async def _prompt_tokens(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> int:
    plain = {k: v for k, v in body.items() if k != "stream_options"}
    r = await client.post(url, json={**plain, "stream": False, "max_tokens": 1})
    r.raise_for_status()
    return int(r.json()["usage"]["prompt_tokens"])


async def run(tmp: Path, quick: bool, progress: Progress, say: Say,
              min_free_gib: float) -> dict[str, Any]:
    cfg = cfgmod.load(profile="cpu")
    fast = cfg.default_model.name
    rounds = ROUNDS[quick]
    task = progress.add_task("assistant: starting the cpu profile's fast model",
                             total=1 + 3 * rounds)
    cfg_path = stack_config(tmp, free_port(), models=[fast])
    port = cfgmod.load(path=cfg_path).server.port
    await wait_for_memory(min_free_gib, say)
    srv = spawn("zoe-vllm (cpu, fast model)", gateway_argv(cfg_path), tmp / "stack.log",
                f"http://127.0.0.1:{port}")
    url = f"{srv.url}/v1/chat/completions"
    system = SYSTEM.read_text()
    ttft: dict[str, list[float]] = {"short": [], "ha_first_turn": [], "ha_second_turn": []}
    try:
        startup = await wait_ready(srv, "/health", START_TIMEOUT_S, all_ready)
        progress.advance(task)
        async with httpx.AsyncClient(timeout=300) as client:
            short = _body(fast, [{"role": "user", "content": SHORT}])
            for n in range(rounds):
                progress.update(task, description=f"assistant: round {n + 1}/{rounds}")
                turn1 = [{"role": "system", "content": f"Conversation {n}.\n{system}"},
                         {"role": "user", "content": FIRST}]
                turn2 = [*turn1, {"role": "assistant", "content": "I can control your home."},
                         {"role": "user", "content": SECOND}]
                for key, body in (("short", short), ("ha_first_turn", _body(fast, turn1)),
                                  ("ha_second_turn", _body(fast, turn2))):
                    sample = await stream_one(client, url, body)
                    if not sample.ok or sample.ttft_s is None:
                        raise BenchError(f"{key}: {sample.error or 'no output'}")
                    ttft[key].append(sample.ttft_s)
                    progress.advance(task)
            tokens = {"short": await _prompt_tokens(client, url, short),
                      "ha_first_turn": await _prompt_tokens(client, url, _body(fast, turn1)),
                      "ha_second_turn": await _prompt_tokens(client, url, _body(fast, turn2))}
    finally:
        srv.stop()
    ms = {k: pcts(v, 1e3) for k, v in ttft.items()}
    say(f"assistant: TTFT p50 short {ms['short']['p50']:.0f} ms, HA first turn "
        f"{ms['ha_first_turn']['p50']:.0f} ms, second turn {ms['ha_second_turn']['p50']:.0f} ms")
    return {"model": fast, "rounds": rounds, "startup_s": startup, "prompt_tokens": tokens,
            "ttft_ms": ms}
