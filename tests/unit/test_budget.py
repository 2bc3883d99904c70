"""The memory budget, with the numbers the README quotes for the Jetson."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import yaml

from shared import budget as b
from shared import config as c
from shared import engine_args, platform

GIB = 1024**3
GB = 1e9


@pytest.fixture
def jetson(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> c.LoadedConfig:
    # An empty model directory: the sizes come from the estimates, not from disk.
    monkeypatch.setenv("ZOE_VLLM_HOME", str(tmp_path))
    return c.load(profile="jetson")


def test_awq_estimates_match_the_published_checkpoint_sizes(jetson: c.LoadedConfig) -> None:
    sizes = {m.name: b.weights(m, jetson.model_path(m))[0] for m in jetson.models}
    # In GB, the seed's "2.2GB" and the hub's 5.58 GB / 6.92 GB checkpoints; in GiB
    # the seed's "5.2GB" and "6.5GB" (it mixes the two units).
    assert {n: round(v * GIB / GB, 2) for n, v in sizes.items()} == {
        "llama-3.2-3b": 2.25, "qwen2.5-coder-7b": 5.57, "qwen2-vl-7b": 6.92}
    assert {n: round(v, 2) for n, v in sizes.items()} == {
        "llama-3.2-3b": 2.10, "qwen2.5-coder-7b": 5.19, "qwen2-vl-7b": 6.45}


def test_jetson_profile_on_a_16_gib_orin(jetson: c.LoadedConfig) -> None:
    report = b.check(jetson, 16.0, b.MemoryKind.UNIFIED)
    assert report.ok, report.problems
    start, vision = report.states
    assert start.label == "co-loaded at start"
    assert [m.name for m in start.models] == ["llama-3.2-3b", "qwen2.5-coder-7b"]
    assert vision.label == "with qwen2-vl-7b loaded, qwen2.5-coder-7b swapped out"
    assert [m.name for m in vision.models] == ["llama-3.2-3b", "qwen2-vl-7b"]
    assert round(start.need_gib, 2) == 14.29
    assert round(vision.need_gib, 2) == 15.04
    # KV budgets in tokens: enough for the context, and how many full contexts.
    tokens = {m.name: m.kv_tokens for s in report.states for m in s.models}
    assert tokens == {"llama-3.2-3b": 7021, "qwen2.5-coder-7b": 23405, "qwen2-vl-7b": 14043}
    assert jetson.by_role(c.Role.EMBEDDING) is None


def test_the_jetson_has_no_room_for_an_embedding_worker(jetson: c.LoadedConfig) -> None:
    """The figures jetson.yaml gives for leaving all-MiniLM out: with the gpu profile's
    entry added, Llama + the coder + it need 16.38 GiB (15.88 with the KV budgets cut to
    0.5 and 1.0 GiB), more than the board's ~15.3 GiB."""
    data = yaml.safe_load(jetson.source.read_text())
    gpu = yaml.safe_load(c.resolve_source(profile="gpu").read_text())
    data["models"].append(next(m for m in gpu["models"] if m["name"] == "all-minilm"))
    start = b.check(c.parse(yaml.safe_dump(data), jetson.source), 16.0,
                    b.MemoryKind.UNIFIED).states[0]
    assert [m.name for m in start.models] == ["llama-3.2-3b", "qwen2.5-coder-7b", "all-minilm"]
    assert round(start.need_gib, 2) == 16.38
    kv = {"llama-3.2-3b": 0.5, "qwen2.5-coder-7b": 1.0}
    data["models"] = [{**m, "kv_cache_gib": kv.get(m["name"], m["kv_cache_gib"])}
                      for m in data["models"]]
    start = b.check(c.parse(yaml.safe_dump(data), jetson.source), 16.0,
                    b.MemoryKind.UNIFIED).states[0]
    assert round(start.need_gib, 2) == 15.88


def test_the_seeds_arithmetic_does_not_hold(jetson: c.LoadedConfig) -> None:
    """Seed: "Active Memory: 6.5GB (primary) / 7.5GB (with vision)", from its per-model
    "GPU Memory" of 2 GB, 4.5 GB and 5 GB. The coder's and the vision model's weights
    alone are larger than those figures, so the models cannot run in them."""
    report = b.check(jetson, 16.0, b.MemoryKind.UNIFIED)
    start, vision = report.states
    weights = {m.name: m.weights_gib * GIB / GB for s in report.states for m in s.models}
    assert weights["qwen2.5-coder-7b"] > 4.5 and weights["qwen2-vl-7b"] > 5.0
    assert sum(m.weights_gib for m in start.models) * GIB / GB == pytest.approx(7.82, abs=0.01)
    assert sum(m.weights_gib for m in vision.models) * GIB / GB == pytest.approx(9.17, abs=0.01)
    # With KV caches and runtimes: what the board really needs, in GB.
    assert start.need_gib * GIB / GB == pytest.approx(15.34, abs=0.01)
    assert vision.need_gib * GIB / GB == pytest.approx(16.15, abs=0.01)


