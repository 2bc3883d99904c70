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


def groups(e: dict[str, Any]) -> list[dict[str, Any]]:
    """The groups measured; a result from before groups is one group of its own."""
    return list(e["groups"]) if "groups" in e else [{"key": "all", "title": "", **e}]


def label(e: dict[str, Any], key: str) -> str:
    v = next(v for v in e["variants"] if v["key"] == key)
    cores = v["overrides"].get("cpu_cores")
    where = f", cores {cores}" if cores else ""
    block = v["overrides"].get("block_size")
    where += f", block {block}" if block else ""
    mark = ", the cpu profile" if v.get("profile") else ""
    return f"{v['label']} ({v['weights']}{where}{mark})"


def profiled(e: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The first group with ours as the cpu profile serves the model, and that variant's key:
    the targets are judged on it (each group measures it again, with the anchor). A result
    from before the flag existed judges its fastest variant of ours at one stream."""
    for g in groups(e):
        for v in g["variants"]:
            if v.get("profile"):
                return g, str(v["key"])
    g = groups(e)[0]
    ours = [v["key"] for v in g["variants"] if v["engine"] == "ours"]
    return g, str(max(ours, key=lambda k: g["c1"][k]["output_tok_s"]))


def targets(e: dict[str, Any]) -> list[list[str]]:
    g, ours = profiled(e)
    name = label(g, ours)
    t1, a1 = g["c1"][ours]["output_tok_s"], g["c1"][ANCHOR]["output_tok_s"]
    f1, g1 = g["c1"][ours]["ttft_ms"]["p50"], g["c1"][ANCHOR]["ttft_ms"]["p50"]
    t8, a8 = g["c8"][ours]["output_tok_s"], g["c8"][ANCHOR]["output_tok_s"]
    ha = g["ha"][ours]["warm_tool_call_ms"]["p50"]
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
    st = e["settings"]
    mode = " (quick run: numbers not meaningful)" if e.get("quick") else ""
    every = [k for g in groups(e) for k in g["ha"]]
    tokens = max(g["ha"][k]["prompt_tokens"] for g in groups(e) for k in g["ha"])
    out = [f"## CPU engines: llama.cpp, vllm serve and ours{mode}", "",
           f"Measured {e.get('at', '?')}. Model: {st['model']} (Qwen2.5-Coder-0.5B-Instruct). "
           "Each group's servers are up at once; "
           f"{st['rounds']} rounds, rotating the order; per round and server {st['n1']} "
           f"requests one at a time and {st['n8']} eight at a time, {st['max_tokens']} output "
           "tokens forced with `ignore_eos`, the same question each time (llama.cpp reuses "
           "its slot's last prompt, vLLM's prefix cache the whole blocks of it); "
           f"{st['n1']} times the first token of that question behind a system message no "
           "server has seen (a new prompt: nothing cached); then the Home Assistant request "
           "(its system prompt "
           f"and 4 tools, {_f(tokens, 0)} prompt tokens at most) {st['ha']} time(s) cold and "
           "again warm. Every group has llama.cpp and ours on bf16 on both cores, so each "
           "step is read against both in the same rounds; the targets are judged on the row "
           "marked as the cpu profile. llama.cpp: "
           f"`{' '.join(st['llama_argv'])}` ({st['llama_server'] or 'version unknown'}).", ""]
    for g in groups(e):
        out += _group_tables(g)
    out += [f"Servers measured: {len(every)}. Command: `{e.get('command', '?')}`.", "",
            "![CPU engines](engines.png)", ""]
    return out


def _group_tables(g: dict[str, Any]) -> list[str]:
    keys = [v["key"] for v in g["variants"]]
    head = ["server", "tok/s 1 stream", "TTFT p50 1 stream (ms)",
            "TTFT p50, new prompt (ms)", "tok/s 8 streams",
            "TTFT p50 8 streams (ms)", "HA TTFT cold (ms)", "HA TTFT warm (ms)",
            "HA tool call warm (ms)", "RSS (GiB)", "ready in (s)"]
    rows, ratio_rows = [], []
    a1, a8 = g["c1"][ANCHOR], g["c8"][ANCHOR]
    # Measured since 2026-12-04; a result from before has no such column's numbers.
    new = g.get("new_prompt_ttft_ms", {})
    for k in keys:
        c1, c8, ha = g["c1"][k], g["c8"][k], g["ha"][k]
        rows.append([label(g, k), _f(c1["output_tok_s"]), _f(c1["ttft_ms"]["p50"], 0),
                     _f(new.get(k, {}).get("p50"), 0),
                     _f(c8["output_tok_s"]), _f(c8["ttft_ms"]["p50"], 0),
                     _f(ha["cold_ttft_ms"]["p50"], 0), _f(ha["warm_ttft_ms"]["p50"], 0),
                     _f(ha["warm_tool_call_ms"]["p50"], 0),
                     _f(g["memory"][k]["rss_mb"] / 1024, 2), _f(g["startup_s"][k], 0)])
        if k != ANCHOR:
            ratio_rows.append([label(g, k), _x(c1["output_tok_s"], a1["output_tok_s"]),
                               _x(c1["ttft_ms"]["p50"], a1["ttft_ms"]["p50"]),
                               _x(new.get(k, {}).get("p50"), new.get(ANCHOR, {}).get("p50")),
                               _x(c8["output_tok_s"], a8["output_tok_s"]),
                               _x(ha["warm_ttft_ms"]["p50"],
                                  g["ha"][ANCHOR]["warm_ttft_ms"]["p50"])])
    failed = {k: g["c1"][k]["failed"] + g["c8"][k]["failed"] for k in keys}
    out = [f"### {g['title']}", ""] if g.get("title") else []
    out += _table(head, rows)
    out += ["Against llama.cpp (for TTFT, lower is better):", ""]
    out += _table(["server", "tok/s 1 stream", "TTFT 1 stream", "TTFT, new prompt",
                   "tok/s 8 streams", "HA TTFT warm"], ratio_rows)
    for key, why in g.get("left_out", {}).items():
        out += [f"Left out, it did not start: `{key}` ({why}).", ""]
    return [*out, f"Failed requests: {failed}.", ""]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return [*out, *("| " + " | ".join(r) + " |" for r in rows), ""]


def _bar_label(v: float) -> str:
    return f" {v:,.0f}" if v >= 100 else f" {v:.1f}"


def chart(e: dict[str, Any], path: Path) -> None:
    rows = [(g, k) for g in groups(e) for k in (v["key"] for v in g["variants"])]
    many = len(groups(e)) > 1
    names = [(f"[{g['key']}] " if many else "") + label(g, k).replace(" (", "\n(")
             for g, k in rows]
    panels = (
        ("output tokens/s, 1 stream", [g["c1"][k]["output_tok_s"] for g, k in rows]),
        ("output tokens/s, 8 streams", [g["c8"][k]["output_tok_s"] for g, k in rows]),
        ("TTFT p50, 1 stream (ms)", [g["c1"][k]["ttft_ms"]["p50"] for g, k in rows]),
        ("Home Assistant prompt, warm: tool call (ms)",
         [g["ha"][k]["warm_tool_call_ms"]["p50"] for g, k in rows]),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 1.0 + 0.75 * len(rows)))
    colors = ["#e08a2c" if k == ANCHOR else "#2b7bb9" for _, k in rows]
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.barh(names, values, color=colors)
        for y, v in enumerate(values):
            ax.text(v, y, _bar_label(v), va="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(x=0.18)
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.suptitle("CPU engines on Qwen2.5-Coder-0.5B-Instruct (orange: llama.cpp, the anchor; "
                 "each group measured in its own rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def layout_section(e: dict[str, Any]) -> list[str]:
    """The ``layout`` section: each model alone and with the other busy, per core layout."""
    st = e["settings"]
    chat, tools = st["models"]
    weights = ", ".join(f"{m}: {k}" for m, k in st.get("weights", {}).items())
    mode = " (quick run: numbers not meaningful)" if e.get("quick") else ""
    head = ["layout", f"{chat} alone: tok/s, TTFT p50", f"{chat}, {tools} busy",
            f"{tools} alone", f"{tools}, {chat} busy", "RSS (GiB)"]
    rows = []
    for lay in e["layouts"].values():
        def cell(when: str, m: str, lay: dict[str, Any] = lay) -> str:
            s = lay[when][m]
            return f"{_f(s['output_tok_s'])} tok/s, {_f(s['ttft_ms']['p50'], 0)} ms"
        rows.append([f"{lay['label']} (`{lay['cores'][chat]}` / `{lay['cores'][tools]}`)",
                     cell("alone", chat), cell("together", chat), cell("alone", tools),
                     cell("together", tools), _f(lay["rss_mb"] / 1024, 2)])
    return [f"## Two models at once: core layout{mode}", "",
            f"Measured {e.get('at', '?')}: our stack with both text models of the cpu profile "
            f"({weights or 'weights not recorded'}), "
            "one layout after the other (both at once do not fit in memory). Per round "
            f"({st['rounds']}) and model, {st['n']} streamed requests one at a time "
            f"({st['max_tokens']} tokens forced with `ignore_eos`) alone, then as many while the "
            "other model keeps generating. Command: "
            f"`{e.get('command', '?')}`.", "", *_table(head, rows)]
