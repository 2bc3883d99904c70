"""An embedding model in the configuration (shared/config.py) and its engine flags
(shared/engine_args.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import config as c
from shared.engine_args import engine_argv

FAST = {"name": "fast", "role": "fast", "path": "/m/fast"}
EMBED = {"name": "embed", "role": "embedding", "path": "/m/embed", "max_model_len": 256}


def parse(models: list[dict[str, Any]], default: str = "fast",
          **server: Any) -> c.LoadedConfig:
    data = {"server": {"default_model": default, **server}, "models": models}
    return c.parse(yaml.safe_dump(data), Path("x.yaml"))


def refused(models: list[dict[str, Any]], default: str = "fast") -> str:
    with pytest.raises(c.ConfigError) as caught:
        parse(models, default)
    return str(caught.value)


def test_a_chat_model_and_an_embedding_model_are_accepted() -> None:
    cfg = parse([FAST, EMBED])
    embed = cfg.model("embed")
    assert embed.role is c.Role.EMBEDDING and cfg.by_role(c.Role.EMBEDDING) is embed
    assert cfg.server.max_embedding_inputs == 256  # the default
    assert parse([FAST, EMBED], max_embedding_inputs=8).server.max_embedding_inputs == 8


def test_max_embedding_inputs_must_be_positive() -> None:
    with pytest.raises(c.ConfigError, match=r"max_embedding_inputs"):
        parse([FAST, EMBED], max_embedding_inputs=0)


def test_the_default_model_cannot_be_an_embedding_model() -> None:
    assert refused([FAST, EMBED], default="embed") == (
        "x.yaml: the default model 'embed' is an embedding model; the default must be able "
        "to chat")


def test_a_chat_model_cannot_fall_back_to_an_embedding_model() -> None:
    assert refused([{**FAST, "fallback": "embed"}, EMBED]) == (
        "x.yaml: `$.models[0].fallback` 'embed': an embedding model and a chat model cannot "
        "stand in for each other")


def test_an_embedding_model_cannot_fall_back_to_a_chat_model() -> None:
    assert refused([FAST, {**EMBED, "fallback": "fast"}]) == (
        "x.yaml: `$.models[1].fallback` 'fast': an embedding model and a chat model cannot "
        "stand in for each other")


def test_no_model_can_stand_in_for_the_embedding_model() -> None:
    """Only one model has role embedding and every other role chats, so an embedding
    model's fallback is always refused."""
    remote = {"name": "nas-embed", "role": "general", "backend": "openai",
              "url": "http://nas:8000", "remote_model": "nomic"}
    # a remote `general` model is a chat model: refused as a fallback for embeddings ...
    assert "cannot stand in for each other" in refused([FAST, {**EMBED, "fallback":
                                                               "nas-embed"}, remote])
    # ... and a second embedding role is refused by the one-model-per-role rule.
    assert refused([FAST, EMBED, {**EMBED, "name": "embed2", "path": "/m/e2"}]) == (
        "x.yaml: more than one model has role 'embedding'")


def test_an_embedding_model_on_an_ollama_backend_is_refused() -> None:
    ollama = {"name": "embed", "role": "embedding", "backend": "ollama",
              "url": "http://nas:11434", "remote_model": "all-minilm"}
    message = refused([FAST, ollama])
    assert message.startswith("x.yaml: `$.models[1]`: an embedding model needs the vllm or "
                              "openai backend")
    assert "use `backend: openai`" in message
    openai = {**ollama, "backend": "openai", "url": "http://nas:11434"}
    assert parse([FAST, openai]).model("embed").backend is c.Backend.OPENAI


def test_an_embedding_model_takes_no_tool_call_parser() -> None:
    assert refused([FAST, {**EMBED, "tool_call_parser": "hermes"}]) == (
        "x.yaml: `$.models[1]`: an embedding model takes no tool_call_parser")


# ----- engine arguments --------------------------------------------------------------------


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> c.LoadedConfig:
    monkeypatch.setenv("ZOE_VLLM_HOME", str(tmp_path))
    return c.load(profile="cpu")


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_an_embedding_model_runs_vllms_pooling_runner(cpu: c.LoadedConfig) -> None:
    model = cpu.model("all-minilm")
    assert model.json_whitespace is c.JsonWhitespace.COMPACT  # the default, still not passed
    argv = engine_argv(cpu, model, accelerator=False)
    assert flag(argv, "--runner") == "pooling"
    assert argv.count("--runner") == 1
    assert "--structured-outputs-config" not in argv
    assert "--enable-auto-tool-choice" not in argv and "--tool-call-parser" not in argv
    assert flag(argv, "--max-model-len") == "256"
    assert flag(argv, "--dtype") == "float32"
    assert "--no-enable-chunked-prefill" in argv and "--no-enable-prefix-caching" in argv
    assert "--enforce-eager" in argv


def test_a_chat_model_keeps_the_generate_runner_and_compact_json(cpu: c.LoadedConfig) -> None:
    argv = engine_argv(cpu, cpu.default_model, accelerator=False)
    assert "--runner" not in argv
    assert flag(argv, "--structured-outputs-config") == \
        '{"backend":"xgrammar","disable_any_whitespace":true}'


def test_the_gpu_profiles_embedding_model_gets_its_own_kv_budget(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ZOE_VLLM_HOME", str(tmp_path))
    cfg = c.load(profile="gpu")
    argv = engine_argv(cfg, cfg.model("all-minilm"), accelerator=True)
    assert flag(argv, "--runner") == "pooling"
    assert flag(argv, "--kv-cache-memory-bytes") == str(1024**3 // 4)  # kv_cache_gib 0.25
    assert flag(argv, "--dtype") == "float16"
    assert "--structured-outputs-config" not in argv


def test_the_jetson_profile_has_no_embedding_model(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("ZOE_VLLM_HOME", str(tmp_path))
    cfg = c.load(profile="jetson")
    assert cfg.by_role(c.Role.EMBEDDING) is None
    assert all(m.role is not c.Role.EMBEDDING for m in cfg.models)
    assert all("--runner" not in engine_argv(cfg, m, accelerator=True) for m in cfg.models)


def test_keyword_routing_cannot_pick_the_embedding_model() -> None:
    data = {"server": {"default_model": "fast"}, "models": [FAST, EMBED],
            "routing": {"reasoning_role": "embedding"}}
    with pytest.raises(c.ConfigError, match=r"`routing.reasoning_role` cannot be embedding"):
        c.parse(yaml.safe_dump(data), Path("x.yaml"))
    data["routing"] = {"reasoning_role": "fast"}  # a chat role is fine
    assert c.parse(yaml.safe_dump(data), Path("x.yaml")).config.routing.reasoning_role \
        is c.Role.FAST
