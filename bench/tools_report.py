"""``docs/benchmarks/tools.md`` (and ``tools.json``) from a tool-calling evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.report import fmt, table

# What `tool_choice: auto` must reach (with `required` every answer is a call, so its
# false calls say nothing). (summary key, label, at least (True) or at most (False), goal)
TARGETS: tuple[tuple[str, str, bool, float], ...] = (
    ("right_function", "right function", True, 0.95),
    ("exact", "exact arguments", True, 0.90),
    ("false_calls", "false calls", False, 1 / 12),
)
TARGETS_LINE = ("auto: right function >= 95%, exact arguments >= 90%, at most 1 false call "
                "in 12 (<= 8.3%)")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f}%"


def against_targets(summary: dict[str, Any]) -> str:
    """``met``, or what missed and by how many percentage points."""
    misses = []
    for key, label, at_least, goal in TARGETS:
        value = summary.get(key)
        if value is None:  # e.g. a group without no-call cases: nothing to hold it to
            continue
        gap = (goal - value) if at_least else (value - goal)
        # A hair of float noise must not turn 95% into a miss.
        if gap > 1e-9:
            misses.append(f"{label} {gap * 100:.1f} pts {'short' if at_least else 'over'}")
    return "met" if not misses else "missed: " + ", ".join(misses)


def _summary_row(run: dict[str, Any], label: str, s: dict[str, Any]) -> list[str]:
    lat = s["latency_ms"]
    tokens = s.get("prompt_tokens")
    return [f"`{run['model']}`", f"`{run['tool_choice']}`", f"{label} ({s['cases']})",
            pct(s["right_function"]), pct(s["valid_json"]), pct(s["schema_valid"]),
            pct(s["exact"]), pct(s["missed_calls"]), pct(s["false_calls"]),
            f"{fmt(lat['p50'], 0)} / {fmt(lat['p90'], 0)}",
            "-" if tokens is None else fmt(tokens["p50"], 0), str(s["errors"]),
            against_targets(s) if run["tool_choice"] == "auto" else "n/a"]


def _summary_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for run in runs:
        groups = run.get("groups", [])
        # One group alone (a --limit run, or an old case file) is already the total.
        if len(groups) != 1:
            rows.append(_summary_row(run, "all", run["summary"]))
        rows += [_summary_row(run, g["label"], g["summary"]) for g in groups]
    return rows


def _category_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    categories = list(dict.fromkeys(o["category"] for run in runs for o in run["outcomes"]))
    head = ["category", "cases", *(f"{r['model']} `{r['tool_choice']}`" for r in runs)]
    rows = []
    for cat in categories:
        cells = []
        count = 0
        for run in runs:
            mine = [o for o in run["outcomes"] if o["category"] == cat]
            count = len(mine)
            if all(o["expected"] is None for o in mine):
                false = sum(o["called"] is not None for o in mine)
                cells.append(f"{false}/{len(mine)} false calls")
            else:
                right = sum(o["right_function"] for o in mine)
                exact = sum(o["exact"] for o in mine)
                cells.append(f"{right}/{len(mine)} function, {exact}/{len(mine)} exact")
        rows.append([cat, str(count), *cells])
    return head, rows


def _request(case: dict[str, Any]) -> str:
    messages = case.get("messages")
    if not messages:
        return str(case["prompt"])
    users = sum(m["role"] == "user" for m in messages)
    return f"({len(messages)} messages, {users} from the user) {case['prompt']}"


def _expected(case: dict[str, Any]) -> str:
    exp = case["expected"]
    if exp is None:
        return "(no call)"
    alts = len(case.get("alternatives") or [])
    more = f" or {alts} alternative{'s' if alts > 1 else ''}" if alts else ""
    return f"`{exp['name']}({json.dumps(exp['arguments'], ensure_ascii=False)})`{more}"


def _case_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    runs = result["runs"]
    head = ["case", "request", "expected", *(f"`{r['tool_choice']}` ({r['model']})"
                                             for r in runs)]
    rows = []
    for i, case in enumerate(result["cases"]):
        exp = case["expected"]
        cells = []
        for run in runs:
            o = run["outcomes"][i]
            if o["error"]:
                cells.append(f"error: {o['error'][:60]}")
            elif o["called"] is None:
                cells.append("ok (no call)" if exp is None else "missed")
            else:
                mark = "ok" if o["exact"] else ("false call" if exp is None else
                                               "args" if o["right_function"] else "wrong fn")
                cells.append(f"{mark}: `{o['called']}({(o['arguments'] or '')[:80]})`")
        rows.append([case["id"], _request(case).replace("|", "\\|"),
                     _expected(case).replace("|", "\\|"),
                     *(c.replace("|", "\\|") for c in cells)])
    return head, rows


def _server(result: dict[str, Any]) -> str:
    if not result["started_stack"]:
        return f"the server already running at {result['url']}"
    source = (f"`{Path(result['config']).name}`" if result.get("config")
              else f"the {result.get('profile', 'cpu')} profile")
    return f"our stack on {source}, started by this run"


def write(result: dict[str, Any], out: Path) -> None:
    m = result["machine"]
    runs = result["runs"]
    n = len(result["cases"])
    limited = f" (`--limit {result['limit']}`: a subset)" if result.get("limit") else ""
    fallbacks = sorted({f"{o['served_by']} (for {run['model']})" for run in runs
                        for o in run["outcomes"]
                        if o.get("served_by") not in (None, run["model"])})
    described = [f"`{name}`: {text}" for name, text in result.get("descriptions", {}).items()
                 if text]
    cat_head, cat_rows = _category_rows(runs)
    case_head, case_rows = _case_rows(result)
    lines = [
        "# Tool-calling accuracy", "",
        f"Generated by `make eval-tools` on {result['at']}: {n} cases{limited} from "
        "[`evals/tools/cases.jsonl`](../../evals/tools/cases.jsonl), the tools offered from "
        "[`evals/tools/tools.json`](../../evals/tools/tools.json), the expected call or none. "
        "The **original cases** are one home-assistant request each, with strict JSON "
        "schemas; the **Home Assistant cases** (`ha_` categories) are what Home Assistant's "
        "Assist sends: its system prompt with the home's device list "
        "([`ha_system_prompt.txt`](../../evals/tools/ha_system_prompt.txt)), its intent "
        "tools with loose schemas, and conversations with earlier calls and their results. "
        f"Sent to {_server(result)}; `temperature: 0`, one request at a time. Machine: "
        f"{m['cpu']}, {m['logical_cores']} cores, {m['ram_gib']} GiB.", "",
        "```bash", result["command"], "```", "",
        "- **right function**: of the cases expecting a call, the first call names the "
        "expected function.",
        "- **valid JSON** / **schema-valid**: of the calls made, arguments that parse as a "
        "JSON object / that also satisfy the tool's schema.",
        "- **exact args**: of the cases expecting a call, right function and exactly the "
        "expected arguments or one of the case's listed alternatives (strings "
        "case-insensitive, numbers numerically, lists of strings as sets, a few listed "
        "values such as `jazz` / `jazz music`; an argument too many or too few is not exact).",
        "- **missed**: a call was expected, the model answered in text. **false calls**: of "
        "the cases expecting no call, a tool was called (with `required` every answer is a "
        "call, so these are false by construction).",
        "- **latency**: the whole non-streamed request, p50 / p90, ms. **prompt tokens**: "
        "p50 of the server's `usage.prompt_tokens` (system prompt, tools and conversation "
        "as the chat template renders them).",
        f"- **targets** ({TARGETS_LINE}): met, or missed by how many percentage points.", "",
        *table(["model", "tool_choice", "cases", "right function", "valid JSON",
                "schema-valid", "exact args", "missed", "false calls", "latency ms",
                "prompt tokens", "errors", "targets"],
               _summary_rows(runs)),
        *([f"Models: {'; '.join(described)}.", ""] if described else []),
        "These numbers are reported as measured.", "",
        *([f"Some answers came from another model (fallback): {', '.join(fallbacks)}.", ""]
          if fallbacks else []),
        "## By category", "", *table(cat_head, cat_rows),
        "## Every case", "", "<details><summary>expected and actual call per case</summary>",
        "", *table(case_head, case_rows), "</details>", "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
