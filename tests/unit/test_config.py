from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared import config as c

MINIMAL = """
server: {default_model: fast}
models:
  - {name: fast, role: fast, path: /m/fast}
  - {name: tools, role: tools, path: /m/tools, fallback: fast, aliases: ["hermes3:8b"]}
"""


def parse(text: str) -> c.LoadedConfig:
    return c.parse(text, Path("/etc/zoe/test.yaml"))


def mutate(**changes: object) -> str:
    data = yaml.safe_load(MINIMAL)
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split("__")
        for key in path:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
    return yaml.safe_dump(data)


def test_minimal_config_gets_defaults() -> None:
    cfg = parse(MINIMAL)
    assert cfg.server.port == 11434 and cfg.server.host == "127.0.0.1"
    assert cfg.default_model.name == "fast"
    assert cfg.model("tools").max_num_seqs == 8
    assert c.fallback_chain(cfg.config, "tools") == ["fast"]
    assert c.fallback_chain(cfg.config, "fast") == []


@pytest.mark.parametrize("name", sorted(p.stem for p in c.PROFILES_DIR.glob("*.yaml")))
def test_shipped_profiles_are_valid(name: str) -> None:
    cfg = c.load(profile=name)
    assert cfg.default_model.role is c.Role.FAST
    for m in cfg.models:
        if m.backend is c.Backend.VLLM:
            assert m.path, f"{m.name} needs a path"
        else:
            assert cfg.url(m).startswith("http"), f"{m.name} needs a URL"


def test_a_remote_model_needs_a_url() -> None:
    with pytest.raises(c.ConfigError, match="must be an http"):
        parse(mutate(models__1__backend="openai"))
    with pytest.raises(c.ConfigError, match="path` is required"):
        parse(mutate(models__0__path=""))


def test_tiny_profile_pins_each_worker_to_its_own_core() -> None:
    cfg = c.load(profile="tiny")
    cores = [m.cpu_cores for m in cfg.models if not m.on_demand]
    assert len(cores) == len(set(cores)) and None not in cores
    tools = cfg.by_role(c.Role.TOOLS)
    assert tools is not None and tools.tool_call_parser == "zoe_json"


def test_cpu_profile_gives_the_text_models_both_cores() -> None:
    cfg = c.load(profile="cpu")
    fast, tools = cfg.by_role(c.Role.FAST), cfg.by_role(c.Role.TOOLS)
    assert fast is not None and tools is not None
    assert (fast.cpu_cores, tools.cpu_cores) == ("0-1", "0-1")


@pytest.mark.parametrize("profile", ["jetson", "gpu"])
def test_accelerator_profiles_use_only_vllms_own_tool_parsers(profile: str) -> None:
    """Our parser plugin needs vLLM 0.32's hooks; the Jetson image carries vLLM 0.14."""
    from shared.engine_args import ZOE_TOOL_PARSER

    cfg = c.load(profile=profile)
    assert all(m.tool_call_parser != ZOE_TOOL_PARSER for m in cfg.models)


def test_tiny_tools_model_has_a_template_that_renders_tools() -> None:
    cfg = c.load(profile="tiny")
    tools = cfg.by_role(c.Role.TOOLS)
    assert tools is not None
    template = cfg.chat_template_path(tools)
    assert template is not None and template.exists()


def test_every_cpu_text_model_is_qwen_coder_and_calls_tools() -> None:
    cfg = c.load(profile="cpu")
    text = [m for m in cfg.models if m.role not in (c.Role.VISION, c.Role.EMBEDDING)]
    assert len(text) == 2
    assert all(m.tool_call_parser == "zoe_json" for m in text)
    assert cfg.default_model.provision is c.Provision.QWEN25_CODER_05B_CPU
    assert cfg.default_model.role is c.Role.FAST
    tools = cfg.by_role(c.Role.TOOLS)
    assert tools is not None and tools.provision is c.Provision.QWEN25_CODER_15B_GGUF
    # The one model left out above embeds and calls no tools.
    embedding = cfg.by_role(c.Role.EMBEDDING)
    assert embedding is not None and embedding.name == "all-minilm"
    assert embedding.provision is c.Provision.ALL_MINILM_L6_V2
    assert embedding.tool_call_parser is None


