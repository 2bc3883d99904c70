"""gateway/core/capabilities.py: which model serves which endpoint, and the refusal
naming others."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.core import capabilities as cap
from shared import config as c
from shared import protocol as p

E = p.Endpoint
CONFIG: dict[str, Any] = {
    "server": {"default_model": "fast"},
    "models": [
        {"name": "fast", "role": "fast", "path": "/m/fast"},
        {"name": "desk", "role": "general", "backend": "openai", "url": "http://desk:8000",
         "remote_model": "Qwen"},
        {"name": "lan-ollama", "role": "general", "backend": "ollama",
         "url": "http://nas:11434", "remote_model": "llama3.2"},
        {"name": "all-minilm", "role": "embedding", "path": "/m/minilm",
         "max_model_len": 256},
        {"name": "lan-embed", "role": "general", "backend": "openai", "url": "http://nas:1",
         "remote_model": "nomic"},
    ],
}


@pytest.fixture
def cfg() -> c.LoadedConfig:
    return c.parse(yaml.safe_dump(CONFIG), Path("x.yaml"))


@pytest.mark.parametrize(("model", "served"), [
    ("fast", {E.CHAT, E.COMPLETION, E.RESPONSES}),
    ("desk", {E.CHAT, E.COMPLETION, E.RESPONSES}),
    # Ollama's native API has chat and generate, no Responses API
    ("lan-ollama", {E.CHAT, E.COMPLETION}),
    ("all-minilm", {E.EMBEDDINGS}),
    # a remote model is a chat model unless its role says it embeds
    ("lan-embed", {E.CHAT, E.COMPLETION, E.RESPONSES}),
])
def test_serves(cfg: c.LoadedConfig, model: str, served: set[p.Endpoint]) -> None:
    assert {e for e in E if cap.serves(cfg.model(model), e)} == served


def test_every_endpoint_has_a_name_for_the_refusals() -> None:
    assert set(cap.WHAT) == set(E)


def test_models_serving_keeps_the_configs_order(cfg: c.LoadedConfig) -> None:
    assert cap.models_serving(cfg, E.EMBEDDINGS) == ["all-minilm"]
    assert cap.models_serving(cfg, E.RESPONSES) == ["fast", "desk", "lan-embed"]
    assert cap.models_serving(cfg, E.CHAT) == ["fast", "desk", "lan-ollama", "lan-embed"]


def test_a_chat_model_asked_for_embeddings_names_the_embedding_models(
        cfg: c.LoadedConfig) -> None:
    assert cap.refusal(cfg, cfg.model("fast"), E.EMBEDDINGS) == (
        "model 'fast' is a chat model and does not serve embeddings; models that do: "
        "all-minilm")


def test_an_embedding_model_asked_to_chat_names_the_chat_models(cfg: c.LoadedConfig) -> None:
    assert cap.refusal(cfg, cfg.model("all-minilm"), E.CHAT) == (
        "model 'all-minilm' is an embedding model and does not serve chat; models that do: "
        "fast, desk, lan-ollama, lan-embed")
    assert cap.refusal(cfg, cfg.model("all-minilm"), E.RESPONSES).endswith(
        "does not serve the Responses API; models that do: fast, desk, lan-embed")


def test_an_ollama_model_asked_for_responses(cfg: c.LoadedConfig) -> None:
    assert cap.refusal(cfg, cfg.model("lan-ollama"), E.RESPONSES) == (
        "model 'lan-ollama' is served by a remote Ollama server, which has no Responses "
        "API; models that do: fast, desk, lan-embed")
    # the same model asked for what it cannot serve elsewhere is refused as a chat model
    assert cap.refusal(cfg, cfg.model("lan-ollama"), E.EMBEDDINGS).startswith(
        "model 'lan-ollama' is a chat model and does not serve embeddings")


def test_a_server_without_an_embedding_model_says_so() -> None:
    cfg = c.parse(yaml.safe_dump({"server": {"default_model": "fast"},
                                  "models": [CONFIG["models"][0]]}), Path("x.yaml"))
    assert cap.models_serving(cfg, E.EMBEDDINGS) == []
    assert cap.refusal(cfg, cfg.model("fast"), E.EMBEDDINGS).endswith(
        "models that do: none on this server")


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_each_shipped_profile_has_one_embedding_model_and_the_default_chats(
        profile: str) -> None:
    cfg = c.load(profile=profile)
    assert cap.models_serving(cfg, E.EMBEDDINGS) == ["all-minilm"]
    assert cap.serves(cfg.default_model, E.CHAT)
    assert cap.serves(cfg.default_model, E.RESPONSES)
    assert not cap.serves(cfg.default_model, E.EMBEDDINGS)


def test_the_jetson_profile_has_no_embedding_model(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    # No room on the board for a fourth vLLM worker (shared/profiles/jetson.yaml).
    monkeypatch.setenv("ZOE_VLLM_HOME", str(tmp_path))
    cfg = c.load(profile="jetson")
    assert cap.models_serving(cfg, E.EMBEDDINGS) == []
    assert cfg.by_role(c.Role.EMBEDDING) is None
    assert cap.refusal(cfg, cfg.default_model, E.EMBEDDINGS).endswith(
        "models that do: none on this server")
    assert cap.serves(cfg.default_model, E.CHAT) and cap.serves(cfg.default_model, E.RESPONSES)
