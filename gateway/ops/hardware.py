"""Hardware figures for /metrics, sampled off the request path.

Each probe runs in its own daemon thread and publishes its latest reading as
one immutable object, so a scrape only reads an attribute: a slow, failing
or hung probe (NVML and the jtop service can both block) never stalls
``/metrics``. A failure drops that probe's figures and says why; a probe
that stops answering goes stale after a few intervals and is reported so.

Two probes run: the GPU probe (jtop on a Jetson, NVML on a discrete NVIDIA
GPU, none otherwise; see :mod:`gateway.ops.gpu_probes`) and the host probe
(psutil: CPU, RAM, temperatures, and each worker's process-tree RSS).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import psutil

from gateway.ops.gpu_probes import AutoGpuProbe, GpuProbe, GpuReading
from shared.process_tree import tree_rss

T = TypeVar("T")
DEFAULT_INTERVAL_S = 5.0
STALE_AFTER_INTERVALS = 3


@dataclass(frozen=True)
class HostReading:
    cpu_percent: float
    per_core_percent: tuple[float, ...]
    memory_used_bytes: int
    memory_total_bytes: int
    memory_available_bytes: int
    temperatures_c: Mapping[str, float]  # sensor label -> °C; empty without sensors
    worker_rss_bytes: Mapping[str, int]  # model -> RSS of its process tree
    cpu_model: str = ""


@dataclass(frozen=True)
class Reading(Generic[T]):
    value: T | None
    at: float | None  # wall-clock time of the last successful read
    error: str | None = None
    seconds: float | None = None  # how long the last read took


class Sampler(Generic[T]):
    """Calls ``read`` every ``interval_s`` in a daemon thread; keeps the last result."""

    def __init__(self, name: str, read: Callable[[], T], interval_s: float) -> None:
        self.name = name
        self.read = read
        self.interval_s = interval_s
        self.reading: Reading[T] = Reading(None, None, "not sampled yet")
        self.busy_since: float | None = None  # monotonic; set while a read runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"zoe-hw-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # Not joined: a hung probe must not hold up shutdown (the thread is a daemon).
        self._stop.set()

    def sample_once(self) -> None:
        t0 = time.monotonic()
        self.busy_since = t0
        try:
            value = self.read()
        except Exception as exc:  # any probe failure degrades to fewer figures
            self.reading = Reading(None, self.reading.at, f"{type(exc).__name__}: {exc}",
                                   time.monotonic() - t0)
        else:
            self.reading = Reading(value, time.time(), None, time.monotonic() - t0)
        finally:
            self.busy_since = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def current(self) -> Reading[T]:
        """The last reading, or none with an explanation if the probe stopped answering."""
        r = self.reading
        limit = self.interval_s * STALE_AFTER_INTERVALS
        busy = self.busy_since
        if busy is not None and time.monotonic() - busy > limit:
            return Reading(None, r.at, f"probe has not answered for "
                                       f"{time.monotonic() - busy:.0f}s", r.seconds)
        if r.at is not None and r.value is not None and time.time() - r.at > limit + 1:
            return Reading(None, r.at, "reading is stale", r.seconds)
        return r


class HostProbe:
    """CPU, RAM and temperatures through psutil, plus RSS per worker process tree."""

    def __init__(self, worker_pids: Callable[[], Mapping[str, int | None]]) -> None:
        self.worker_pids = worker_pids
        self.cpu_model = _cpu_model()
        # psutil's CPU percentages are "since the previous call": prime them.
        psutil.cpu_percent(interval=None, percpu=True)

    def read(self) -> HostReading:
        per_core = tuple(float(x) for x in psutil.cpu_percent(interval=None, percpu=True))
        vm = psutil.virtual_memory()
        total = sum(per_core) / len(per_core) if per_core else 0.0
        return HostReading(
            cpu_percent=round(total, 1), per_core_percent=per_core,
            memory_used_bytes=int(vm.total - vm.available), memory_total_bytes=int(vm.total),
            memory_available_bytes=int(vm.available), temperatures_c=_temperatures(),
            worker_rss_bytes=self._worker_rss(), cpu_model=self.cpu_model)

    def _worker_rss(self) -> dict[str, int]:
        out = {}
        for model, pid in list(self.worker_pids().items()):
            if pid is not None and (rss := tree_rss(pid)) is not None:
                out[model] = rss
        return out


def _temperatures() -> dict[str, float]:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return {}
    try:
        sensors: dict[str, list[Any]] = read()
    except (OSError, RuntimeError):
        return {}
    out = {}
    for chip, entries in sensors.items():
        for i, entry in enumerate(entries):
            label = f"{chip}/{entry.label or i}"
            if entry.current is not None:
                out[label] = float(entry.current)
    return out


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    return ""


@dataclass(frozen=True)
class HardwareSnapshot:
    kind: str  # "jetson" | "nvidia" | "cpu": which GPU probe applies to this machine
    gpus: tuple[GpuReading, ...]
    host: HostReading | None
    probes: Mapping[str, Reading[Any]] = field(default_factory=dict)


class HardwareMonitor:
    """Owns the samplers; :meth:`snapshot` is what scrapes read (never blocks)."""

    def __init__(self, worker_pids: Callable[[], Mapping[str, int | None]],
                 interval_s: float = DEFAULT_INTERVAL_S, gpu: GpuProbe | None = None,
                 host: Callable[[], HostReading] | None = None) -> None:
        self.gpu_probe = gpu if gpu is not None else AutoGpuProbe()
        host_read = host if host is not None else HostProbe(worker_pids).read
        self.gpu = Sampler("gpu", self.gpu_probe.read, interval_s)
        self.host = Sampler("host", host_read, interval_s)
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.gpu.start()
            self.host.start()

    def stop(self) -> None:
        self.gpu.stop()
        self.host.stop()
        with contextlib.suppress(Exception):
            self.gpu_probe.close()

    def snapshot(self) -> HardwareSnapshot:
        gpu, host = self.gpu.current(), self.host.current()
        return HardwareSnapshot(kind=self.gpu_probe.kind, gpus=tuple(gpu.value or ()),
                                host=host.value, probes={"gpu": gpu, "host": host})
