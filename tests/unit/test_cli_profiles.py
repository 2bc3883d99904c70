"""`zoe-vllm` picks its profile and checks memory budgets (no server is started)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli import main as cli
from shared import platform
from shared.config import PROFILES_DIR


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ZOE_VLLM_CONFIG", raising=False)
    monkeypatch.delenv("ZOE_VLLM_PROFILE", raising=False)
    monkeypatch.setenv("ZOE_VLLM_HOME", str(tmp_path / "home"))


def detected_as(monkeypatch: pytest.MonkeyPatch, profile: str) -> None:
    monkeypatch.setattr(platform, "detect_profile",
                        lambda: platform.Detected(profile, "test"))


def source(argv: list[str]) -> str:
    args = argparse.Namespace(profile=None, config=None)
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        setattr(args, flag.lstrip("-"), value)
    return cli._load(args).source.stem


@pytest.mark.parametrize("detected", ["jetson", "gpu", "cpu"])
def test_without_a_choice_the_hardware_picks_the_profile(monkeypatch: pytest.MonkeyPatch,
                                                         detected: str) -> None:
    detected_as(monkeypatch, detected)
    assert source([]) == detected


def test_precedence_path_env_config_profile_env_profile_detected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    detected_as(monkeypatch, "gpu")
    monkeypatch.setenv("ZOE_VLLM_PROFILE", "jetson")
    assert source([]) == "jetson"
    assert source(["--profile", "cpu"]) == "cpu"
    monkeypatch.setenv("ZOE_VLLM_CONFIG", str(PROFILES_DIR / "gpu.yaml"))
    assert source(["--profile", "cpu"]) == "gpu"
    assert source(["--config", str(PROFILES_DIR / "jetson.yaml")]) == "jetson"


def test_check_config_prints_the_jetson_budget(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--profile", "jetson", "check-config", "--device-memory-gib", "16"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "device memory 16.00 GiB from --device-memory-gib" in out
    assert "co-loaded at start: 14.29 GiB -> fits, 1.71 GiB spare" in out
    assert "with qwen2-vl-7b loaded, qwen2.5-coder-7b swapped out: 15.04 GiB -> fits" in out
    assert "all-minilm" not in out  # jetson.yaml has no embedding model


def test_check_config_prints_the_gpu_embedding_models_budget(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--profile", "gpu", "check-config", "--device-memory-gib", "16"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "co-loaded at start: 15.63 GiB -> fits, 0.37 GiB spare" in out
    assert "with qwen2-vl-7b loaded, qwen2.5-coder-7b swapped out: 15.88 GiB -> fits, " \
           "0.12 GiB spare" in out
    # eager: in both states
    assert out.count("all-minilm: 1.59 = weights 0.09 (weights_gib) + KV 0.25 + "
                     "runtime 1.25\n") == 2


def test_check_config_refuses_a_profile_that_does_not_fit(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["check-config", "--profile", "jetson", "--device-memory-gib", "15"])
    err = capsys.readouterr().err
    assert rc == 1
    assert ("jetson.yaml does not fit: with qwen2-vl-7b loaded, qwen2.5-coder-7b swapped out: "
            "needs 15.04 GiB of 15.00 GiB — short by 0.04 GiB (largest: qwen2-vl-7b") in err
    assert "co-loaded at start" not in err  # that state fits in 15 GiB (14.29 GiB)


def test_overheads_can_be_overridden(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--profile", "jetson", "check-config", "--device-memory-gib", "16",
                   "--host-overhead-gib", "2", "--reserve-gib", "1"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "runtime per worker 0.75 GiB CUDA + 2.00 GiB host; 1.00 GiB reserved" in out


def test_check_config_without_budget_only_validates(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--profile", "jetson", "check-config", "--no-budget"])
    out = capsys.readouterr().out
    assert rc == 0 and "jetson.yaml: OK" in out and "memory budget" not in out
