"""CPU speed against llama.cpp: the ``engines`` section of ``make bench``.

On a CPU box what a user would run instead of us is Ollama, which is llama.cpp. This puts, side
by side on one model (Qwen2.5-Coder-0.5B-Instruct):

* llama.cpp's ``llama-server`` on the Q4_K_M GGUF itself (``bench.llama_cpp`` builds it), with
  as many threads as the machine has cores;
* in a ``weights`` group, ours on bf16, on 4-bit AWQ (where vLLM's CPU int4 kernel runs,
  which is AVX-512) and on W8A8 int8 (any x86), each re-quantized from the same GGUF;
* in a ``serving`` group, on bf16: ours on every core, ``vllm serve`` with our engine
  settings, ours on one core (the cpu profile before this work) and ours compiled.

A group's servers are up at once (all of them do not fit in 24 GiB) and only one generates
at a time; the rounds go round the servers, in reverse every other round, so noise on a
shared machine hits each. Reported for each: output tokens/s and time to first token at 1
and 8 streams (64 tokens, ``ignore_eos``), time to first token of a Home Assistant-sized
request (about 1,500 tokens) cold and with its prefix cached, the time to a complete tool
call for it, memory, and start-up time to ready.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from rich.progress import Progress, TaskID

from bench import llama_cpp
from bench.client import Load, run_load, stream_one, summarize
from bench.common import (
    REPO,
    BenchError,
    Say,
    Server,
    all_ready,
    free_port,
    gateway_argv,
    pcts,
    spawn,
    stack_config,
    tree_memory,
    wait_for_memory,
    wait_ready,
)
from bench.compare import vllm_argv
from shared import config as cfgmod
from shared.engine_args import engine_env, has_accelerator
from shared.platform import cpu_flags, cpu_weight_scheme
from workers.provision import gguf_parts

MODEL = "qwen2.5-coder-0.5b-chat"
GGUF_KIND = "qwen2.5-coder-0.5b-gguf"
SYSTEM = REPO / "evals" / "tools" / "ha_system_prompt.txt"
TOOLS = REPO / "evals" / "tools" / "tools.json"
PROMPT = ("You are the voice of a home assistant. In a friendly tone, describe what a smart "
          "home can do for a family on a winter morning: the lights, the heating, the coffee "
          "machine, the news and the weather forecast.")
HA_QUESTION = "Turn off the kitchen lights."
HA_TOOLS = ("turn_on_light", "turn_off_light", "set_light_brightness", "set_thermostat")
START_TIMEOUT_S = 1200
ALL_CORES = f"0-{(os.cpu_count() or 1) - 1}"
VLLM_CPU_BLOCK = 128  # vLLM's block size on a CPU when none is given (vllm/platforms/cpu.py)


@dataclass(frozen=True)
class Settings:
    rounds: int
    n1: int  # streamed requests per round, one at a time
    n8: int  # streamed requests per round, eight at a time
    ha: int  # Home Assistant requests per round, each kind
    max_tokens: int
    warmup: int


QUICK = Settings(rounds=1, n1=2, n8=8, ha=1, max_tokens=16, warmup=1)
FULL = Settings(rounds=3, n1=6, n8=16, ha=2, max_tokens=64, warmup=2)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    engine: str  # "ours", "vllm" or "llama.cpp"
    weights: str
    overrides: dict[str, Any] = field(default_factory=dict)
    # A step worth measuring but not needed for the comparison: if it does not start, the
    # report says why and the others go on.
    optional: bool = False
    # Ours exactly as the cpu profile serves the chat model: the row the targets judge.
    profile: bool = False


# Each weight form is named by its own directory, whatever the cpu profile serves.
BF16 = {"path": "{models}/qwen2.5-coder-0.5b-instruct", "provision": GGUF_KIND}
WEIGHTS = {"awq": "AWQ 4-bit", "w8a8": "W8A8 int8"}


@dataclass(frozen=True)
class Group:
    """Servers up at once, measured in alternating rounds. A vLLM server is three processes
    of about 4.5 GiB: five of them ran this 24 GiB machine out of memory (an engine died), so
    a group has llama.cpp, the anchor, and at most four of ours or vLLM's; every group has
    ours on bf16 on every core too, so each step is measured against both. The first group
    holds the form the cpu profile serves on this CPU, which the targets judge."""

    key: str
    title: str
    variants: tuple[Variant, ...]


def schemes(flags: frozenset[str]) -> tuple[str, ...]:
    """The quantized forms vLLM's CPU build runs here: AWQ's int4 kernel needs AVX-512
    (shared.platform.cpu_weight_scheme); W8A8 (oneDNN int8) runs on any x86 with AVX2."""
    x86 = ("w8a8",) if "avx2" in flags or "avx512f" in flags else ()
    return (("awq",) if cpu_weight_scheme(flags) == "awq" else ()) + x86


def groups(forms: tuple[str, ...] | None = None) -> tuple[Group, ...]:
    forms = schemes(cpu_flags()) if forms is None else forms
    llama = Variant("llama", "llama.cpp llama-server", "llama.cpp", "Q4_K_M GGUF")
    # Ours first in each group: its start provisions the directory that vllm serve reads.
    ours = Variant("ours_bf16_all", "zoe-vllm", "ours", "bf16", {**BF16, "cpu_cores": ALL_CORES})
    quant = tuple(
        Variant(f"ours_{s}", "zoe-vllm", "ours", WEIGHTS[s],
                {"path": f"{{models}}/qwen2.5-coder-0.5b-instruct-{s}",
                 "provision": f"qwen2.5-coder-0.5b-{s}", "cpu_cores": ALL_CORES})
        for s in forms)
    # The profile's form (W8A8 wherever vLLM runs it) at vLLM's CPU default block, against
    # the profile's smaller one: what prefix-cache hits on a block boundary cost.
    form = ({"path": "{models}/qwen2.5-coder-0.5b-instruct-w8a8",
             "provision": "qwen2.5-coder-0.5b-w8a8"} if "w8a8" in forms else BF16)
    default_block = Variant(
        "ours_default_block", "zoe-vllm, vLLM's CPU block", "ours",
        WEIGHTS["w8a8"] if "w8a8" in forms else "bf16",
        {**form, "cpu_cores": ALL_CORES, "block_size": VLLM_CPU_BLOCK})
    return (
        Group("weights", "Weight forms: bf16, 4-bit and 8-bit; the KV-cache block",
              (llama, ours, *quant, default_block)),
        Group("serving", "Core layout, engine settings and vllm serve, on bf16", (
            llama, ours,
            Variant("vllm_bf16_all", "vllm serve", "vllm", "bf16",
                    {**BF16, "cpu_cores": ALL_CORES}),
            Variant("ours_bf16_one", "zoe-vllm (before)", "ours", "bf16",
                    {**BF16, "cpu_cores": "0"}),
            # vLLM's torch.compile path instead of eager mode: fewer Python steps per token,
            # a longer start. Left out, with why, if it does not start.
            Variant("ours_bf16_compiled", "zoe-vllm, compiled", "ours", "bf16",
                    {**BF16, "cpu_cores": ALL_CORES, "enforce_eager": False},
                    optional=True))),
    )


def as_profiled(v: Variant) -> Variant:
    """``v``, marked if it serves what the cpu profile's chat model serves on this CPU (its
    ``-cpu`` provision kind resolved) on every core, with nothing else changed. The profile
    names cores 0-1, which is every core of the machines it was measured on; on a bigger
    one, every core is what the bench compares."""
    from workers.provision.models import resolved_kind

    m = cfgmod.load(profile="cpu").model(MODEL)
    same = (v.engine == "ours" and set(v.overrides) == {"path", "provision", "cpu_cores"}
            and resolved_kind(str(v.overrides["provision"])) == resolved_kind(m.provision.value)
            and v.overrides["cpu_cores"] == ALL_CORES)
    return replace(v, profile=same)


GROUPS = tuple(replace(g, variants=tuple(map(as_profiled, g.variants))) for g in groups())


def stream_body(model: str, messages: list[dict[str, Any]], max_tokens: int,
                **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
            **extra}


def ha_messages(nonce: str) -> list[dict[str, Any]]:
    """A Home Assistant request; a different ``nonce`` up front shares no cached prefix."""
    system = f"Session {nonce}.\n{SYSTEM.read_text()}" if nonce else SYSTEM.read_text()
    return [{"role": "system", "content": system}, {"role": "user", "content": HA_QUESTION}]


def new_prompt_body(nonce: str) -> dict[str, Any]:
    """The short question behind a system message no server has seen: nothing of it is
    cached, by vLLM's prefix cache or llama.cpp's reuse of a slot's last prompt."""
    return stream_body(MODEL, [{"role": "system", "content": f"Session {nonce}."},
                               {"role": "user", "content": PROMPT}], 1)


