"""Deployment configuration: one YAML file per profile, validated at load.

Every field is typed; unknown keys are refused (a typo must not silently fall
back to a default). Errors name the file and the field path, e.g.
``cpu.yaml: Expected `int`, got `str` - at `$.models[0].max_num_seqs```.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml

PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "cpu"

Positive = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
ModelName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and why."""


class Role(enum.Enum):
    FAST = "fast"
    TOOLS = "tools"
    VISION = "vision"
    GENERAL = "general"  # reached by name, alias or fallback only; never a routing target
    # A pooling model: serves /v1/embeddings and /api/embed only (and chat never).
    EMBEDDING = "embedding"


class Provision(enum.Enum):
    """How missing weights are produced on this machine (no hub downloads)."""

    NONE = "none"
    SMOLLM2_GGUF = "smollm2-gguf"
    QWEN25_CODER_05B_GGUF = "qwen2.5-coder-0.5b-gguf"
    QWEN25_CODER_15B_GGUF = "qwen2.5-coder-1.5b-gguf"
    # The same, re-quantized: 4-bit AWQ groups (vLLM's CPU int4 kernel, AVX-512 builds only)
    # or W8A8 int8 (oneDNN, every x86 build). workers/provision/awq.py says which runs where.
    QWEN25_CODER_05B_AWQ = "qwen2.5-coder-0.5b-awq"
    QWEN25_CODER_15B_AWQ = "qwen2.5-coder-1.5b-awq"
    QWEN25_CODER_05B_W8A8 = "qwen2.5-coder-0.5b-w8a8"
    QWEN25_CODER_15B_W8A8 = "qwen2.5-coder-1.5b-w8a8"
    # Whichever of those the cpu profile serves on this CPU (shared.platform).
    QWEN25_CODER_05B_CPU = "qwen2.5-coder-0.5b-cpu"
    QWEN25_CODER_15B_CPU = "qwen2.5-coder-1.5b-cpu"
    TINY_IDEFICS3 = "tiny-idefics3"
    ALL_MINILM_L6_V2 = "all-minilm-l6-v2"


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class ServerConfig(_Base, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 11434
    default_model: str = ""
    max_body_bytes: Positive = 16 * 1024 * 1024
    # A request waiting for a free slot on its model goes down the fallback
    # chain (and is finally refused with 503) after this long.
    queue_timeout_s: PositiveFloat = 30.0
    # API keys (also from ZOE_VLLM_API_KEYS and api_keys_file). With none, the
    # server refuses a non-loopback host unless allow_unauthenticated is set.
    api_keys: list[str] = []
    api_keys_file: str | None = None
    allow_unauthenticated: bool = False
    metrics_open: bool = True  # /metrics without a key (/health is always open)
    # Reading a request body slower than this is a slow-loris: 408.
    body_timeout_s: PositiveFloat = 30.0
    # The same for the request line and headers (uvicorn has no such bound),
    # and their total size (uvicorn's default parser has none either): 408, 431.
    header_timeout_s: PositiveFloat = 10.0
    max_header_bytes: Positive = 32 * 1024
    max_messages: Positive = 256
    # Texts (or token lists) in one embeddings request; each is also bounded by the
    # embedding model's context (max_model_len).
    max_embedding_inputs: Positive = 256
    max_images: Annotated[int, msgspec.Meta(ge=0)] = 4
    max_image_bytes: Positive = 8 * 1024 * 1024
    max_image_pixels: Positive = 4096 * 4096
    # Remote (http/https) image URLs are fetched by the gateway only for these
    # hosts; empty means off (no server-side requests to arbitrary URLs).
    image_url_allowlist: list[str] = []
    image_fetch_timeout_s: PositiveFloat = 10.0


class PathsConfig(_Base, frozen=True):
    models: str = "${ZOE_VLLM_HOME:-~/.cache/zoe-vllm}/models"
    logs: str = "logs"
    run: str = "run"


class SupervisorConfig(_Base, frozen=True):
    sequential_start: bool = True
    start_timeout_s: PositiveFloat = 900.0
    warmup_requests: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    stop_timeout_s: PositiveFloat = 10.0
    health_interval_s: PositiveFloat = 60.0
    probe_timeout_s: PositiveFloat = 30.0
    # How long a request waits for its model to become READY (loading,
    # restarting, swapping in) before it goes down the fallback chain.
    request_wait_s: PositiveFloat = 30.0
    # A model being unloaded first lets its in-flight requests finish, this long.
    drain_timeout_s: PositiveFloat = 60.0


class RoutingConfig(_Base, frozen=True):
    vision_keywords: list[str] = msgspec.field(
        default_factory=lambda: ["image", "photo", "picture", "see", "look", "analyze image"]
    )
    tools_keywords: list[str] = msgspec.field(
        default_factory=lambda: [
            "turn", "set", "control", "add to list", "create event", "schedule",
        ]
    )
    reasoning_keywords: list[str] = msgspec.field(
        default_factory=lambda: ["analyze", "plan", "workflow", "strategy", "compare"]
    )
    reasoning_role: Role = Role.TOOLS


class JsonWhitespace(enum.Enum):
    """What structured output (JSON schemas, `format`, strict tool calls) may put
    between JSON tokens."""

    COMPACT = "compact"  # a single space at most, never newlines
    ANY = "any"  # any run of whitespace (vLLM's default)


class Backend(enum.Enum):
    """Who serves a model: our own vLLM worker process, or a server elsewhere."""

    VLLM = "vllm"
    OPENAI = "openai"  # any OpenAI-compatible server: vllm serve, llama.cpp, zoe-vllm
    OLLAMA = "ollama"  # an Ollama server's native API


class ModelConfig(_Base, frozen=True):
    name: ModelName
    role: Role
    path: str = ""  # required for the vllm backend
    backend: Backend = Backend.VLLM
    # Remote backends: base URL, the model's name there, and its API key (from
    # an environment variable or a secrets file; never written to logs).
    url: str | None = None
    remote_model: str | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    tls_verify: bool = True
    connect_timeout_s: PositiveFloat = 5.0
    read_timeout_s: PositiveFloat = 300.0
    aliases: list[ModelName] = []
    description: str = ""
    provision: Provision = Provision.NONE
    # Where `zoe-vllm models pull` fetches the weights from (a Hugging Face repo id).
    hf_repo: str | None = None
    # The weights' size, for the memory budget when the model is not on disk yet
    # and is not a known architecture (see shared/budget.py).
    weights_gib: PositiveFloat | None = None
    max_model_len: Positive = 2048
    max_num_seqs: Positive = 8  # also the number of requests admitted at once
    max_queued: Annotated[int, msgspec.Meta(ge=0)] = 32  # beyond: 503 "server busy"
    max_num_batched_tokens: Positive = 4096
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    # Tokens per KV-cache block (vLLM's --block-size), which is also where a prefix-cache
    # hit can end: a prompt's last partial block is always computed again. Unset, vLLM
    # picks (128 on a CPU, 16 on a GPU).
    block_size: Positive | None = None
    enforce_eager: bool = False
    dtype: str = "auto"
    quantization: str | None = None
    # KV-cache budget. On CPU it becomes VLLM_CPU_KVCACHE_SPACE; on a GPU the
    # engine's kv_cache_memory_bytes (an explicit budget, not a fraction of
    # "free" memory, which is meaningless on unified memory).
    kv_cache_gib: PositiveFloat = 1.0
    gpu_memory_utilization: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    cpu_cores: str | None = None  # VLLM_CPU_OMP_THREADS_BIND, e.g. "0" or "0-3"
    tool_call_parser: str | None = None
    chat_template: str | None = None
    on_demand: bool = False
    # On-demand models only: the model unloaded to make room (the seed's vision
    # model swaps out the coder), and the idle time after which this model is
    # unloaded again and that model restored.
    swap_out: str | None = None
    idle_unload_s: PositiveFloat = 300.0
    # Overrides supervisor.request_wait_s for this model (an on-demand model's
    # first request must wait for a whole load).
    request_wait_s: PositiveFloat | None = None
    fallback: str | None = None
    limit_images_per_prompt: Annotated[int, msgspec.Meta(ge=0)] = 1
    # Passed to the model's image processor (vLLM's --mm-processor-kwargs), e.g.
    # Qwen2-VL's {"max_pixels": 1003520}: at most 1280 image tokens per picture.
    mm_processor_kwargs: dict[str, Any] | None = None
    # With ANY, a small model can pad JSON with newlines until max_tokens and hand
    # back a cut-off answer (SmolLM2 did, on Home Assistant's structured output).
    json_whitespace: JsonWhitespace = JsonWhitespace.COMPACT
    env: dict[str, str] = {}


class Config(_Base, frozen=True):
    models: list[ModelConfig]
    server: ServerConfig = ServerConfig()
    paths: PathsConfig = PathsConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    routing: RoutingConfig = RoutingConfig()


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where it came from (for resolving relative paths)."""

    config: Config
    source: Path

    @property
    def server(self) -> ServerConfig:
        return self.config.server

    @property
    def models(self) -> list[ModelConfig]:
        return self.config.models

    @property
    def default_model(self) -> ModelConfig:
        return self.model(self.config.server.default_model)

    def model(self, name: str) -> ModelConfig:
        for m in self.config.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def by_role(self, role: Role) -> ModelConfig | None:
        return next((m for m in self.config.models if m.role is role), None)

    def expand(self, value: str) -> Path:
        """Expand ``${VAR:-default}`` and ``~``; relative paths are from the current dir."""
        path = Path(os.path.expanduser(_expand_vars(value)))
        return path if path.is_absolute() else (Path.cwd() / path)

    def model_path(self, model: ModelConfig) -> Path:
        return Path(os.path.expanduser(_expand_vars(model.path.replace(
            "{models}", str(self.expand(self.config.paths.models))))))

    def url(self, model: ModelConfig) -> str:
        """A remote model's base URL, ``${VAR:-default}`` expanded."""
        return _expand_vars(model.url or "").rstrip("/")

    def chat_template_path(self, model: ModelConfig) -> Path | None:
        if model.chat_template is None:
            return None
        path = Path(os.path.expanduser(_expand_vars(model.chat_template)))
        return path if path.is_absolute() else (self.source.parent / path).resolve()

    @property
    def logs_dir(self) -> Path:
        return self.expand(self.config.paths.logs)

    @property
    def run_dir(self) -> Path:
        return self.expand(self.config.paths.run)


def _expand_vars(value: str) -> str:
    """``os.path.expandvars`` plus shell-style ``${VAR:-default}``."""
    out, i = [], 0
    while i < len(value):
        start = value.find("${", i)
        if start < 0:
            out.append(value[i:])
            break
        end = value.find("}", start)
        if end < 0:
            out.append(value[i:])
            break
        out.append(value[i:start])
        name, _, default = value[start + 2 : end].partition(":-")
        out.append(os.environ.get(name) or default)
        i = end + 1
    return os.path.expandvars("".join(out))


def resolve_source(profile: str | None = None, path: str | Path | None = None) -> Path:
    """The config file to load: an explicit path, else a named profile.

    Precedence: ``path`` argument, ``ZOE_VLLM_CONFIG``, ``profile`` argument,
    ``ZOE_VLLM_PROFILE``, then the ``cpu`` profile.
    """
    explicit = path or os.environ.get("ZOE_VLLM_CONFIG")
    if explicit:
        return Path(explicit)
    name = profile or os.environ.get("ZOE_VLLM_PROFILE") or DEFAULT_PROFILE
    candidate = PROFILES_DIR / f"{name}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown profile {name!r} (known profiles: {known})")
    return candidate


