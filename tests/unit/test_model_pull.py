"""`zoe-vllm models pull`: argument handling and local snapshots (no hub access here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main as cli
from gateway.cli import model_pull as mp
from shared import config as c


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("ZOE_VLLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ZOE_VLLM_CONFIG", raising=False)
    monkeypatch.delenv("ZOE_VLLM_PROFILE", raising=False)
    return tmp_path / "home"


def snapshot(folder: Path, weights: bytes = b"w" * 1000) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "model.gguf").write_bytes(b"g" * 100)  # not something vLLM loads here
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.00.pth").write_bytes(b"p")
    return folder


def test_from_a_folder_copies_the_wanted_files(home: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "usb"
    snapshot(src / "Llama-3.2-3B-Instruct-AWQ")
    rc = cli.main(["--profile", "jetson", "models", "pull", "--from", str(src),
                   "--model", "llama-3.2-3b"])
    out = capsys.readouterr().out
    dest = home / "models" / "Llama-3.2-3B-Instruct-AWQ"
    assert rc == 0
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors",
                                                      "tokenizer.json"]
    assert (dest / "model.safetensors").read_bytes() == b"w" * 1000
    assert not (dest / "model.safetensors").is_symlink()
    assert f"llama-3.2-3b: copied ({dest})" in out


def test_link_mode_symlinks_and_a_second_run_resumes(home: Path, tmp_path: Path) -> None:
    src = snapshot(tmp_path / "usb" / "Qwen2.5-Coder-7B-Instruct-AWQ")
    cfg = c.load(profile="jetson")
    lines: list[str] = []
    out = mp.pull(cfg, names=["qwen2.5-coder-7b"], source=src.parent, link=True,
                  say=lines.append)
    dest = home / "models" / "Qwen2.5-Coder-7B-Instruct-AWQ"
    assert out == [mp.Outcome("qwen2.5-coder-7b", dest, "linked")]
    assert (dest / "model.safetensors").resolve() == (src / "model.safetensors").resolve()
    assert sum("linked" in line for line in lines) == 3
    lines.clear()
    mp.pull(cfg, names=["qwen2.5-coder-7b"], source=src.parent, link=True, say=lines.append)
    assert not any("linked" in line for line in lines)  # nothing left to do


def test_an_interrupted_copy_is_completed(home: Path, tmp_path: Path) -> None:
    src = snapshot(tmp_path / "usb" / "Llama-3.2-3B-Instruct-AWQ")
    dest = home / "models" / "Llama-3.2-3B-Instruct-AWQ"
    dest.mkdir(parents=True)
    (dest / "config.json").write_text((src / "config.json").read_text())
    (dest / "model.safetensors").write_bytes(b"w" * 10)  # a truncated copy
    lines: list[str] = []
    mp.pull(c.load(profile="jetson"), names=["llama-3.2-3b"], source=src.parent,
            say=lines.append)
    assert (dest / "model.safetensors").read_bytes() == b"w" * 1000
    assert [line.split()[1] for line in lines[1:]] == ["model.safetensors", "tokenizer.json"]


def test_a_hugging_face_cache_is_a_source(home: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snap = snapshot(cache / "blobs-elsewhere")
    entry = cache / "models--Qwen--Qwen2-VL-7B-Instruct-AWQ" / "snapshots" / "abc123"
    entry.mkdir(parents=True)
    for f in ("config.json", "tokenizer.json", "model.safetensors"):
        (entry / f).symlink_to(snap / f)  # the hub cache keeps blobs behind symlinks
    out = mp.pull(c.load(profile="jetson"), names=["qwen2-vl-7b"], source=cache,
                  say=lambda _: None)
    dest = home / "models" / "Qwen2-VL-7B-Instruct-AWQ"
    assert out[0].action == "copied"
    assert (dest / "model.safetensors").read_bytes() == b"w" * 1000
    assert not (dest / "model.safetensors").is_symlink()


HUB = {"llama-3.2-3b": "AMead10/Llama-3.2-3B-Instruct-AWQ",
       "qwen2.5-coder-7b": "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
       "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct-AWQ"}


@pytest.mark.parametrize("profile", ["jetson", "gpu"])
def test_the_hub_path_fetches_each_missing_model_once(home: Path, profile: str) -> None:
    fetched: list[tuple[str, Path]] = []

    def fake_fetch(repo: str, dest: Path) -> None:
        fetched.append((repo, dest))
        snapshot_files = {"config.json": "{}", "model.safetensors": "x"}
        for name, text in snapshot_files.items():
            (dest / name).write_text(text)

    cfg = c.load(profile=profile)
    out = mp.pull(cfg, say=lambda _: None, fetch=fake_fetch)
    assert [r for r, _ in fetched] == list(HUB.values())
    # gpu's all-minilm comes from a PyPI package (`provision:`, no hf_repo): built by the
    # worker's first start or `zoe-vllm provision`, never fetched from the hub. The jetson
    # profile has no embedding model.
    built = {"all-minilm": "skipped: built locally by `zoe-vllm provision`"} \
        if profile == "gpu" else {}
    assert {o.model: o.action for o in out} == {**dict.fromkeys(HUB, "downloaded"), **built}
    again = mp.pull(cfg, say=lambda _: None, fetch=fake_fetch)
    assert {o.model: o.action for o in again} == {**dict.fromkeys(HUB, "present"), **built}
    assert len(fetched) == 3
    assert not (home / "models" / "all-minilm-l6-v2").exists()


def test_a_fetch_that_leaves_no_weights_is_an_error(home: Path) -> None:
    with pytest.raises(mp.PullError, match=r"llama-3\.2-3b: .* has no config\.json and"):
        mp.pull(c.load(profile="jetson"), names=["llama-3.2-3b"], say=lambda _: None,
                fetch=lambda repo, dest: None)


def test_models_built_locally_are_skipped(home: Path) -> None:
    out = mp.pull(c.load(profile="cpu"), say=lambda _: None,
                  fetch=lambda repo, dest: pytest.fail("nothing to download"))
    assert out and all(o.action.startswith("skipped: built locally") for o in out)


def test_unknown_model_and_missing_snapshot_fail_clearly(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--profile", "jetson", "models", "pull", "--model", "gpt-5"]) == 1
    assert "not in jetson.yaml: gpt-5 (models: llama-3.2-3b, qwen2-vl-7b, qwen2.5-coder-7b)" \
        in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["--profile", "jetson", "models", "pull", "--from",
                     str(tmp_path / "empty"), "--model", "llama-3.2-3b"]) == 1
    assert ("llama-3.2-3b: no snapshot under" in capsys.readouterr().err)
    assert cli.main(["--profile", "jetson", "models", "pull", "--from",
                     str(tmp_path / "nope")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_pull_needs_its_subcommand() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["models"])
    assert info.value.code == 2


def test_download_asks_the_hub_for_vllm_files_only(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import huggingface_hub

    seen: dict[str, object] = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: seen.update(kw))
    mp.download("Qwen/Qwen2-VL-7B-Instruct-AWQ", tmp_path)
    assert seen["repo_id"] == "Qwen/Qwen2-VL-7B-Instruct-AWQ"
    assert seen["local_dir"] == str(tmp_path)
    assert "*.safetensors" in seen["allow_patterns"]  # type: ignore[operator]
    assert "original/*" in seen["ignore_patterns"]  # type: ignore[operator]
