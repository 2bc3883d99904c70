"""The engines section of the benchmark report: which variants run where, and the targets
worked out from measured numbers (met, or missed by how much)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import cpu_engines, engines_report
from shared.platform import cpu_flags, cpu_profile_scheme


def _load(tok_s: float, ttft_ms: float) -> dict[str, Any]:
    return {"output_tok_s": tok_s, "failed": 0, "ttft_ms": {"p50": ttft_ms}}


def _group(g: cpu_engines.Group, c1: dict[str, tuple[float, float]], c8: dict[str, float],
           tool_call_ms: dict[str, float]) -> dict[str, Any]:
    variants = [v for v in g.variants if v.key in c1]
    keys = [v.key for v in variants]
    return {
        "key": g.key, "title": g.title,
        # The report's logic, whatever the profile serves on this CPU: bf16 is the profile.
        "variants": [{**asdict(v), "profile": v.key == "ours_bf16_all"} for v in variants],
        "c1": {k: _load(*c1[k]) for k in keys},
        "c8": {k: _load(c8[k], 100.0) for k in keys},
        "ha": {k: {"cold_ttft_ms": {"p50": 900.0}, "warm_ttft_ms": {"p50": 200.0},
                   "warm_tool_call_ms": {"p50": tool_call_ms[k]}, "prompt_tokens": 1500.0}
               for k in keys},
        "new_prompt_ttft_ms": {k: {"p50": 2 * c1[k][1]} for k in keys},
        "memory": {k: {"rss_mb": 1024.0} for k in keys},
        "startup_s": {k: 30.0 for k in keys},
        "left_out": {"ours_bf16_compiled": "zoe-vllm, compiled exited with 1:"}
        if g.key == "serving" else {},
    }


SETTINGS = {"model": cpu_engines.MODEL, "rounds": 3, "n1": 6, "n8": 16, "ha": 2,
            "max_tokens": 64, "llama_server": "version: 1", "llama_argv": ["x"]}


def _result() -> dict[str, Any]:
    weights, serving = cpu_engines.groups(("awq", "w8a8"))  # whatever this CPU runs
    return {"settings": SETTINGS, "groups": [
        # The anchor is slower in the second group's rounds: each group's ratios are its own.
        _group(weights, c1={"llama": (48.0, 27.0), "ours_bf16_all": (36.0, 54.0),
                            "ours_w8a8": (40.0, 50.0)},
               c8={"llama": 80.0, "ours_bf16_all": 160.0, "ours_w8a8": 170.0},
               tool_call_ms={"llama": 300.0, "ours_bf16_all": 1250.0, "ours_w8a8": 900.0}),
        _group(serving, c1={"llama": (24.0, 54.0), "ours_bf16_all": (30.0, 50.0),
                            "vllm_bf16_all": (29.0, 52.0)},
               c8={"llama": 40.0, "ours_bf16_all": 150.0, "vllm_bf16_all": 150.0},
               tool_call_ms={"llama": 300.0, "ours_bf16_all": 900.0,
                             "vllm_bf16_all": 950.0})]}


def test_the_quantized_rows_follow_the_cpu() -> None:
    avx2 = [v.key for g in cpu_engines.groups(("w8a8",)) for v in g.variants]
    assert "ours_w8a8" in avx2 and "ours_awq" not in avx2
    assert cpu_engines.schemes(frozenset({"avx2", "avx512f"})) == ("awq", "w8a8")
    assert cpu_engines.schemes(frozenset({"avx2"})) == ("w8a8",)
    assert cpu_engines.schemes(frozenset({"asimd"})) == ()
    neither = [v.key for g in cpu_engines.groups(()) for v in g.variants]
    assert not [k for k in neither if "w8a8" in k or "awq" in k] and "llama" in neither


def test_every_group_has_the_anchor_and_bf16_and_fits_in_memory() -> None:
    assert len(cpu_engines.GROUPS) >= 2
    # The form the cpu profile serves here (W8A8 on x86, bf16 elsewhere) is in the first group.
    weights = cpu_engines.GROUPS[0]
    scheme = cpu_profile_scheme(cpu_flags())
    assert [v.key for v in weights.variants if v.profile] == [f"ours_{scheme or 'bf16_all'}"]
    for g in cpu_engines.GROUPS:
        keys = [v.key for v in g.variants]
        assert keys[0] == "llama" and "ours_bf16_all" in keys
        assert sum(v.engine != "llama.cpp" for v in g.variants) <= 4
        # vllm serve reads what our start provisions: ours comes first.
        assert keys.index("ours_bf16_all") < min(
            [i for i, v in enumerate(g.variants) if v.engine == "vllm"], default=99)


def test_targets_judge_the_profile_against_its_own_groups_anchor() -> None:
    rows = engines_report.targets(_result())
    assert len(rows) == 4
    assert "the cpu profile" in rows[0][0]
    tok1, ttft1, tok8, ha = (r[-1] for r in rows)
    assert tok1 == "**missed** by 0.25x"  # 36 / 48 = 0.75x of a 1.0x target
    assert ttft1 == "**missed** by 1.00x"  # 54 ms against 27 ms: 2.0x of at most 1.0x
    assert tok8 == "**met**"  # 160 / 80 = 2.0x
    assert ha == "**missed** by 250 ms"


def test_a_result_from_before_groups_still_renders(tmp_path: Path) -> None:
    old = {**_result()["groups"][0], "settings": SETTINGS}
    for v in old["variants"]:
        del v["profile"]
    # Without the flag, the fastest of ours at one stream is judged.
    assert engines_report.targets(old)[0][1] == "40.0 vs 48.0 (0.83x)"
    assert "| zoe-vllm (W8A8 int8, cores 0-" in "\n".join(engines_report.section(old))
    engines_report.chart(old, tmp_path / "engines.png")
    assert (tmp_path / "engines.png").stat().st_size > 10_000


def test_the_section_shows_each_group_and_names_what_did_not_start(tmp_path: Path) -> None:
    text = "\n".join(engines_report.section(_result()))
    assert "### Weight forms" in text and "### Core layout" in text
    assert "`ours_bf16_compiled`" in text and "did not start" in text
    # The second group's ratios are against its own anchor: 150 / 40 tokens/s.
    assert "| vllm serve (bf16, cores 0-" in text and "3.75x" in text
    engines_report.chart(_result(), tmp_path / "engines.png")
    assert (tmp_path / "engines.png").stat().st_size > 10_000


def test_the_layouts_split_the_cores_and_the_config_gets_them(tmp_path: Path) -> None:
    import yaml

    from bench import core_layout
    from bench.common import stack_config

    shared, split = core_layout.LAYOUTS  # this project's machines have two cores or more
    assert shared.cores[core_layout.CHAT] == shared.cores[core_layout.TOOLS]
    assert split.cores[core_layout.CHAT] == "0" and split.cores[core_layout.TOOLS][0] == "1"
    path = stack_config(tmp_path, 1234, models=[core_layout.CHAT, core_layout.TOOLS],
                        per_model={m: {"cpu_cores": c} for m, c in split.cores.items()})
    models = {m["name"]: m for m in yaml.safe_load(path.read_text())["models"]}
    assert {m: models[m]["cpu_cores"] for m in models} == split.cores


def test_the_layout_section_shows_each_model_alone_and_busy() -> None:
    def s(tok: float) -> dict[str, Any]:
        return {"output_tok_s": tok, "ttft_ms": {"p50": 100.0}}

    chat, tools = "qwen2.5-coder-0.5b-chat", "qwen2.5-coder-1.5b-tools"
    e = {"settings": {"rounds": 2, "n": 4, "max_tokens": 64, "models": [chat, tools]},
         "layouts": {"split": {"label": "chat on core 0", "cores": {chat: "0", tools: "1"},
                               "alone": {chat: s(20.0), tools: s(9.0)},
                               "together": {chat: s(15.5), tools: s(7.25)},
                               "rss_mb": 12 * 1024.0}}}
    text = "\n".join(engines_report.layout_section(e))
    assert "| chat on core 0 (`0` / `1`) | 20.0 tok/s, 100 ms | 15.5 tok/s" in text
    assert "7.2 tok/s" in text and "| 12.00 |" in text


def test_the_profiles_form_is_measured_again_at_vllms_own_block_and_labelled_so() -> None:
    for forms, weights in ((("awq", "w8a8"), "W8A8 int8"), ((), "bf16")):
        group = cpu_engines.groups(forms)[0]
        block = next(v for v in group.variants if v.key == "ours_default_block")
        assert block.weights == weights
        assert block.overrides["block_size"] == cpu_engines.VLLM_CPU_BLOCK == 128
        assert not cpu_engines.as_profiled(block).profile
    e = _result()
    e["groups"][0]["variants"].append({**asdict(block), "profile": False})
    for part in ("c1", "c8"):
        e["groups"][0][part][block.key] = _load(30.0, 80.0)
    e["groups"][0]["new_prompt_ttft_ms"][block.key] = {"p50": 90.0}
    e["groups"][0]["ha"][block.key] = e["groups"][0]["ha"]["llama"]
    e["groups"][0]["memory"][block.key] = {"rss_mb": 1024.0}
    e["groups"][0]["startup_s"][block.key] = 30.0
    text = "\n".join(engines_report.section(e))
    # 30 tok/s, 80 ms on the repeated question, 90 ms on a new one (llama.cpp: 54 ms).
    assert "| zoe-vllm, vLLM's CPU block (bf16, cores 0-" in text
    assert ", block 128) | 30.0 | 80 | 90 |" in text and "| 1.67x |" in text
