"""Embeddings per second and the gateway's added latency (``make bench``'s ``embeddings``).

Three embedders of the same all-MiniLM-L6-v2 weights, measured one after the other in each
round (the order rotates, so machine noise hits all three):

* **ours**: the cpu profile's embedding worker through the gateway (``/v1/embeddings``);
* **vllm serve**: vLLM's own server on the same engine arguments (``engine_argv``), bound to
  the other core (two engines bound to one core starve each other);
* **transformers**: the model card's recipe in this process (tokenize, forward, mean-pool,
  normalise), with as many torch threads as the worker has cores.

Batches of 1, 8 and 32 short texts (Home Assistant-like sentences). The gateway's added
latency is ours minus vllm serve at p50 for one text per request.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
from rich.progress import Progress

from bench.common import (
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
from bench.compare import vllm_argv
from shared import config as cfgmod
from shared.engine_args import engine_env, has_accelerator

EMBED = "all-minilm"
BATCHES = (1, 8, 32)
TEXTS = [f"{verb} the {thing} in the {room}" for verb in ("turn on", "turn off")
         for thing in ("lights", "fan", "heater", "speaker")
         for room in ("kitchen", "bedroom", "office", "hall")]
# (rounds, requests per batch size per round)
SIZES = {False: (5, 12), True: (1, 2)}
START_TIMEOUT_S = 900


def _cores(spec: str | None) -> int:
    if not spec:
        return 1
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


class Reference:
    """all-MiniLM-L6-v2 with transformers directly, as its model card computes it."""

    def __init__(self, path: Path, threads: int) -> None:
        # OpenMP threads that spin after each batch would steal the workers' cores.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def embed(self, texts: list[str]) -> int:
        torch = self.torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256,
                               return_tensors="pt")
        with torch.inference_mode():
            out = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return int(torch.nn.functional.normalize(pooled, p=2, dim=1).shape[0])


async def _post(client: httpx.AsyncClient, url: str, texts: list[str]) -> float:
    t0 = time.perf_counter()
    r = await client.post(url, json={"model": EMBED, "input": texts,
                                     "encoding_format": "float"})
    elapsed = time.perf_counter() - t0
    if r.status_code != 200 or len(r.json()["data"]) != len(texts):
        raise BenchError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
    return elapsed


async def run(tmp: Path, quick: bool, progress: Progress, say: Say,
              min_free_gib: float) -> dict[str, Any]:
    rounds, per = SIZES[quick]
    base = cfgmod.load(profile="cpu")
    # The gateway needs a default (chat) model beside the embedding one; it stays idle.
    cfg_path = stack_config(tmp / "ours", free_port(), models=[base.default_model.name, EMBED],
                            supervisor={"health_interval_s": 3600})
    cfg = cfgmod.load(path=cfg_path)
    model = cfg.model(EMBED)
    threads = _cores(model.cpu_cores)
    task = progress.add_task("embeddings: starting vllm serve and our stack",
                             total=rounds * len(BATCHES) * 3 + 2)
    await wait_for_memory(min_free_gib, say)
    port = free_port()
    env = engine_env(model, accelerator=has_accelerator())
    if "VLLM_CPU_OMP_THREADS_BIND" in env:
        # Its own core: two idle vLLM engines bound to one core starve each other (their
        # OpenMP threads spin after each request), which cost both 300 ms per request.
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0" if model.cpu_cores != "0" else "1"
    theirs = spawn("vllm serve (embeddings)", vllm_argv(cfg, model, port), tmp / "vllm.log",
                   f"http://127.0.0.1:{port}", env=env)
    ours = None
    try:
        await wait_ready(theirs, "/v1/models", START_TIMEOUT_S)
        progress.advance(task)
        ours = spawn("zoe-vllm (embeddings)", gateway_argv(cfg_path), tmp / "stack.log",
                     f"http://127.0.0.1:{cfg.server.port}")
        await wait_ready(ours, "/health", START_TIMEOUT_S, all_ready)
        progress.advance(task)
        reference = Reference(cfg.model_path(model), threads)
        urls = {"ours": f"{ours.url}/v1/embeddings", "vllm serve": f"{theirs.url}/v1/embeddings"}
        who = ["ours", "vllm serve", "transformers"]
        seconds: dict[str, dict[int, list[float]]] = {w: {b: [] for b in BATCHES} for w in who}
        async with httpx.AsyncClient(timeout=300) as client:
            for url in urls.values():  # one warm-up each: first requests pay for setup
                await _post(client, url, TEXTS[:8])
            reference.embed(TEXTS[:8])
            for n in range(rounds):
                order = who[n % 3:] + who[:n % 3]
                for batch in BATCHES:
                    for name in order:
                        progress.update(task, description=f"embeddings: round {n + 1}/"
                                                          f"{rounds}, batch {batch}, {name}")
                        for i in range(per):
                            texts = [TEXTS[(i * batch + k) % len(TEXTS)] for k in range(batch)]
                            if name == "transformers":
                                t0 = time.perf_counter()
                                reference.embed(texts)
                                seconds[name][batch].append(time.perf_counter() - t0)
                            else:
                                seconds[name][batch].append(
                                    await _post(client, urls[name], texts))
                        progress.advance(task)
    finally:
        if ours is not None:
            ours.stop()
        theirs.stop()
    rates = {w: {str(b): b * len(s) / sum(s) for b, s in by.items()}
             for w, by in seconds.items()}
    latency = {w: {str(b): pcts(s, 1e3) for b, s in by.items()} for w, by in seconds.items()}
    added = latency["ours"]["1"]["p50"] - latency["vllm serve"]["1"]["p50"]
    say(f"embeddings/s at batch 32: ours {rates['ours']['32']:.0f}, vllm serve "
        f"{rates['vllm serve']['32']:.0f}, transformers {rates['transformers']['32']:.0f}; "
        f"gateway adds {added:.1f} ms at p50")
    return {"model": EMBED, "threads": threads, "rounds": rounds, "requests_per_round": per,
            "batches": list(BATCHES), "embeddings_per_s": rates, "latency_ms": latency,
            "gateway_added_ms_p50": added}
