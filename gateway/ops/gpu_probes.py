"""GPU probes: jtop on a Jetson, NVML on a discrete NVIDIA GPU, nothing otherwise.

Both libraries are optional extras (``zoe-vllm[jetson]``, ``zoe-vllm[nvidia]``),
imported only here and only when the machine looks like it needs them.
Readings are plain data; one figure a device does not support (NVML answers
``NotSupported`` for some on MIG or Jetson) is ``None``, not an error.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

KIB = 1024
# NVML errors meaning "this machine has no usable NVIDIA GPU" rather than "broken".
NO_NVIDIA_GPU = frozenset({"NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"})


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    kind: str  # "nvidia" | "jetson"
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    utilization_percent: float | None = None
    temperature_c: float | None = None


class GpuProbe(Protocol):
    kind: str

    def read(self) -> list[GpuReading]: ...

    def close(self) -> None: ...


class NvmlProbe:
    """Discrete NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, module ``pynvml``)."""

    kind = "nvidia"

    def __init__(self, nvml: Any = None) -> None:
        self.nv = nvml if nvml is not None else importlib.import_module("pynvml")
        self.nv.nvmlInit()
        count = int(self.nv.nvmlDeviceGetCount())
        self.handles = [self.nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    def _get(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nv.NVMLError:
            return None

    def read(self) -> list[GpuReading]:
        nv, out = self.nv, []
        for i, h in enumerate(self.handles):
            name = self._get(nv.nvmlDeviceGetName, h) or f"gpu{i}"
            if isinstance(name, bytes):  # older bindings return bytes
                name = name.decode(errors="replace")
            mem = self._get(nv.nvmlDeviceGetMemoryInfo, h)
            util = self._get(nv.nvmlDeviceGetUtilizationRates, h)
            temp = self._get(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            out.append(GpuReading(
                index=i, name=str(name), kind=self.kind,
                memory_used_bytes=None if mem is None else int(mem.used),
                memory_total_bytes=None if mem is None else int(mem.total),
                memory_free_bytes=None if mem is None else int(mem.free),
                utilization_percent=None if util is None else float(util.gpu),
                temperature_c=None if temp is None else float(temp)))
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nv.nvmlShutdown()


class JtopProbe:
    """A Jetson's integrated GPU through the jtop service (``jetson-stats``).

    The GPU shares the RAM: total is the RAM, used is what the GPU holds
    (jtop's ``shared``), free is the RAM nobody uses.
    """

    kind = "jetson"

    def __init__(self, client: Any = None) -> None:
        if client is None:
            client = importlib.import_module("jtop").jtop()
            client.start()  # connects to the jtop service; raises if it is not running
        self.client = client

    def read(self) -> list[GpuReading]:
        j = self.client
        if not j.ok(spin=True):
            raise RuntimeError("lost the connection to the jtop service")
        ram = j.memory["RAM"]
        total = int(ram["tot"]) * KIB
        used_all = int(ram["used"]) * KIB
        gpu_used = int(ram.get("shared", 0)) * KIB
        temp = _jetson_gpu_temperature(j.temperature)
        out = []
        for i, (name, gpu) in enumerate(j.gpu.items()):
            load = gpu.get("status", {}).get("load")
            out.append(GpuReading(
                index=i, name=str(name), kind=self.kind, memory_used_bytes=gpu_used,
                memory_total_bytes=total, memory_free_bytes=max(0, total - used_all),
                utilization_percent=None if load is None else float(load),
                temperature_c=temp))
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _jetson_gpu_temperature(temps: Any) -> float | None:
    for key in ("gpu", "GPU"):
        sensor = temps.get(key)
        # jtop reports an offline sensor as -256.
        if sensor and sensor.get("online", True) and float(sensor["temp"]) > -256:
            return float(sensor["temp"])
    return None


def is_jetson(root: Path = Path("/")) -> bool:
    if (root / "etc/nv_tegra_release").exists():
        return True
    with contextlib.suppress(OSError):
        return "jetson" in (root / "proc/device-tree/model").read_text().lower()
    return False


class AutoGpuProbe:
    """Picks jtop, NVML or nothing on its first read (in the sampler's thread).

    Detection runs there because ``nvmlInit`` or the jtop connection may block.
    A probe that fails to open is retried on later reads.
    """

    def __init__(self, jetson: Callable[[], bool] = is_jetson,
                 open_jtop: Callable[[], GpuProbe] = JtopProbe,
                 open_nvml: Callable[[], GpuProbe] = NvmlProbe) -> None:
        self.kind = "cpu"
        self.inner: GpuProbe | None = None
        self.done = False
        self.jetson, self.open_jtop, self.open_nvml = jetson, open_jtop, open_nvml

    def _detect(self) -> None:
        if self.jetson():
            self.kind = "jetson"
            try:
                self.inner = self.open_jtop()
            except ImportError as exc:
                raise RuntimeError("jetson-stats is not installed "
                                   "(pip install 'zoe-vllm[jetson]')") from exc
        else:
            try:
                self.inner = self.open_nvml()
            except ImportError:
                pass  # no NVML bindings: treat as a machine without a GPU
            except Exception as exc:
                if type(exc).__name__ not in NO_NVIDIA_GPU:
                    raise  # a driver that exists but fails: say so, retry later
            if self.inner is not None and not self.inner.read():
                self.inner.close()  # NVML without a single device
                self.inner = None
            if self.inner is not None:
                self.kind = self.inner.kind
        self.done = True

    def read(self) -> list[GpuReading]:
        if not self.done:
            self._detect()
        return [] if self.inner is None else self.inner.read()

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
