"""What each configured model can serve, and the refusal when it cannot.

An embedding model answers embeddings only; every other model answers chat, completions and
the Responses API, but no embeddings. A remote Ollama backend is reached through Ollama's
chat and generate APIs, which have no Responses API. Each check runs before routing loads
anything, so a request a model cannot serve costs nothing.
"""

from __future__ import annotations

from shared import protocol as p
from shared.config import Backend, LoadedConfig, ModelConfig, Role

WHAT = {p.Endpoint.CHAT: "chat", p.Endpoint.COMPLETION: "completions",
        p.Endpoint.EMBEDDINGS: "embeddings", p.Endpoint.RESPONSES: "the Responses API"}


def serves(model: ModelConfig, endpoint: p.Endpoint) -> bool:
    if model.role is Role.EMBEDDING:
        return endpoint is p.Endpoint.EMBEDDINGS
    if endpoint is p.Endpoint.EMBEDDINGS:
        return False
    return endpoint is not p.Endpoint.RESPONSES or model.backend is not Backend.OLLAMA


def models_serving(cfg: LoadedConfig, endpoint: p.Endpoint) -> list[str]:
    return [m.name for m in cfg.models if serves(m, endpoint)]


def refusal(cfg: LoadedConfig, model: ModelConfig, endpoint: p.Endpoint) -> str:
    """Why ``model`` cannot serve ``endpoint``, naming the models that can."""
    others = ", ".join(models_serving(cfg, endpoint)) or "none on this server"
    if model.role is Role.EMBEDDING:
        why = "is an embedding model and does not serve " + WHAT[endpoint]
    elif endpoint is p.Endpoint.RESPONSES:
        why = "is served by a remote Ollama server, which has no Responses API"
    else:
        why = "is a chat model and does not serve " + WHAT[endpoint]
    return f"model {model.name!r} {why}; models that do: {others}"
