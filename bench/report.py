"""``docs/benchmarks/README.md`` and ``compare.png`` from ``results.json``.

Numbers are reported against the design's targets (met, or missed by how
much); nothing here asserts them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt

from bench import engines_report

OURS, THEIRS = "ours", "theirs"
TTFT_SLACK_MS = 2.0
THROUGHPUT_RATIO = 0.98
ADDED_LATENCY_MS = 1.0
GATEWAY_RSS_MB = 150.0


def fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b \
            or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.3f}"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


# ----- targets ---------------------------------------------------------------------
def targets(sections: dict[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    cmp_ = sections.get("compare")
    if cmp_:
        ours = cmp_["c1"][OURS]["ttft_ms"]["p50"]
        theirs = cmp_["c1"][THEIRS]["ttft_ms"]["p50"]
        delta = ours - theirs
        deltas = per_round(cmp_, 1, "ttft_p50_ms", lambda a, b: a - b)
        spread = f"; per round {min(deltas):+.1f} to {max(deltas):+.1f} ms" if deltas else ""
        rows.append(["TTFT p50 through the gateway (1 stream)",
                     f"{fmt(ours)} ms vs {fmt(theirs)} ms (Δ {delta:+.1f} ms{spread})",
                     f"≤ vllm serve + {TTFT_SLACK_MS:.0f} ms",
                     _verdict(delta <= TTFT_SLACK_MS, f"{delta - TTFT_SLACK_MS:.1f} ms")])
        o8 = cmp_["c8"][OURS]["output_tok_s"]
        t8 = cmp_["c8"][THEIRS]["output_tok_s"]
        r8 = o8 / t8 if t8 else math.nan
        ratios = per_round(cmp_, 8, "output_tok_s", lambda a, b: a / b if b else math.nan)
        spread = f"; per round {min(ratios):.3f}x to {max(ratios):.3f}x" if ratios else ""
        rows.append(["output tokens/s at 8 streams",
                     f"{fmt(o8)} vs {fmt(t8)} ({r8:.3f}x{spread})",
                     f"≥ {THROUGHPUT_RATIO}x vllm serve",
                     _verdict(r8 >= THROUGHPUT_RATIO, f"{THROUGHPUT_RATIO - r8:.3f}x")])
    ovh = sections.get("overhead")
    if ovh:
        added = added_latency_ms(ovh)
        rows.append(["gateway added latency p50 (beyond a bare Starlette app)",
                     f"{fmt(added, 3)} ms", f"< {ADDED_LATENCY_MS:.0f} ms",
                     _verdict(added < ADDED_LATENCY_MS, f"{added - ADDED_LATENCY_MS:.3f} ms")])
        rss = ovh["rss_mb"]["gateway_after"]
        rows.append(["gateway process RSS (after the load)", f"{fmt(rss)} MB",
                     f"< {GATEWAY_RSS_MB:.0f} MB",
                     _verdict(rss < GATEWAY_RSS_MB, f"{rss - GATEWAY_RSS_MB:.1f} MB")])
    eng = sections.get("engines")
    if eng:
        rows += engines_report.targets(eng)
    if not rows:
        return []
    return ["## Targets", "", "Reported, never asserted (DESIGN.md, \"Performance targets\").",
            "", *table(["target", "measured", "goal", "result"], rows)]


def per_round(cmp_: dict[str, Any], streams: int, key: str,
              combine: Callable[[float, float], float]) -> list[float]:
    """``combine(ours, theirs)`` of ``key`` for each round: how much the machine's noise
    moves the comparison from one round to the next (rounds without ``key``: none)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in cmp_.get("rounds", []):
        if r["concurrency"] == streams and r.get(key) is not None:
            by_round.setdefault(r["round"], {})[r["server"]] = float(r[key])
    return [combine(v[OURS], v[THEIRS]) for _, v in sorted(by_round.items())
            if OURS in v and THEIRS in v]


def _verdict(ok: bool, miss: str) -> str:
    return "**met**" if ok else f"**missed** by {miss}"


def added_latency_ms(ovh: dict[str, Any]) -> float:
    """Client time through the gateway, minus the echo worker's own time, minus what
    a bare Starlette app answering the same request costs (client and HTTP stack)."""
    gw, bare = ovh["gateway"], ovh["bare"]
    return float(gw["plain_ms"]["p50"] - gw["plain_worker_ms"]["p50"] - bare["plain_ms"]["p50"])


