from __future__ import annotations

from pathlib import Path

import pytest

from shared import platform as pf

GIB = 1024**3
# The first line of /etc/nv_tegra_release on JetPack 6.2 (L4T R36.4.3).
TEGRA = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, " \
        "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\n"
# An Orin NX 16 GB at idle (trimmed /proc/meminfo).
MEMINFO = """MemTotal:       15980596 kB
MemFree:         9543220 kB
MemAvailable:   13312444 kB
Buffers:           60312 kB
Cached:          3570044 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def no_smi(argv: list[str]) -> str | None:
    return None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "dev").mkdir()
    (tmp_path / "etc").mkdir()
    return tmp_path


def detect(root: Path, run: pf.Runner = no_smi) -> pf.Detected:
    return pf.detect_profile(release=root / "etc/nv_tegra_release", dev=root / "dev", run=run,
                             device_tree_model=root / "model")


def test_parse_tegra_release() -> None:
    assert pf.parse_tegra_release(TEGRA) == "36.4.3"
    assert pf.parse_tegra_release("garbage") is None


def test_a_jetson_is_detected_by_its_release_file(root: Path) -> None:
    (root / "etc/nv_tegra_release").write_text(TEGRA)
    found = detect(root)
    assert found.profile == "jetson"
    assert "L4T R36.4.3" in found.reason


def test_a_jetson_without_release_file_is_detected_by_its_device_tree(root: Path) -> None:
    (root / "model").write_text("NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00")
    assert detect(root).profile == "jetson"


def test_a_raspberry_pi_fronts_ollama(root: Path) -> None:
    (root / "model").write_text("Raspberry Pi 5 Model B Rev 1.0\x00")
    found = detect(root)
    assert found.profile == "ollama" and "Raspberry Pi 5" in found.reason


def test_a_discrete_gpu_is_detected_by_its_device_node(root: Path) -> None:
    (root / "dev/nvidiactl").write_text("")
    (root / "dev/nvidia0").write_text("")
    found = detect(root)
    assert found == pf.Detected("gpu", f"{root / 'dev/nvidia0'} exists")


def test_a_discrete_gpu_is_detected_by_nvidia_smi(root: Path) -> None:
    calls: list[list[str]] = []

    def smi(argv: list[str]) -> str | None:
        calls.append(argv)
        return "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)\n"

    found = detect(root, smi)
    assert found.profile == "gpu" and "NVIDIA H100" in found.reason
    assert calls == [["nvidia-smi", "-L"]]


def test_nvidia_smi_without_a_gpu_and_nothing_else_means_cpu(root: Path) -> None:
    (root / "dev/nvidiactl").write_text("")  # a control node alone is not a GPU
    found = detect(root, lambda argv: "No devices found.\n")
    assert found.profile == "cpu"


def test_this_machine_is_detected_without_error() -> None:
    assert pf.detect_profile().profile in ("jetson", "gpu", "cpu")


def test_parse_meminfo_in_bytes() -> None:
    values = pf.parse_meminfo(MEMINFO)
    assert values["MemTotal"] == 15980596 * 1024
    assert values["MemAvailable"] == 13312444 * 1024
    assert values["HugePages_Total"] == 0  # a count, not kB


def test_meminfo_memory_uses_available_not_free(tmp_path: Path) -> None:
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO)
    mem = pf.meminfo_memory(path)
    assert mem is not None
    assert round(mem.total_gib, 2) == 15.24
    assert mem.available_bytes == 13312444 * 1024
    assert pf.meminfo_memory(tmp_path / "absent") is None


def test_device_memory_on_a_jetson_reads_meminfo_even_if_nvml_answers(root: Path) -> None:
    (root / "etc/nv_tegra_release").write_text(TEGRA)
    (root / "meminfo").write_text(MEMINFO)
    nvml = pf.MemoryInfo(80 * GIB, 79 * GIB, "NVML (GPU 0)")
    mem = pf.device_memory(release=root / "etc/nv_tegra_release", meminfo=root / "meminfo",
                           nvml=lambda: nvml)
    assert mem is not None and mem.total_bytes == 15980596 * 1024
    assert "meminfo" in mem.source


def test_device_memory_on_a_discrete_gpu_is_nvml(root: Path) -> None:
    (root / "meminfo").write_text(MEMINFO)
    nvml = pf.MemoryInfo(80 * GIB, 79 * GIB, "NVML (GPU 0)")
    mem = pf.device_memory(release=root / "etc/nv_tegra_release", meminfo=root / "meminfo",
                           nvml=lambda: nvml)
    assert mem == nvml


def test_device_memory_falls_back_to_meminfo_where_nvml_has_no_answer(root: Path) -> None:
    (root / "meminfo").write_text(MEMINFO)
    mem = pf.device_memory(release=root / "etc/nv_tegra_release", meminfo=root / "meminfo",
                           nvml=lambda: None)
    assert mem is not None and mem.available_bytes == 13312444 * 1024


def test_cpu_flags_are_read_from_the_first_processor(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx512f\n")
    assert pf.cpu_flags(info) == frozenset({"fpu", "sse2", "avx2", "fma"})
    assert pf.cpu_flags(tmp_path / "absent") == frozenset()


def test_the_weight_scheme_follows_avx512() -> None:
    assert pf.cpu_weight_scheme(frozenset({"avx2", "avx512f"})) == "awq"
    assert pf.cpu_weight_scheme(frozenset({"avx2"})) == "w8a8"
    assert pf.cpu_weight_scheme(frozenset({"asimd"})) is None