def load(profile: str | None = None, path: str | Path | None = None) -> LoadedConfig:
    source = resolve_source(profile, path)
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {source}: {exc.strerror}") from exc
    return parse(text, source)


def parse(text: str, source: Path) -> LoadedConfig:
    try:
        raw: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source.name}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source.name}: the top level must be a mapping")
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source.name}: {exc}") from exc
    _check(config, source.name)
    return LoadedConfig(config=config, source=source.resolve())


def _check(config: Config, where: str) -> None:
    """Cross-field rules that a schema cannot express."""

    def fail(msg: str) -> None:
        raise ConfigError(f"{where}: {msg}")

    if not config.models:
        fail("`models` must list at least one model")
    names: dict[str, str] = {}
    for i, m in enumerate(config.models):
        for n in (m.name, *m.aliases):
            key = n.lower()
            if key in names:
                fail(f"model name or alias {n!r} at `$.models[{i}]` is already used by "
                     f"{names[key]!r}")
            names[key] = m.name
    model_names = {m.name for m in config.models}
    default = config.server.default_model
    if not default:
        fail("`server.default_model` is required")
    if default not in model_names:
        fail(f"`server.default_model` {default!r} is not one of the models "
             f"({', '.join(sorted(model_names))})")
    if next(m for m in config.models if m.name == default).on_demand:
        fail(f"the default model {default!r} cannot be `on_demand`")
    for i, m in enumerate(config.models):
        if m.fallback is not None:
            if m.fallback not in model_names:
                fail(f"`$.models[{i}].fallback` {m.fallback!r} is not a configured model")
            if m.fallback == m.name:
                fail(f"`$.models[{i}].fallback` points at the model itself")
        if m.backend is Backend.VLLM and not m.path:
            fail(f"`$.models[{i}].path` is required for the vllm backend")
        if m.backend is not Backend.VLLM:
            if not m.url or not _expand_vars(m.url).startswith(("http://", "https://")):
                fail(f"`$.models[{i}].url` must be an http(s) URL for the "
                     f"{m.backend.value} backend")
            if m.on_demand:
                fail(f"`$.models[{i}]`: a remote ({m.backend.value}) model cannot be on_demand")
        if m.swap_out is not None:
            if not m.on_demand:
                fail(f"`$.models[{i}].swap_out` needs `on_demand: true`")
            if m.swap_out not in model_names or m.swap_out == m.name:
                fail(f"`$.models[{i}].swap_out` {m.swap_out!r} is not another configured model")
            if m.swap_out == default:
                fail(f"`$.models[{i}].swap_out` cannot unload the default model {default!r}")
            if next(x for x in config.models if x.name == m.swap_out).on_demand:
                fail(f"`$.models[{i}].swap_out` {m.swap_out!r} is on demand itself: it "
                     "unloads when idle, so there is nothing to give back")
        if m.block_size is not None and m.block_size % 32:
            fail(f"`$.models[{i}].block_size` {m.block_size} must be a multiple of 32: vLLM's "
                 "CPU attention takes no other (unset, a GPU gets its default of 16)")
        if m.max_num_batched_tokens < m.max_model_len and not m.enable_chunked_prefill:
            fail(f"`$.models[{i}]`: max_num_batched_tokens ({m.max_num_batched_tokens}) "
                 f"< max_model_len ({m.max_model_len}) needs enable_chunked_prefill: true")
    _check_embedding_models(config, fail)
    _check_fallback_cycles(config, fail)
    roles = [m.role for m in config.models]
    for role in (Role.FAST, Role.TOOLS, Role.VISION, Role.EMBEDDING):
        if roles.count(role) > 1:
            fail(f"more than one model has role {role.value!r}")