# ----- sections --------------------------------------------------------------------
def machine_section(machine: dict[str, Any], command: str) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    rows = [["CPU", machine["cpu"]],
            ["cores", f"{machine['logical_cores']} logical, {machine['physical_cores']} "
                      "physical"],
            ["RAM", f"{machine['ram_gib']} GiB"], ["OS", machine["os"]],
            ["Python", machine["python"]], ["versions", versions]]
    return ["## Machine", "", *table(["", ""], rows), "Last command (each section below "
            "names the one that measured it):", "", "```bash", command, "```", ""]


def _mode(sec: dict[str, Any]) -> str:
    quick = " — **quick mode: a smoke run, too few samples to judge**" if sec["quick"] else ""
    return f"Measured {sec['at']} by `{sec.get('command', 'python -m bench')}`{quick}."


def compare_section(c: dict[str, Any]) -> list[str]:
    s = c["settings"]
    o1, t1, o8, t8 = c["c1"][OURS], c["c1"][THEIRS], c["c8"][OURS], c["c8"][THEIRS]
    rows: list[list[str]] = []

    def row(label: str, a: Any, b: Any, digits: int = 1) -> None:
        rows.append([label, fmt(a, digits), fmt(b, digits), ratio(a, b)])

    for conc, o, t in ((1, o1, t1), (8, o8, t8)):
        for q in ("p50", "p90", "p99"):
            row(f"TTFT {q} (ms), {conc} stream{'s' if conc > 1 else ''}",
                o["ttft_ms"][q], t["ttft_ms"][q])
    for conc, o, t in ((1, o1, t1), (8, o8, t8)):
        for q in ("mean", "p50", "p90", "p99"):
            row(f"inter-token latency {q} (ms), {conc} stream{'s' if conc > 1 else ''}",
                o["itl_ms"][q], t["itl_ms"][q])
    row("output tokens/s, 1 stream", o1["output_tok_s"], t1["output_tok_s"])
    row("output tokens/s, 8 streams", o8["output_tok_s"], t8["output_tok_s"])
    row("requests/s, 1 stream", o1["req_s"], t1["req_s"], 3)
    row("requests/s, 8 streams", o8["req_s"], t8["req_s"], 3)
    row("request latency p50 (ms), 8 streams", o8["latency_ms"]["p50"],
        t8["latency_ms"]["p50"])
    st = c["startup_s"]
    row("startup to ready (s)", st[OURS], st[THEIRS])
    m = c["memory"]
    row("RSS of the process tree (MB)", m[OURS]["rss_mb"], m[THEIRS]["rss_mb"], 0)
    row("PSS of the process tree (MB)", m[OURS]["pss_mb"], m[THEIRS]["pss_mb"], 0)
    row("RSS of the front process (MB)", m[OURS]["front_rss_mb"], m[THEIRS]["front_rss_mb"], 0)
    idle = c.get("idle_cpu_percent")
    if idle:
        row("CPU while idle (% of one core)", idle[OURS], idle[THEIRS])
    row("failed requests", o1["failed"] + o8["failed"], t1["failed"] + t8["failed"], 0)
    split = ""
    if st.get("ours_load") is not None:
        split = (f" Our startup includes the worker's {fmt(st['ours_warmup'])} s of warm-up "
                 f"generations (engine loaded after {fmt(st['ours_load'])} s); vLLM's "
                 "server is ready without any.")
    rounds = [[str(r["round"]), r["server"], str(r["concurrency"]), fmt(r["output_tok_s"]),
               fmt(r.get("ttft_p50_ms"))] for r in c["rounds"]]
    env = ", ".join(f"{k}={v}" for k, v in s["engine_env"].items())
    return [
        "## Gateway vs vLLM's own server", "", _mode(c), "",
        f"`{s['model']}` behind our gateway (one worker) and behind "
        "`python -m vllm.entrypoints.openai.api_server` (vLLM's `vllm serve`), both up at "
        "once with the same engine arguments and environment "
        f"(`{env}`: both engines on the same core). {s['rounds']} round(s), alternating "
        f"which server goes first; per round and server {s['n1']} requests one at a time, "
        f"then {s['n8']} with 8 in flight. Every request streams a fixed prompt and exactly "
        f"{s['max_tokens']} tokens (`ignore_eos: true`, `temperature: 0`), after "
        f"{s['warmup']} unmeasured request(s) per server. TTFT is the time to the first "
        "chunk carrying text; inter-token latency the gaps between such chunks.", "",
        *table(["metric", "ours", "vllm serve", "ours / vllm"], rows),
        f"RSS sums count shared pages once per process; PSS splits them.{split} Health "
        "probes are off during the run (they would add generations to ours only). CPU "
        "while idle: each process tree over the same window after the load, both idle "
        "(on two cores, what an idle server burns is taken from the engines).", "",
        "Per round (to see the machine's noise; the targets above give the spread of "
        "ours against theirs round by round):", "",
        *table(["round", "server", "streams", "tokens/s", "TTFT p50 (ms)"], rounds),
        "Engine arguments (both servers):", "", "```", " ".join(s["engine_argv"]), "```", "",
    ]


