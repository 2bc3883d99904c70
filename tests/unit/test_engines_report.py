"""The engines section of the benchmark report: which variants run where, and the targets
worked out from measured numbers (met, or missed by how much)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import cpu_engines, engines_report


def _load(tok_s: float, ttft_ms: float) -> dict[str, Any]:
    return {"output_tok_s": tok_s, "failed": 0, "ttft_ms": {"p50": ttft_ms}}


def _result(c1: dict[str, tuple[float, float]], c8: dict[str, float],
            tool_call_ms: dict[str, float]) -> dict[str, Any]:
    variants = [v for v in cpu_engines.variants("w8a8") if v.key in c1]
    keys = [v.key for v in variants]
    return {
        "variants": [asdict(v) for v in variants],
        "c1": {k: _load(*c1[k]) for k in keys},
        "c8": {k: _load(c8[k], 100.0) for k in keys},
        "ha": {k: {"cold_ttft_ms": {"p50": 900.0}, "warm_ttft_ms": {"p50": 200.0},
                   "warm_tool_call_ms": {"p50": tool_call_ms[k]}, "prompt_tokens": 1500.0}
               for k in keys},
        "memory": {k: {"rss_mb": 1024.0} for k in keys},
        "startup_s": {k: 30.0 for k in keys},
        "left_out": {"ours_w8a8_compiled": "zoe-vllm, compiled exited with 1:"},
        "settings": {"model": cpu_engines.MODEL, "rounds": 3, "n1": 6, "n8": 16, "ha": 2,
                     "max_tokens": 64, "llama_server": "version: 1", "llama_argv": ["x"]},
    }


def test_the_quantized_rows_follow_the_cpu() -> None:
    avx2 = [v.key for v in cpu_engines.variants("w8a8")]
    assert avx2[0] == "llama" and "ours_w8a8" in avx2 and "vllm_w8a8" in avx2
    assert "ours_w8a8" in avx2 and avx2.index("ours_w8a8") < avx2.index("vllm_w8a8")
    assert "ours_awq" in [v.key for v in cpu_engines.variants("awq")]
    neither = [v.key for v in cpu_engines.variants(None)]
    assert not [k for k in neither if "w8a8" in k or "awq" in k] and "llama" in neither


def test_targets_take_our_fastest_variant_and_say_by_how_much_they_miss() -> None:
    e = _result(c1={"llama": (48.0, 27.0), "ours_w8a8": (36.0, 54.0),
                    "ours_bf16_all": (24.0, 60.0)},
                c8={"llama": 80.0, "ours_w8a8": 160.0, "ours_bf16_all": 110.0},
                tool_call_ms={"llama": 300.0, "ours_w8a8": 1250.0, "ours_bf16_all": 1600.0})
    assert engines_report.best_ours(e) == "ours_w8a8"
    rows = engines_report.targets(e)
    assert len(rows) == 4
    tok1, ttft1, tok8, ha = (r[-1] for r in rows)
    assert tok1 == "**missed** by 0.25x"  # 36 / 48 = 0.75x of a 1.0x target
    assert ttft1 == "**missed** by 1.00x"  # 54 ms against 27 ms: 2.0x of at most 1.0x
    assert tok8 == "**met**"  # 160 / 80 = 2.0x
    assert ha == "**missed** by 250 ms"


def test_the_section_names_what_did_not_start(tmp_path: Path) -> None:
    e = _result(c1={"llama": (48.0, 27.0), "ours_w8a8": (50.0, 20.0)},
                c8={"llama": 80.0, "ours_w8a8": 112.0},
                tool_call_ms={"llama": 300.0, "ours_w8a8": 800.0})
    text = "\n".join(engines_report.section(e))
    assert "`ours_w8a8_compiled`" in text and "did not start" in text
    assert "| zoe-vllm (W8A8 int8, cores 0-" in text
    assert [r[-1] for r in engines_report.targets(e)] == ["**met**", "**met**",
                                                          "**missed** by 0.10x", "**met**"]
    engines_report.chart(e, tmp_path / "engines.png")
    assert (tmp_path / "engines.png").stat().st_size > 10_000