def test_a_short_device_is_refused_naming_the_state_the_model_and_the_shortfall(
        jetson: c.LoadedConfig) -> None:
    report = b.check(jetson, 14.0, b.MemoryKind.UNIFIED)
    assert not report.ok
    assert report.problems == [
        "co-loaded at start: needs 14.29 GiB of 14.00 GiB — short by 0.29 GiB "
        "(largest: qwen2.5-coder-7b, 8.19 GiB)",
        "with qwen2-vl-7b loaded, qwen2.5-coder-7b swapped out: needs 15.04 GiB of "
        "14.00 GiB — short by 1.04 GiB (largest: qwen2-vl-7b, 8.95 GiB)",
    ]


def test_gpu_profile_fits_a_16_gib_card(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    monkeypatch.setenv("ZOE_VLLM_HOME", str(tmp_path))
    report = b.check(c.load(profile="gpu"), 16.0, b.MemoryKind.DISCRETE)
    assert report.ok, report.problems
    # The embedding model is eager on the card: in both states.
    assert [s.label for s in report.states] == [
        "co-loaded at start", "with qwen2-vl-7b loaded, qwen2.5-coder-7b swapped out"]
    assert [[m.name for m in s.models] for s in report.states] == [
        ["llama-3.2-3b", "qwen2.5-coder-7b", "all-minilm"],
        ["llama-3.2-3b", "all-minilm", "qwen2-vl-7b"]]
    assert [round(s.need_gib, 2) for s in report.states] == [15.63, 15.88]
    tokens = {m.name: m.kv_tokens for s in report.states for m in s.models}
    assert tokens == {"llama-3.2-3b": 16384, "qwen2.5-coder-7b": 46811, "qwen2-vl-7b": 28086,
                      "all-minilm": None}
    # The embedding model has no estimate: the profile states its 90 MB (model.safetensors
    # is 90,868,376 bytes).
    (minilm,) = (m for m in report.states[0].models if m.name == "all-minilm")
    assert minilm.weights_source == "weights_gib"
    assert (minilm.weights_gib, minilm.kv_gib) == (0.09, 0.25)


def write_model(root: Path, name: str, safetensors: int = 0, config: dict[str, int] | None = None
                ) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if safetensors:
        with open(d / "model.safetensors", "wb") as f:
            f.truncate(safetensors)  # sparse: the size is what counts
    if config:
        (d / "config.json").write_text(json.dumps(config))
    return d


def profile(tmp_path: Path, **model: object) -> c.LoadedConfig:
    data = {"server": {"default_model": "m"},
            "models": [{"name": "m", "role": "fast", "path": str(tmp_path / "m"), **model}]}
    return c.parse(yaml.safe_dump(data), tmp_path / "p.yaml")


def test_safetensors_on_disk_win_over_weights_gib_and_estimates(tmp_path: Path) -> None:
    write_model(tmp_path, "m", safetensors=3 * GIB,
                config={"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256,
                        "num_key_value_heads": 2})
    cfg = profile(tmp_path, weights_gib=9.0, kv_cache_gib=1.0)
    (mb,) = b.check(cfg, 24.0, b.MemoryKind.DISCRETE).states[0].models
    assert mb.weights_gib == 3.0 and mb.weights_source.startswith("safetensors in")
    # config.json: 2 layers x 2 KV heads x 64 dims x K and V x 2 bytes = 1 KiB per token
    assert mb.kv_tokens == GIB // 1024


def test_weights_gib_is_used_when_nothing_is_on_disk(tmp_path: Path) -> None:
    cfg = profile(tmp_path, weights_gib=4.5)
    assert b.weights(cfg.models[0], cfg.model_path(cfg.models[0])) == (4.5, "weights_gib")


def test_an_unknown_model_asks_for_weights_gib(tmp_path: Path) -> None:
    cfg = profile(tmp_path)
    with pytest.raises(b.BudgetError, match=r"m: cannot size its weights .* set `weights_gib`"):
        b.check(cfg, 16.0, b.MemoryKind.DISCRETE)


def test_a_kv_budget_below_one_context_is_a_problem(tmp_path: Path) -> None:
    cfg = profile(tmp_path, hf_repo="Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
                  quantization="awq_marlin", max_model_len=32768, kv_cache_gib=1.0)
    report = b.check(cfg, 80.0, b.MemoryKind.DISCRETE)
    assert report.problems == ["m: its KV budget of 1.00 GiB holds 18724 tokens, fewer than "
                               "max_model_len 32768; vLLM refuses to start"]


def test_gpu_memory_utilization_models_take_their_fraction(tmp_path: Path) -> None:
    cfg = profile(tmp_path, weights_gib=2.0, gpu_memory_utilization=0.5)
    (mb,) = b.check(cfg, 24.0, b.MemoryKind.DISCRETE).states[0].models
    assert mb.total_gib == pytest.approx(12.0)


def test_cpu_kv_is_whole_gib_and_has_no_cuda_overhead(tmp_path: Path) -> None:
    cfg = profile(tmp_path, weights_gib=0.25, kv_cache_gib=0.4)
    (mb,) = b.check(cfg, 24.0, b.MemoryKind.CPU).states[0].models
    assert (mb.kv_gib, mb.runtime_gib) == (1.0, 2.0)


def test_requested_fraction_rounds_up_and_clamps() -> None:
    assert b.requested_fraction(3.6, 16.0) == 0.225
    assert b.requested_fraction(0.01, 80.0) == 0.01
    assert b.requested_fraction(90.0, 80.0) == 0.95


def test_engine_args_request_the_workers_own_footprint(jetson: c.LoadedConfig,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    sixteen = platform.MemoryInfo(16 * GIB, 13 * GIB, "test")
    monkeypatch.setattr(platform, "device_memory", lambda: sixteen)
    monkeypatch.setattr(platform, "jetson_release", lambda: "36.4.3")
    argv = engine_args.engine_argv(jetson, jetson.model("llama-3.2-3b"), accelerator=True)
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(int(0.75 * GIB))
    # (2.10 weights + 0.75 KV + 0.75 CUDA on an Orin) / 16 GiB, rounded up
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.225"
    monkeypatch.setattr(platform, "jetson_release", lambda: None)
    argv = engine_args.engine_argv(jetson, jetson.model("llama-3.2-3b"), accelerator=True)
    # a 16 GiB discrete card: 1.25 GiB CUDA runtime
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.257"
    monkeypatch.setattr(platform, "device_memory", lambda: None)
    argv = engine_args.engine_argv(jetson, jetson.model("llama-3.2-3b"), accelerator=True)
    assert "--gpu-memory-utilization" not in argv  # unknown device: vLLM's default
    cpu_argv = engine_args.engine_argv(jetson, jetson.model("llama-3.2-3b"), accelerator=False)
    assert "--gpu-memory-utilization" not in cpu_argv


def test_remote_models_take_no_local_memory(tmp_path: Path) -> None:
    data = {"server": {"default_model": "m"},
            "models": [{"name": "m", "role": "fast", "path": str(tmp_path / "m"),
                        "weights_gib": 1.0},
                       {"name": "desk", "role": "general", "backend": "openai",
                        "url": "http://desk.lan:8000", "remote_model": "Qwen"}]}
    cfg = c.parse(yaml.safe_dump(data), tmp_path / "p.yaml")
    (state,) = b.check(cfg, 16.0, b.MemoryKind.DISCRETE).states
    assert [m.name for m in state.models] == ["m"]


def test_the_vision_model_caps_image_tokens_through_its_processor(
        jetson: c.LoadedConfig) -> None:
    argv = engine_args.engine_argv(jetson, jetson.model("qwen2-vl-7b"), accelerator=True)
    kwargs = json.loads(argv[argv.index("--mm-processor-kwargs") + 1])
    # 1280 tokens of 28x28 pixels: an image fits the 4096-token context with room to talk.
    assert kwargs == {"max_pixels": 1280 * 28 * 28}
    text = engine_args.engine_argv(jetson, jetson.model("llama-3.2-3b"), accelerator=True)
    assert "--mm-processor-kwargs" not in text


def test_structured_output_is_compact_json_unless_a_model_asks_for_any_whitespace(
        jetson: c.LoadedConfig) -> None:
    llama = jetson.model("llama-3.2-3b")
    argv = engine_args.engine_argv(jetson, llama, accelerator=True)
    so = json.loads(argv[argv.index("--structured-outputs-config") + 1])
    assert so == {"backend": "xgrammar", "disable_any_whitespace": True}
    loose = msgspec.structs.replace(llama, json_whitespace=c.JsonWhitespace.ANY)
    assert "--structured-outputs-config" not in engine_args.engine_argv(
        jetson, loose, accelerator=True)