def overhead_section(o: dict[str, Any]) -> list[str]:
    gw, bare = o["gateway"], o["bare"]
    n = o["chunks"]
    s = o["settings"]
    rows: list[list[str]] = []

    def row(label: str, a: Any, b: Any, digits: int = 3) -> None:
        diff = a - b if isinstance(a, float) and isinstance(b, float) else None
        rows.append([label, fmt(a, digits), fmt(b, digits), fmt(diff, digits)])

    for q in ("p50", "p90", "p99"):
        row(f"non-streamed request {q} (ms)", gw["plain_ms"][q], bare["plain_ms"][q])
    row("echo worker's own time p50 (ms)", gw["plain_worker_ms"]["p50"], 0.0)
    row("streamed request, first byte p50 (ms)", gw["stream_ttfb_ms"]["p50"],
        bare["stream_ttfb_ms"]["p50"])
    row(f"streamed request, all {n} chunks p50 (ms)", gw["stream_ms"]["p50"],
        bare["stream_ms"]["p50"])
    row("per streamed chunk p50 (µs)", gw["stream_ms"]["p50"] / n * 1e3,
        bare["stream_ms"]["p50"] / n * 1e3, 1)
    row("requests/s, 8 in flight", gw["req_s_8"], bare["req_s_8"], 0)
    rss = o["rss_mb"]
    row("process RSS after the load (MB)", rss["gateway_after"], rss["bare_after"], 1)
    added = added_latency_ms(o)
    raw = gw["plain_ms"]["p50"] - gw["plain_worker_ms"]["p50"]
    router = [[k, fmt(v, 2)] for k, v in o["router_us"].items()]
    return [
        "## Gateway overhead", "", _mode(o), "",
        "The real gateway and supervisor in front of `bench/echo_worker.py`, a worker that "
        "speaks our protocol but has no model and answers every request at once (the "
        "supervisor starts it instead of `workers.engine.worker` under "
        "`ZOE_VLLM_WORKER_MODULE=bench.echo_worker`). The reference ceiling is a bare "
        "Starlette app under uvicorn with the same settings, answering the same requests "
        f"(`bench/baseline_app.py`). One request at a time: {s['rounds']} round(s) of "
        f"{s['n_plain']} non-streamed and {s['n_stream']} streamed ({n} chunks) requests "
        "per server, alternating; then 8 in flight.", "",
        *table(["metric", "gateway + echo worker", "bare Starlette", "difference"], rows),
        f"Through the gateway, minus the echo worker's own time: **{raw:.3f} ms** p50 per "
        f"request; minus also what the bare app costs (client, HTTP, JSON): **{added:.3f} ms**"
        " — the gateway's own added latency (routing, validation, admission, ZeroMQ both "
        f"ways). A GET on the bare app takes {fmt(bare['hello_ms']['p50'], 3)} ms p50 "
        f"(the HTTP floor). Gateway RSS at idle {fmt(rss['gateway_idle'])} MB.", "",
        "Router decision time (`Router.route`, best of 5 runs of "
        f"{s['router_number']} decisions):", "",
        *table(["request", "µs per decision"], router),
    ]


