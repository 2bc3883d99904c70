"""Does a profile fit its device? Memory arithmetic, pure and unit-tested.

A worker needs its weights, its KV-cache budget and a runtime overhead. The
weights come from the model directory's safetensors files when present, else
the model's ``weights_gib``, else an estimate from the known parameter counts
of its architecture and the quantization's bits per weight. The profile fits
when every *state* fits: the co-loaded (not on-demand) models together, and,
for each on-demand model, that set with the model it swaps out replaced by it.

Overheads (GiB, documented estimates; override them on the command line):

- ``cuda``: per worker on a GPU — the CUDA context with cuBLAS loaded, the
  activation peak of a ``max_num_batched_tokens`` = 4096 prefill (0.15-0.35
  for 3B-7B models) and CUDA graphs for batches up to 8 (~0.1). Measured on an
  H200 (torch 2.11, CUDA 13): context 0.61 GiB, 0.67 GiB with cuBLAS, hence
  1.25 on a discrete GPU. The context grows with the SM count, and an Orin NX
  has 8 SMs to the H200's 132: 0.75 on a Jetson (not yet measured on one).
- ``host``: per worker where the host's RAM *is* the models' memory (a Jetson's
  unified memory, or a CPU box): the worker process and vLLM's EngineCore child
  (Python, torch, tokenizer). On a CPU the measured tree was 3.6 GB with 0.26 GB
  of weights and a 1 GiB KV cache, i.e. about 2 GiB per worker; a torch process
  with CUDA and cuBLAS loaded measured 0.73 GiB RSS on the H200 host, part of it
  library pages shared between processes. 1.0 on a Jetson is an estimate: measure
  it on the board and pass ``--host-overhead-gib``.
- ``reserve``: once per device sharing RAM: the OS (JetPack 6 headless idles at
  about 1 GiB), the container runtime, the gateway, Prometheus and Grafana.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from pathlib import Path

from shared.config import Backend, LoadedConfig, ModelConfig, Provision

GIB = 1024**3
# AWQ/GPTQ 4-bit, group size 128: 4 bits per weight, one fp16 scale and one
# 4-bit zero point per group of 128.
INT4_G128_BYTES = 0.5 + 2 / 128 + 0.5 / 128
KV_DTYPE_BYTES = 2  # the KV cache follows the model's 16-bit dtype


class MemoryKind(enum.Enum):
    UNIFIED = "unified"  # Jetson: GPU and CPU share the board's RAM
    DISCRETE = "discrete"  # a GPU with its own memory
    CPU = "cpu"  # no GPU: the models live in host RAM


@dataclass(frozen=True)
class Overheads:
    cuda_gib: float
    host_gib: float
    reserve_gib: float


OVERHEADS = {
    MemoryKind.UNIFIED: Overheads(cuda_gib=0.75, host_gib=1.0, reserve_gib=1.5),
    MemoryKind.DISCRETE: Overheads(cuda_gib=1.25, host_gib=0.0, reserve_gib=0.0),
    MemoryKind.CPU: Overheads(cuda_gib=0.0, host_gib=2.0, reserve_gib=1.5),
}


@dataclass(frozen=True)
class Architecture:
    """Parameter counts (billions) and KV geometry of a known model family."""

    linear_b: float  # the decoder's linear layers: what AWQ/GPTQ quantize
    dense_b: float  # kept in 16 bits: embeddings, an untied lm_head, a vision tower
    layers: int
    kv_heads: int
    head_dim: int

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * KV_DTYPE_BYTES


# Counted from each model's config.json (hidden size, layers, MLP width, vocab).
# Matched as a substring of the lower-cased hf_repo or directory name; first match wins.
KNOWN: dict[str, Architecture] = {
    "qwen2-vl-7b": Architecture(6.5254, 1.0900 + 0.6752, 28, 4, 128),
    "qwen2.5-vl-3b": Architecture(2.7745, 0.3112 + 0.6682, 36, 2, 128),
    "qwen2.5-coder-7b": Architecture(6.5254, 1.0900, 28, 4, 128),
    "qwen2.5-7b": Architecture(6.5254, 1.0900, 28, 4, 128),
    "qwen2.5-1.5b": Architecture(1.3102, 0.2334, 28, 2, 128),
    "qwen2.5-coder-1.5b": Architecture(1.3102, 0.2334, 28, 2, 128),
    "qwen2.5-coder-0.5b": Architecture(0.3579, 0.1361, 24, 2, 64),
    "qwen2.5-0.5b": Architecture(0.3579, 0.1361, 24, 2, 64),
    "llama-3.2-3b": Architecture(2.8186, 0.3940, 28, 8, 128),
    "llama-3.2-1b": Architecture(0.9731, 0.2627, 16, 8, 64),
    "smollm2-135m": Architecture(0.1062, 0.0283, 30, 3, 64),
}


class BudgetError(ValueError):
    """A model's size cannot be determined; the message says what to set."""