@pytest.mark.parametrize("text,fragment", [
    ("models: []\nserver: {default_model: x}", "at least one model"),
    (mutate(models__0__max_num_seqs="eight"),
     "Expected `int`, got `str` - at `$.models[0].max_num_seqs`"),
    (mutate(models__0__max_num_seqs=0), "`$.models[0].max_num_seqs`"),
    (mutate(server__port=70000), "`$.server.port`"),
    (mutate(models__0__role="poet"), "`$.models[0].role`"),
    (mutate(models__0__maxnumseqs=4), "unknown field `maxnumseqs`"),
    (mutate(server__default_model="nope"), "`server.default_model` 'nope' is not one of"),
    (mutate(models__1__fallback="ghost"), "fallback` 'ghost' is not a configured model"),
    (mutate(models__1__fallback="tools"), "points at the model itself"),
    (mutate(models__1__name="fast"), "'fast' at `$.models[1]` is already used"),
    (mutate(models__1__aliases=["FAST"]), "'FAST' at `$.models[1]` is already used"),
    (mutate(models__1__role="fast"), "more than one model has role 'fast'"),
    (mutate(models__0__name="has space"), "`$.models[0].name`"),
    (mutate(models__0__block_size=16), "`$.models[0].block_size` 16 must be a multiple of 32"),
    (mutate(models__0__block_size=0), "`$.models[0].block_size`"),
    ("- just\n- a list", "top level must be a mapping"),
    ("models: [", "not valid YAML"),
])
def test_invalid_configs_say_where_and_why(text: str, fragment: str) -> None:
    with pytest.raises(c.ConfigError) as info:
        parse(text)
    assert fragment in str(info.value)
    assert str(info.value).startswith("test.yaml")


def test_fallback_loop_is_refused() -> None:
    text = mutate(models__0__fallback="tools")
    with pytest.raises(c.ConfigError, match="loops back"):
        parse(text)


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(c.ConfigError, match=r"unknown profile 'nope'.*cpu"):
        c.load(profile="nope")


def test_paths_expand_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOE_VLLM_HOME", "/srv/zoe")
    cfg = parse(MINIMAL.replace("/m/fast", "'{models}/fast'"))
    assert cfg.model_path(cfg.model("fast")) == Path("/srv/zoe/models/fast")
    monkeypatch.delenv("ZOE_VLLM_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert cfg.model_path(cfg.model("fast")) == Path("/home/u/.cache/zoe-vllm/models/fast")


def test_env_selects_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(MINIMAL)
    monkeypatch.setenv("ZOE_VLLM_CONFIG", str(path))
    assert c.load().source == path.resolve()


SWAP = """
server: {default_model: fast}
models:
  - {name: fast, role: fast, path: /m/fast}
  - {name: tools, role: tools, path: /m/tools}
  - {name: vision, role: vision, path: /m/vision, on_demand: true, swap_out: tools}
  - {name: big, role: general, path: /m/big, on_demand: true, swap_out: tools}
"""


def test_swap_out_names_a_model_that_stays_loaded() -> None:
    cfg = parse(SWAP)
    assert cfg.model("vision").swap_out == "tools" and cfg.model("big").swap_out == "tools"
    # An on-demand model unloads itself when idle: giving it back later would load a model
    # nobody asked for, so it cannot be swapped out.
    with pytest.raises(c.ConfigError) as info:
        parse(SWAP.replace("/m/big, on_demand: true, swap_out: tools",
                           "/m/big, on_demand: true, swap_out: vision"))
    assert "`$.models[3].swap_out` 'vision' is on demand itself" in str(info.value)
