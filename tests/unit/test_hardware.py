"""Hardware probes: recorded NVML and jtop readings, the real psutil path, hangs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from gateway.ops.gpu_probes import AutoGpuProbe, GpuReading, JtopProbe, NvmlProbe, is_jetson
from gateway.ops.hardware import HardwareMonitor, HostProbe, HostReading, Sampler, tree_rss

GIB = 1024**3


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# ----- NVML ---------------------------------------------------------------------------
class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class FakeNvml:
    """Shaped like ``pynvml``: module functions, handles, ctypes-like result structs."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, devices: list[dict[str, Any]]) -> None:
        self.devices = devices
        self.initialized = self.shut = False

    def nvmlInit(self) -> None:
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> Any:
        return self.devices[h]["name"]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        d = self.devices[h]
        return SimpleNamespace(total=d["total"], used=d["used"], free=d["total"] - d["used"])

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=self.devices[h]["util"], memory=10)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        temp = self.devices[h]["temp"]
        if temp is None:
            raise NVMLError_NotSupported("Not Supported")
        return int(temp)


H200 = {"name": "NVIDIA H200", "total": 141 * GIB, "used": 3 * GIB, "util": 87, "temp": 41}
OLD = {"name": b"Tesla T4", "total": 16 * GIB, "used": 1 * GIB, "util": 0, "temp": None}


def test_nvml_probe_reads_every_device() -> None:
    nv = FakeNvml([H200, OLD])
    probe = NvmlProbe(nv)
    assert nv.initialized
    first, second = probe.read()
    assert first == GpuReading(index=0, name="NVIDIA H200", kind="nvidia",
                               memory_used_bytes=3 * GIB, memory_total_bytes=141 * GIB,
                               memory_free_bytes=138 * GIB, utilization_percent=87.0,
                               temperature_c=41.0)
    # bytes names (old bindings) are decoded; an unsupported figure is None, not an error
    assert second.name == "Tesla T4" and second.temperature_c is None
    assert second.memory_used_bytes == GIB
    probe.close()
    assert nv.shut


# ----- jtop ---------------------------------------------------------------------------
class FakeJtop:
    """Shaped like ``jtop.jtop``: ok(), and memory/gpu/temperature dicts (memory in KB)."""

    def __init__(self, gpu_temp: float = 46.5, ok: bool = True) -> None:
        self._ok = ok
        self.memory = {"RAM": {"tot": 15_662_580, "used": 6_291_456, "free": 9_000_000,
                               "buffers": 1000, "cached": 2000, "shared": 2_097_152, "lfb": 9},
                       "SWAP": {"tot": 7_831_288, "used": 0, "cached": 0, "table": {}}}
        self.gpu = {"gpu": {"type": "integrated", "freq": {"cur": 612000, "max": 918000},
                            "status": {"railgate": False, "tpc_pg_mask": False,
                                       "3d_scaling": True, "load": 37.5}}}
        self.temperature = {"cpu": {"temp": 48.5, "online": True},
                            "gpu": {"temp": gpu_temp, "online": gpu_temp > -256},
                            "tj": {"temp": 49.0, "online": True}}
        self.closed = False

    def ok(self, spin: bool = False) -> bool:
        assert spin, "the probe must never block waiting for jtop's next update"
        return self._ok

    def close(self) -> None:
        self.closed = True


def test_jtop_probe_reads_the_integrated_gpu() -> None:
    client = FakeJtop()
    (gpu,) = JtopProbe(client).read()
    assert gpu.kind == "jetson" and gpu.name == "gpu"
    assert gpu.memory_total_bytes == 15_662_580 * 1024
    assert gpu.memory_used_bytes == 2_097_152 * 1024  # the RAM the GPU holds
    assert gpu.memory_free_bytes == (15_662_580 - 6_291_456) * 1024
    assert gpu.utilization_percent == 37.5 and gpu.temperature_c == 46.5


def test_jtop_offline_sensor_and_lost_service() -> None:
    (gpu,) = JtopProbe(FakeJtop(gpu_temp=-256)).read()
    assert gpu.temperature_c is None
    with pytest.raises(RuntimeError, match="jtop service"):
        JtopProbe(FakeJtop(ok=False)).read()