def linear_bytes_per_param(quantization: str | None, dtype: str) -> float | None:
    """Bytes per quantized-layer weight, or None for a scheme we cannot size."""
    if quantization is None:
        return 4.0 if dtype in ("float32", "float") else 2.0
    q = quantization.lower()
    if q.startswith(("awq", "gptq")) or q in ("compressed-tensors", "marlin"):
        return INT4_G128_BYTES
    if q in ("fp8", "modelopt", "fbgemm_fp8"):
        return 1.0
    return None


def known_architecture(model: ModelConfig, path: Path) -> Architecture | None:
    names = [path.name.lower()] + ([model.hf_repo.lower()] if model.hf_repo else [])
    for key, arch in KNOWN.items():
        if any(key in n for n in names):
            return arch
    return None


def safetensors_bytes(path: Path) -> int | None:
    try:
        files = [p for p in path.glob("*.safetensors") if p.is_file()]
    except OSError:
        return None
    return sum(p.stat().st_size for p in files) if files else None


def weights(model: ModelConfig, path: Path) -> tuple[float, str]:
    """The model's weights in GiB, and where the number came from."""
    on_disk = safetensors_bytes(path)
    if on_disk is not None:
        return on_disk / GIB, f"safetensors in {path}"
    if model.weights_gib is not None:
        return model.weights_gib, "weights_gib"
    arch = known_architecture(model, path)
    per_param = linear_bytes_per_param(model.quantization, model.dtype)
    if arch is not None and per_param is not None:
        total = arch.linear_b * 1e9 * per_param + arch.dense_b * 1e9 * 2
        return total / GIB, f"estimate: {arch.linear_b + arch.dense_b:.2f} B params, " \
                            f"{model.quantization or model.dtype}"
    if model.provision is not Provision.NONE:
        # Tiny stand-ins built on this machine (CPU profile); sized once built.
        return 0.0, f"not built yet (`zoe-vllm provision` writes {path})"
    raise BudgetError(f"{model.name}: cannot size its weights — no safetensors in {path}, "
                      f"no `weights_gib`, and not a known architecture; set `weights_gib`")


def kv_bytes_per_token(model: ModelConfig, path: Path) -> int | None:
    """From the model's config.json when present, else the known architecture."""
    try:
        cfg = json.loads((path / "config.json").read_text())
        text = cfg.get("text_config") or cfg
        heads = int(text["num_attention_heads"])
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
        kv_heads = int(text.get("num_key_value_heads") or heads)
        return 2 * int(text["num_hidden_layers"]) * kv_heads * head_dim * KV_DTYPE_BYTES
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    arch = known_architecture(model, path)
    return arch.kv_bytes_per_token if arch else None


@dataclass(frozen=True)
class ModelBudget:
    name: str
    weights_gib: float
    weights_source: str
    kv_gib: float
    runtime_gib: float
    kv_tokens: int | None  # how many tokens the KV budget holds, when the geometry is known
    max_model_len: int

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.kv_gib + self.runtime_gib