def ha_tools() -> list[dict[str, Any]]:
    catalog = {t["function"]["name"]: t for t in json.loads(TOOLS.read_text())}
    return [catalog[name] for name in HA_TOOLS]


def gguf_file(models_dir: Path, say: Say) -> Path:
    """The Q4_K_M GGUF our provisioning de-quantizes, kept whole for llama.cpp."""
    spec = gguf_parts.by_kind(GGUF_KIND)
    dest = models_dir / "gguf" / spec.filename
    if dest.is_file() and dest.stat().st_size == spec.size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gguf-", dir=dest.parent))
    try:
        os.replace(gguf_parts.fetch(spec, work, say), dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def llama_argv(exe: Path, gguf: Path, port: int, ctx: int, slots: int) -> list[str]:
    # Each slot gets ctx / slots tokens, so ctx covers eight Home Assistant requests at once.
    return [str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "-t", str(os.cpu_count() or 1), "-c", str(ctx), "--parallel", str(slots),
            "--jinja", "--alias", MODEL, "--no-webui"]


async def start(variant: Variant, tmp: Path, say: Say, min_free_gib: float) -> Server:
    await wait_for_memory(min_free_gib, say)
    port = free_port()
    if variant.engine == "llama.cpp":
        exe = llama_cpp.ensure_built(say)
        cpu = cfgmod.load(profile="cpu")
        gguf = gguf_file(cpu.expand(cpu.config.paths.models), say)
        srv = spawn(variant.label, llama_argv(exe, gguf, port, 8 * 2048, 8),
                    tmp / f"{variant.key}.log", f"http://127.0.0.1:{port}")
        return await _ready(srv, "/health")
    cfg_path = stack_config(tmp / variant.key, port, models=[MODEL],
                            supervisor={"health_interval_s": 3600},
                            model_overrides=variant.overrides)
    if variant.engine == "ours":
        srv = spawn(variant.label, gateway_argv(cfg_path), tmp / f"{variant.key}.log",
                    f"http://127.0.0.1:{port}")
        return await _ready(srv, "/health", all_ready)
    cfg = cfgmod.load(path=cfg_path)
    model = cfg.model(MODEL)
    # vllm serve does not provision: our stack's first start (or this) makes the directory.
    from workers.provision.models import provision

    if model.provision is not cfgmod.Provision.NONE:
        provision(model.provision.value, cfg.model_path(model), say)
    vport = free_port()
    srv = spawn(variant.label, vllm_argv(cfg, model, vport), tmp / f"{variant.key}.log",
                f"http://127.0.0.1:{vport}",
                env=engine_env(model, accelerator=has_accelerator()))
    return await _ready(srv, "/v1/models")


async def _ready(srv: Server, path: str,
                 check: Callable[[httpx.Response], bool] | None = None) -> Server:
    """``srv`` once it is ready; stopped if it never gets there."""
    try:
        await wait_ready(srv, path, START_TIMEOUT_S, check)
    except BaseException:
        srv.stop()
        raise
    return srv


async def _ha(client: httpx.AsyncClient, url: str, nonce: str) -> dict[str, float]:
    """TTFT of one Home Assistant request, and the time to its complete tool call."""
    sample = await stream_one(client, url, stream_body(MODEL, ha_messages(nonce), 1))
    if not sample.ok or sample.ttft_s is None:
        raise BenchError(f"Home Assistant prompt: {sample.error or 'no output'}")
    body = {"model": MODEL, "messages": ha_messages(nonce), "tools": ha_tools(),
            "tool_choice": "required", "temperature": 0.0, "max_tokens": 64}
    t0 = time.perf_counter()
    r = await client.post(url, json=body)
    took = time.perf_counter() - t0
    if r.status_code != 200:
        raise BenchError(f"tool call: HTTP {r.status_code}: {r.text[:200]}")
    calls = r.json()["choices"][0]["message"].get("tool_calls") or []
    return {"ttft_s": sample.ttft_s, "tool_call_s": took, "called": float(bool(calls)),
            "prompt_tokens": float(r.json()["usage"]["prompt_tokens"])}


async def _measure(st: Settings, servers: dict[str, Server], progress: Progress,
                   task: TaskID) -> dict[str, Any]:
    urls = {k: f"{s.url}/v1/chat/completions" for k, s in servers.items()}
    body = stream_body(MODEL, [{"role": "user", "content": PROMPT}], st.max_tokens,
                       ignore_eos=True)

    def tick() -> None:
        progress.advance(task)

    for key in servers:
        progress.update(task, description=f"engines: warming up {key}")
        await run_load(urls[key], body, st.warmup, 1, tick)
    loads: dict[str, dict[int, list[Load]]] = {k: {1: [], 8: []} for k in servers}
    ha: dict[str, dict[str, list[float]]] = {
        k: {"cold_ttft_s": [], "warm_ttft_s": [], "warm_tool_call_s": [], "called": [],
            "prompt_tokens": []} for k in servers}
    new_ttft: dict[str, list[float]] = {k: [] for k in servers}
    async with httpx.AsyncClient(timeout=600) as client:
        for r in range(st.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for key in order:
                for conc, n in ((1, st.n1), (8, st.n8)):
                    progress.update(task, description=f"engines: round {r + 1}/{st.rounds}, "
                                                      f"{key}, {conc} stream(s)")
                    loads[key][conc].append(await run_load(urls[key], body, n, conc, tick))
                for _ in range(st.n1):
                    first = await stream_one(client, urls[key],
                                             new_prompt_body(uuid.uuid4().hex[:12]))
                    if not first.ok or first.ttft_s is None:
                        raise BenchError(f"{key}, new prompt: {first.error or 'no output'}")
                    new_ttft[key].append(first.ttft_s)
                    tick()
                progress.update(task, description=f"engines: round {r + 1}, {key}, HA prompt")
                for _ in range(st.ha):
                    nonce = uuid.uuid4().hex[:12]
                    cold = await _ha(client, urls[key], nonce)  # nothing of it is cached
                    warm = await _ha(client, urls[key], nonce)  # its whole prefix is
                    ha[key]["cold_ttft_s"].append(cold["ttft_s"])
                    ha[key]["warm_ttft_s"].append(warm["ttft_s"])
                    ha[key]["warm_tool_call_s"].append(warm["tool_call_s"])
                    ha[key]["called"].append(warm["called"])
                    ha[key]["prompt_tokens"].append(warm["prompt_tokens"])
                    tick()
    return {
        "c1": {k: summarize(loads[k][1]) for k in servers},
        "c8": {k: summarize(loads[k][8]) for k in servers},
        "new_prompt_ttft_ms": {k: pcts(v, 1e3) for k, v in new_ttft.items()},
        "ha": {k: {"cold_ttft_ms": pcts(v["cold_ttft_s"], 1e3),
                   "warm_ttft_ms": pcts(v["warm_ttft_s"], 1e3),
                   "warm_tool_call_ms": pcts(v["warm_tool_call_s"], 1e3),
                   "tool_called": sum(v["called"]) / len(v["called"]),
                   "prompt_tokens": max(v["prompt_tokens"])} for k, v in ha.items()},
    }


async def _group(g: Group, st: Settings, tmp: Path, progress: Progress, task: TaskID,
                 say: Say, min_free_gib: float) -> dict[str, Any]:
    per_variant = st.rounds * (2 * st.n1 + st.n8 + st.ha) + st.warmup
    servers: dict[str, Server] = {}
    left_out: dict[str, str] = {}
    try:
        for v in g.variants:
            progress.update(task, description=f"engines, {g.key}: starting {v.label} "
                                              f"({v.weights})")
            try:
                servers[v.key] = await start(v, tmp / g.key, say, min_free_gib)
            except BenchError as exc:
                if not v.optional:
                    raise
                left_out[v.key] = str(exc).splitlines()[0]
                say(f"{v.label} ({v.weights}) did not start, left out: {left_out[v.key]}")
                progress.advance(task, per_variant)
                continue
            say(f"{g.key}: {v.label} ({v.weights}) ready in {servers[v.key].ready_s:.1f}s")
        result = await _measure(st, servers, progress, task)
        result["memory"] = {k: asdict(tree_memory(s.proc.pid)) for k, s in servers.items()}
        result["startup_s"] = {k: s.ready_s for k, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    return {"key": g.key, "title": g.title, **result, "left_out": left_out,
            "variants": [asdict(v) for v in g.variants if v.key in servers]}


async def run(tmp: Path, quick: bool, progress: Progress, say: Say,
              min_free_gib: float) -> dict[str, Any]:
    st = QUICK if quick else FULL
    per_variant = st.rounds * (2 * st.n1 + st.n8 + st.ha) + st.warmup
    task = progress.add_task("engines: starting servers",
                             total=per_variant * sum(len(g.variants) for g in GROUPS))
    result: dict[str, Any] = {
        "groups": [await _group(g, st, tmp, progress, task, say, min_free_gib)
                   for g in GROUPS]}
    exe = llama_cpp.binary()
    result["settings"] = {**asdict(st), "model": MODEL, "prompt": PROMPT,
                          "ha_question": HA_QUESTION,
                          "llama_server": llama_cpp.version(exe) if exe.is_file() else None,
                          "llama_argv": llama_argv(Path("llama-server"), Path(
                              gguf_parts.by_kind(GGUF_KIND).filename), 0, 8 * 2048, 8)}
    progress.update(task, description="engines: done")
    return result