def recovery_section(r: dict[str, Any]) -> list[str]:
    p = r["probes"]
    rows = [
        ["cpu profile start (chat + tools READY)", fmt(r["stack_startup_s"])],
        ["vision swap-in: first image request, end to end (tools drained and unloaded, "
         "vision loaded and warmed up)", fmt(r["vision"]["first_s"])],
        ["second image request (vision already loaded)", fmt(r["vision"]["second_s"], 2)],
        ["kill -9 of the chat worker → READY again (incl. 1 s restart backoff)",
         fmt(r["crash_to_ready_s"])],
        ["probes armed to fail → third failure detected (1 s probe interval)",
         fmt(p["armed_to_detected_s"])],
        ["three failed probes → READY (unload, 2 s pause, reload, warm-up)",
         fmt(p["detected_to_ready_s"])],
    ]
    wc = [[str(w["warmup_requests"]), fmt(w["startup_s"]), fmt(w["load_s"]),
           fmt(w["warmup_s"], 2), fmt(w["first_ttft_s"] * 1e3, 0),
           fmt(w["first_total_s"] * 1e3, 0), fmt(w["second_ttft_s"] * 1e3, 0),
           fmt(w["second_total_s"] * 1e3, 0)] for w in r["warm_cold"]]
    return [
        "## Model swap and recovery", "", _mode(r), "",
        "The cpu profile (chat on core 0, tools on core 1, vision on demand swapping out "
        "tools) with a 1 s health-probe interval; faults injected with `ZOE_VLLM_FAULTS`.",
        "", *table(["what", "seconds"], rows),
        "What warm-up buys: a chat-only stack started with `supervisor.warmup_requests` 0 "
        "and 2; its first and second request right after `/health` turns 200 "
        f"({r['settings']['first_request_tokens']} tokens, streamed).", "",
        *table(["warm-up requests", "startup (s)", "engine load (s)", "warm-up (s)",
                "1st TTFT (ms)", "1st total (ms)", "2nd TTFT (ms)", "2nd total (ms)"], wc),
    ]


def assistant_section(a: dict[str, Any]) -> list[str]:
    t, n = a["ttft_ms"], a["prompt_tokens"]
    rows = [[label, str(n[key]), fmt(t[key]["p50"], 0), fmt(t[key]["p90"], 0)]
            for key, label in (("short", "short question"),
                               ("ha_first_turn", "Home Assistant system prompt, first turn "
                                                 "(nothing cached)"),
                               ("ha_second_turn", "the same conversation, second turn "
                                                  "(prefix cache hit)"))]
    return [
        "## What a voice request waits for", "", _mode(a), "",
        f"The cpu profile's fast model (`{a['model']}`, one core) alone, streamed, 16 tokens, "
        f"{a['rounds']} rounds; each first turn opens with its own line, so no round reuses "
        "another's cache. The tools model's latency per call is in [tools.md](tools.md).", "",
        *table(["request", "prompt tokens", "TTFT p50 (ms)", "TTFT p90 (ms)"], rows),
    ]


def embeddings_section(e: dict[str, Any]) -> list[str]:
    who = ("ours", "vllm serve", "transformers")
    rate, lat = e["embeddings_per_s"], e["latency_ms"]
    rows = [[str(b), *(fmt(rate[w][str(b)], 0) for w in who),
             fmt(rate["ours"][str(b)] / rate["transformers"][str(b)], 2),
             *(fmt(lat[w][str(b)]["p50"], 1) for w in ("ours", "vllm serve"))]
            for b in e["batches"]]
    return [
        "## Embeddings", "", _mode(e), "",
        f"`{e['model']}` (all-MiniLM-L6-v2, fp32) on {e['threads']} core(s) each: our "
        "embedding worker through the gateway, vLLM's own server on the same engine "
        "arguments, and the model card's recipe with `transformers` in the benchmark's "
        f"process. {e['rounds']} rounds of {e['requests_per_round']} requests per batch size, "
        "the order rotating each round. Short Home Assistant-like sentences.", "",
        *table(["texts per request", "ours (emb/s)", "vllm serve (emb/s)",
                "transformers (emb/s)", "ours / transformers", "ours p50 (ms)",
                "vllm serve p50 (ms)"], rows),
        f"The gateway adds {fmt(e['gateway_added_ms_p50'], 1)} ms per request at p50 "
        "(one text per request, ours minus vllm serve).", "",
    ]