# ----- detection ----------------------------------------------------------------------
def test_auto_probe_without_any_gpu_library_is_cpu() -> None:
    def no_nvml() -> NvmlProbe:
        raise ImportError("No module named 'pynvml'")

    probe = AutoGpuProbe(jetson=lambda: False, open_nvml=no_nvml)
    assert probe.read() == [] and probe.kind == "cpu"

    def no_driver() -> NvmlProbe:
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    probe = AutoGpuProbe(jetson=lambda: False, open_nvml=no_driver)
    assert probe.read() == [] and probe.kind == "cpu"
    # NVML present but no device at all: also a machine without a GPU
    probe = AutoGpuProbe(jetson=lambda: False, open_nvml=lambda: NvmlProbe(FakeNvml([])))
    assert probe.read() == [] and probe.kind == "cpu"


def test_auto_probe_picks_nvml_and_jtop() -> None:
    probe = AutoGpuProbe(jetson=lambda: False, open_nvml=lambda: NvmlProbe(FakeNvml([H200])))
    assert [g.name for g in probe.read()] == ["NVIDIA H200"] and probe.kind == "nvidia"
    probe = AutoGpuProbe(jetson=lambda: True, open_jtop=lambda: JtopProbe(FakeJtop()))
    assert probe.read()[0].kind == "jetson" and probe.kind == "jetson"


def test_jetson_without_jetson_stats_says_what_to_install() -> None:
    def missing() -> JtopProbe:
        raise ImportError("No module named 'jtop'")

    probe = AutoGpuProbe(jetson=lambda: True, open_jtop=missing)
    with pytest.raises(RuntimeError, match=r"zoe-vllm\[jetson\]"):
        probe.read()
    assert probe.kind == "jetson"


def test_is_jetson_reads_the_device_tree(tmp_path: Path) -> None:
    assert not is_jetson(tmp_path)
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson Orin NX Engineering "
                                                     "Reference Developer Kit\x00")
    assert is_jetson(tmp_path)


# ----- the real CPU path --------------------------------------------------------------
def test_host_probe_reads_this_machine() -> None:
    child = psutil.Popen(["sleep", "30"])  # a process tree to measure: us and a child
    try:
        probe = HostProbe(lambda: {"me": os.getpid(), "gone": 2**22 + 7, "stopped": None})
        r = probe.read()
    finally:
        child.kill()
        child.wait()
    assert 0.0 <= r.cpu_percent <= 100.0
    assert len(r.per_core_percent) == psutil.cpu_count()
    assert 0 < r.memory_used_bytes < r.memory_total_bytes
    assert r.memory_available_bytes <= r.memory_total_bytes
    assert set(r.worker_rss_bytes) == {"me"}  # a dead pid or no pid: no figure
    own = psutil.Process().memory_info().rss
    assert r.worker_rss_bytes["me"] > own  # includes the child
    assert all(isinstance(v, float) for v in r.temperatures_c.values())


def test_tree_rss_of_a_missing_process_is_none() -> None:
    assert tree_rss(2**22 + 7) is None


# ----- sampling: failures and hangs never reach the request path ----------------------
def test_sampler_reports_a_raising_probe() -> None:
    def broken() -> list[GpuReading]:
        raise OSError("device vanished")

    s = Sampler("gpu", broken, 5.0)
    s.sample_once()
    r = s.current()
    assert r.value is None and r.error == "OSError: device vanished"


def test_a_hung_probe_goes_stale_without_blocking_readers() -> None:
    release = threading.Event()
    calls = 0

    def hangs_on_second_call() -> list[GpuReading]:
        nonlocal calls
        calls += 1
        if calls > 1:
            release.wait()
        return [GpuReading(index=0, name="g", kind="nvidia", utilization_percent=5.0)]

    host = HostReading(cpu_percent=1.0, per_core_percent=(1.0,), memory_used_bytes=1,
                       memory_total_bytes=2, memory_available_bytes=1, temperatures_c={},
                       worker_rss_bytes={})

    class HangingGpu:
        kind = "nvidia"

        def read(self) -> list[GpuReading]:
            return hangs_on_second_call()

        def close(self) -> None:
            pass

    mon = HardwareMonitor(lambda: {}, interval_s=0.2, gpu=HangingGpu(), host=lambda: host)
    mon.start()
    try:
        wait_for(lambda: calls >= 2, 5, "the probe to hang")
        snap = wait_for(lambda: (s := mon.snapshot()).probes["gpu"].error and s, 5,
                        "the hung probe to be reported")
        t0 = time.monotonic()
        snap = mon.snapshot()
        assert time.monotonic() - t0 < 1.0  # a read, not a wait for the hung probe
        assert snap.gpus == () and "has not answered" in (snap.probes["gpu"].error or "")
        assert snap.host == host  # the other probe carries on
    finally:
        release.set()
        mon.stop()