def _check_embedding_models(config: Config, fail: Any) -> None:
    """An embedding model answers embeddings only, so it never stands in for a chat model
    (nor one for it), and it is not the default a chat request without a model gets."""
    role = {m.name: m.role for m in config.models}
    if config.routing.reasoning_role is Role.EMBEDDING:
        fail("`routing.reasoning_role` cannot be embedding: keyword routing picks a chat model")
    if role[config.server.default_model] is Role.EMBEDDING:
        fail(f"the default model {config.server.default_model!r} is an embedding model; "
             "the default must be able to chat")
    for i, m in enumerate(config.models):
        if m.fallback is not None and (role[m.fallback] is Role.EMBEDDING) != (
                m.role is Role.EMBEDDING):
            fail(f"`$.models[{i}].fallback` {m.fallback!r}: an embedding model and a chat "
                 "model cannot stand in for each other")
        if m.role is Role.EMBEDDING:
            if m.backend is Backend.OLLAMA:
                fail(f"`$.models[{i}]`: an embedding model needs the vllm or openai backend "
                     "(Ollama serves /v1/embeddings too: use `backend: openai`)")
            if m.tool_call_parser:
                fail(f"`$.models[{i}]`: an embedding model takes no tool_call_parser")


def _check_fallback_cycles(config: Config, fail: Any) -> None:
    nxt = {m.name: m.fallback for m in config.models}
    for start in nxt:
        seen = {start}
        cur = nxt[start]
        while cur is not None:
            if cur in seen:
                fail(f"fallback chain starting at {start!r} loops back to {cur!r}")
            seen.add(cur)
            cur = nxt[cur]


def fallback_chain(config: Config, name: str) -> list[str]:
    """The models after ``name`` in its fallback chain, in order."""
    nxt = {m.name: m.fallback for m in config.models}
    chain: list[str] = []
    cur = nxt.get(name)
    while cur is not None:
        chain.append(cur)
        cur = nxt.get(cur)
    return chain