# ----- the chart ---------------------------------------------------------------------
def chart(sections: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    c, o, r = sections.get("compare"), sections.get("overhead"), sections.get("recovery")
    colors = {"ours": "#2b7bb9", "gateway + echo worker": "#2b7bb9", "vllm serve": "#e08a2c",
              "bare Starlette": "#e08a2c"}
    if c:
        _bars(axes[0][0], ["p50", "p90", "p99"],
              {"ours": [c["c1"][OURS]["ttft_ms"][q] for q in ("p50", "p90", "p99")],
               "vllm serve": [c["c1"][THEIRS]["ttft_ms"][q] for q in ("p50", "p90", "p99")]},
              "TTFT, 1 stream (ms)", colors)
        _bars(axes[0][1], ["1 stream p50", "1 stream p90", "8 streams p50", "8 streams p90"],
              {name: [c[k][who]["itl_ms"][q] for k in ("c1", "c8") for q in ("p50", "p90")]
               for name, who in (("ours", OURS), ("vllm serve", THEIRS))},
              "inter-token latency (ms)", colors)
        _bars(axes[0][2], ["1 stream", "8 streams"],
              {name: [c[k][who]["output_tok_s"] for k in ("c1", "c8")]
               for name, who in (("ours", OURS), ("vllm serve", THEIRS))},
              "output tokens/s", colors)
        _bars(axes[1][0], ["RSS", "PSS"],
              {name: [c["memory"][who]["rss_mb"] / 1024, c["memory"][who]["pss_mb"] / 1024]
               for name, who in (("ours", OURS), ("vllm serve", THEIRS))},
              "process tree memory (GiB)", colors)
    if o:
        _bars(axes[1][1], ["request p50", "request p99", "stream first byte p50"],
              {"gateway + echo worker": [o["gateway"]["plain_ms"]["p50"],
                                         o["gateway"]["plain_ms"]["p99"],
                                         o["gateway"]["stream_ttfb_ms"]["p50"]],
               "bare Starlette": [o["bare"]["plain_ms"]["p50"], o["bare"]["plain_ms"]["p99"],
                                  o["bare"]["stream_ttfb_ms"]["p50"]]},
              "gateway + echo worker vs bare app (ms)", colors)
    if r:
        labels = ["vision swap-in", "kill -9 → READY", "3 probes → READY"]
        values = [r["vision"]["first_s"], r["crash_to_ready_s"],
                  r["probes"]["detected_to_ready_s"]]
        ax = axes[1][2]
        ax.barh(labels, values, color="#2b7bb9")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.1f}", va="center", fontsize=8)
        ax.set_title("recovery (s)")
        ax.invert_yaxis()
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_axis_off()
    fig.suptitle("zoe-vllm: gateway vs vLLM's own server, overhead, recovery")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax: Any, groups: list[str], series: dict[str, list[float]], title: str,
          colors: dict[str, str]) -> None:
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name, color=colors.get(name))
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_title(title)
    ax.legend(fontsize=8)


# ----- the whole page ----------------------------------------------------------------
def write(results: dict[str, Any], out: Path) -> None:
    sections: dict[str, Any] = results["sections"]
    lines = ["# Benchmarks", "",
             "Generated by `make bench` (`python -m bench`); re-running it regenerates this "
             "page, `compare.png` and `results.json`. Tool-calling accuracy: "
             "[tools.md](tools.md) (`make eval-tools`).", ""]
    lines += targets(sections)
    if sections:
        lines += ["![gateway vs vLLM, overhead, recovery](compare.png)", ""]
    lines += machine_section(results["machine"], results["command"])
    for name, title, render in (
            ("compare", "Gateway vs vLLM's own server", compare_section),
            ("overhead", "Gateway overhead", overhead_section),
            ("recovery", "Model swap and recovery", recovery_section),
            ("assistant", "What a voice request waits for", assistant_section),
            ("embeddings", "Embeddings", embeddings_section),
            ("engines", "CPU engines: llama.cpp, vllm serve and ours", engines_report.section),
            ("layout", "Two models at once: core layout", engines_report.layout_section)):
        if name in sections:
            lines += render(sections[name])
        else:
            lines += [f"## {title}", "", f"Not run yet: `python -m bench --only {name}`.", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text("\n".join(lines).rstrip() + "\n")
    chart(sections, out / "compare.png")
    if "engines" in sections:
        engines_report.chart(sections["engines"], out / "engines.png")
