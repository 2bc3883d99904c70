"""The ``engines`` section of ``docs/benchmarks/README.md``, its targets and ``engines.png``.

Ratios are against llama.cpp, the engine a CPU user runs today (inside Ollama). Targets are
reported as met or missed by how much; nothing here asserts them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt

ANCHOR = "llama"
TOK_S_1 = 1.0  # tokens/s at 1 stream, x llama.cpp
TTFT_1 = 1.0  # TTFT at 1 stream, x llama.cpp (at most)
TOK_S_8 = 1.5  # tokens/s at 8 streams, x llama.cpp
HA_TOOL_CALL_MS = 1000.0  # a complete tool call, warm prefix cache


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}" if isinstance(x, float) else str(x)


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _verdict(ok: bool, miss: str) -> str:
    return "**met**" if ok else f"**missed** by {miss}"


def label(e: dict[str, Any], key: str) -> str:
    v = next(v for v in e["variants"] if v["key"] == key)
    cores = v["overrides"].get("cpu_cores")
    where = f", cores {cores}" if cores else ""
    return f"{v['label']} ({v['weights']}{where})"


def best_ours(e: dict[str, Any]) -> str:
    """The fastest of our own variants at one stream: the one the cpu profile should use."""
    ours = [v["key"] for v in e["variants"] if v["engine"] == "ours"]
    return str(max(ours, key=lambda k: e["c1"][k]["output_tok_s"]))


def targets(e: dict[str, Any]) -> list[list[str]]:
    ours = best_ours(e)
    name = label(e, ours)
    t1, a1 = e["c1"][ours]["output_tok_s"], e["c1"][ANCHOR]["output_tok_s"]
    f1, g1 = e["c1"][ours]["ttft_ms"]["p50"], e["c1"][ANCHOR]["ttft_ms"]["p50"]
    t8, a8 = e["c8"][ours]["output_tok_s"], e["c8"][ANCHOR]["output_tok_s"]
    ha = e["ha"][ours]["warm_tool_call_ms"]["p50"]
    return [
        [f"tokens/s, 1 stream, {name} vs llama.cpp", f"{_f(t1)} vs {_f(a1)} ({_x(t1, a1)})",
         f"≥ {TOK_S_1:.1f}x", _verdict(t1 >= TOK_S_1 * a1, f"{TOK_S_1 - t1 / a1:.2f}x")],
        ["TTFT p50, 1 stream", f"{_f(f1)} ms vs {_f(g1)} ms ({_x(f1, g1)})",
         f"≤ {TTFT_1:.1f}x", _verdict(f1 <= TTFT_1 * g1, f"{f1 / g1 - TTFT_1:.2f}x")],
        ["tokens/s, 8 streams", f"{_f(t8)} vs {_f(a8)} ({_x(t8, a8)})", f"≥ {TOK_S_8:.1f}x",
         _verdict(t8 >= TOK_S_8 * a8, f"{TOK_S_8 - t8 / a8:.2f}x")],
        ["Home Assistant prompt, warm prefix: tool call complete (p50)", f"{_f(ha, 0)} ms",
         f"≤ {HA_TOOL_CALL_MS:.0f} ms",
         _verdict(ha <= HA_TOOL_CALL_MS, f"{ha - HA_TOOL_CALL_MS:.0f} ms")],
    ]


def section(e: dict[str, Any]) -> list[str]:
    keys = [v["key"] for v in e["variants"]]
    st = e["settings"]
    mode = " (quick run: numbers not meaningful)" if e.get("quick") else ""
    head = ["server", "tok/s 1 stream", "TTFT p50 1 stream (ms)", "tok/s 8 streams",
            "TTFT p50 8 streams (ms)", "HA TTFT cold (ms)", "HA TTFT warm (ms)",
            "HA tool call warm (ms)", "RSS (GiB)", "ready in (s)"]
    rows = []
    for k in keys:
        c1, c8, ha = e["c1"][k], e["c8"][k], e["ha"][k]
        rows.append([label(e, k), _f(c1["output_tok_s"]), _f(c1["ttft_ms"]["p50"], 0),
                     _f(c8["output_tok_s"]), _f(c8["ttft_ms"]["p50"], 0),
                     _f(ha["cold_ttft_ms"]["p50"], 0), _f(ha["warm_ttft_ms"]["p50"], 0),
                     _f(ha["warm_tool_call_ms"]["p50"], 0),
                     _f(e["memory"][k]["rss_mb"] / 1024, 2), _f(e["startup_s"][k], 0)])
    ratio_rows = []
    for k in keys:
        if k == ANCHOR:
            continue
        c1, c8, a1, a8 = e["c1"][k], e["c8"][k], e["c1"][ANCHOR], e["c8"][ANCHOR]
        ratio_rows.append([label(e, k), _x(c1["output_tok_s"], a1["output_tok_s"]),
                           _x(c1["ttft_ms"]["p50"], a1["ttft_ms"]["p50"]),
                           _x(c8["output_tok_s"], a8["output_tok_s"]),
                           _x(e["ha"][k]["warm_ttft_ms"]["p50"],
                              e["ha"][ANCHOR]["warm_ttft_ms"]["p50"])])
    failed = {k: e["c1"][k]["failed"] + e["c8"][k]["failed"] for k in keys}
    out = [f"## CPU engines: llama.cpp, vllm serve and ours{mode}", "",
           f"Measured {e.get('at', '?')}. Model: {st['model']} (Qwen2.5-Coder-0.5B-Instruct); "
           f"{st['rounds']} rounds, rotating the order; per round and server {st['n1']} "
           f"requests one at a time and {st['n8']} eight at a time, {st['max_tokens']} output "
           "tokens forced with `ignore_eos`; then the Home Assistant request (its system prompt "
           f"and 4 tools, {_f(max(e['ha'][k]['prompt_tokens'] for k in keys), 0)} prompt "
           f"tokens at most) {st['ha']} time(s) cold and again warm. llama.cpp: "
           f"`{' '.join(st['llama_argv'])}` ({st['llama_server'] or 'version unknown'}).", ""]
    out += _table(head, rows)
    out += ["Against llama.cpp (for TTFT, lower is better):", ""]
    out += _table(["server", "tok/s 1 stream", "TTFT 1 stream", "tok/s 8 streams",
                   "HA TTFT warm"], ratio_rows)
    for key, why in e.get("left_out", {}).items():
        out += [f"Left out, it did not start: `{key}` ({why}).", ""]
    out += [f"Failed requests: {failed}. Command: `{e.get('command', '?')}`.", "",
            "![CPU engines](engines.png)", ""]
    return out


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return [*out, *("| " + " | ".join(r) + " |" for r in rows), ""]


def chart(e: dict[str, Any], path: Path) -> None:
    keys = [v["key"] for v in e["variants"]]
    names = [label(e, k).replace(" (", "\n(") for k in keys]
    panels = (
        ("output tokens/s, 1 stream", [e["c1"][k]["output_tok_s"] for k in keys]),
        ("output tokens/s, 8 streams", [e["c8"][k]["output_tok_s"] for k in keys]),
        ("TTFT p50, 1 stream (ms)", [e["c1"][k]["ttft_ms"]["p50"] for k in keys]),
        ("Home Assistant prompt, warm: tool call (ms)",
         [e["ha"][k]["warm_tool_call_ms"]["p50"] for k in keys]),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 5.5))
    colors = ["#e08a2c" if k == ANCHOR else "#2b7bb9" for k in keys]
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.barh(names, values, color=colors)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.suptitle("CPU engines on Qwen2.5-Coder-0.5B-Instruct (orange: llama.cpp, the anchor)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