def model_budget(cfg: LoadedConfig, model: ModelConfig, kind: MemoryKind,
                 overheads: Overheads, device_gib: float) -> ModelBudget:
    path = cfg.model_path(model)
    w, source = weights(model, path)
    runtime = overheads.host_gib + (0.0 if kind is MemoryKind.CPU else overheads.cuda_gib)
    if kind is MemoryKind.CPU:
        kv = float(max(1, round(model.kv_cache_gib)))  # VLLM_CPU_KVCACHE_SPACE is whole GiB
    elif model.gpu_memory_utilization is not None:
        # vLLM takes that fraction for everything (weights, activations, KV).
        kv = max(0.0, model.gpu_memory_utilization * device_gib - w - overheads.cuda_gib)
    else:
        kv = model.kv_cache_gib
    per_token = kv_bytes_per_token(model, path)
    tokens = int(kv * GIB // per_token) if per_token else None
    return ModelBudget(model.name, w, source, kv, runtime, tokens, model.max_model_len)


@dataclass(frozen=True)
class State:
    label: str
    models: tuple[ModelBudget, ...]
    reserve_gib: float
    capacity_gib: float

    @property
    def need_gib(self) -> float:
        return sum(m.total_gib for m in self.models) + self.reserve_gib

    @property
    def shortfall_gib(self) -> float:
        return max(0.0, self.need_gib - self.capacity_gib)


def state_sets(cfg: LoadedConfig) -> list[tuple[str, list[ModelConfig]]]:
    """Which models are loaded together: at start, and with each on-demand model in.
    Remote models (another machine's server) take no memory here."""
    primary = [m for m in cfg.models if not m.on_demand and m.backend is Backend.VLLM]
    out = [("co-loaded at start", primary)]
    for m in cfg.models:
        if m.on_demand:
            kept = [p for p in primary if p.name != m.swap_out]
            swapped = f", {m.swap_out} swapped out" if m.swap_out else ""
            out.append((f"with {m.name} loaded{swapped}", [*kept, m]))
    return out


@dataclass(frozen=True)
class Report:
    kind: MemoryKind
    device_gib: float
    overheads: Overheads
    states: list[State]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check(cfg: LoadedConfig, device_gib: float, kind: MemoryKind,
          overheads: Overheads | None = None) -> Report:
    ov = overheads or OVERHEADS[kind]
    budgets = {m.name: model_budget(cfg, m, kind, ov, device_gib) for m in cfg.models
               if m.backend is Backend.VLLM}
    states = [State(label, tuple(budgets[m.name] for m in models), ov.reserve_gib, device_gib)
              for label, models in state_sets(cfg)]
    problems = []
    for s in states:
        if s.shortfall_gib > 0:
            biggest = max(s.models, key=lambda b: b.total_gib)
            problems.append(
                f"{s.label}: needs {s.need_gib:.2f} GiB of {device_gib:.2f} GiB — short by "
                f"{s.shortfall_gib:.2f} GiB (largest: {biggest.name}, "
                f"{biggest.total_gib:.2f} GiB)")
    for b in budgets.values():
        if b.kv_tokens is not None and b.kv_tokens < b.max_model_len:
            problems.append(
                f"{b.name}: its KV budget of {b.kv_gib:.2f} GiB holds {b.kv_tokens} tokens, "
                f"fewer than max_model_len {b.max_model_len}; vLLM refuses to start")
    return Report(kind, device_gib, ov, states, problems)


def format_report(report: Report) -> list[str]:
    ov = report.overheads
    cuda = 0.0 if report.kind is MemoryKind.CPU else ov.cuda_gib
    lines = [f"memory budget: {report.device_gib:.2f} GiB of {report.kind.value} memory; "
             f"runtime per worker {cuda:.2f} GiB CUDA + {ov.host_gib:.2f} GiB host; "
             f"{ov.reserve_gib:.2f} GiB reserved for the system"]
    for s in report.states:
        verdict = (f"fits, {s.capacity_gib - s.need_gib:.2f} GiB spare" if s.shortfall_gib == 0
                   else f"SHORT by {s.shortfall_gib:.2f} GiB")
        lines.append(f"  {s.label}: {s.need_gib:.2f} GiB -> {verdict}")
        for b in s.models:
            conc = (f", KV holds {b.kv_tokens} tokens = {b.kv_tokens / b.max_model_len:.1f} x "
                    f"{b.max_model_len}" if b.kv_tokens is not None else "")
            lines.append(f"    {b.name}: {b.total_gib:.2f} = weights {b.weights_gib:.2f} "
                         f"({b.weights_source}) + KV {b.kv_gib:.2f} + runtime "
                         f"{b.runtime_gib:.2f}{conc}")
    return lines


def requested_fraction(footprint_gib: float, total_gib: float) -> float:
    """The ``gpu_memory_utilization`` that requests one worker's own footprint.

    vLLM refuses to start unless free memory >= total x gpu_memory_utilization,
    even when the KV cache has an explicit size; with its default (0.92) a
    second worker on the same device never starts.
    """
    return min(0.95, max(0.01, math.ceil(footprint_gib / total_gib * 1000) / 1000))
