"""Tool-calling accuracy on home-assistant requests: ``python -m bench.eval_tools``.

Each case of ``evals/tools/cases.jsonl`` is a user request, the tools offered
(names from ``evals/tools/tools.json``, strict JSON schemas) and the expected
call (function and arguments), or none. For every model and ``tool_choice``
asked for, it reports: the right function, arguments that are valid JSON (and
valid against the schema), arguments that match exactly, calls missed, false
calls (a tool called where none was expected) and latency. It talks to any
OpenAI-compatible server at ``--url``; if nothing answers there (and the URL is
this machine), it starts our stack on the cpu profile and stops it afterwards.
Writes ``docs/benchmarks/tools.md`` (and the per-case ``tools.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.common import (
    REPO,
    BenchError,
    Say,
    Server,
    all_ready,
    gateway_argv,
    machine,
    pcts,
    spawn,
    stack_config,
    wait_for_memory,
    wait_ready,
)

CASES = REPO / "evals" / "tools" / "cases.jsonl"
TOOLS = REPO / "evals" / "tools" / "tools.json"
DEFAULT_OUT = REPO / "docs" / "benchmarks" / "tools.md"
DEFAULT_MODEL = "smollm2-135m-tools"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    prompt: str
    tools: list[str]
    expected: dict[str, Any] | None  # {"name", "arguments"}; None: no call expected
    accept: dict[str, list[Any]] = field(default_factory=dict)  # other right values


@dataclass
class Outcome:
    case: str
    category: str
    expected: str | None
    called: str | None = None
    arguments: str | None = None
    valid_json: bool = False
    schema_valid: bool = False
    right_function: bool = False
    exact: bool = False
    latency_s: float = 0.0
    error: str = ""
    served_by: str | None = None  # our gateway's x-zoe-model (a fallback shows here)


# ----- the data set ------------------------------------------------------------------
def load_catalog(path: Path = TOOLS) -> dict[str, dict[str, Any]]:
    tools: list[dict[str, Any]] = json.loads(path.read_text())
    return {t["function"]["name"]: t for t in tools}


def load_cases(path: Path, catalog: dict[str, dict[str, Any]]) -> list[Case]:
    """Read and check the cases: known tools, expected call offered and schema-valid."""
    cases = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        case = Case(**json.loads(line))
        where = f"{path.name}:{n} ({case.id})"
        unknown = [t for t in case.tools if t not in catalog]
        if unknown:
            raise BenchError(f"{where}: unknown tools {unknown}")
        if case.expected is not None:
            name = case.expected["name"]
            if name not in case.tools:
                raise BenchError(f"{where}: expected {name!r} is not among the tools offered")
            schema = catalog[name]["function"]["parameters"]
            try:
                jsonschema.validate(case.expected["arguments"], schema)
            except jsonschema.ValidationError as exc:
                raise BenchError(f"{where}: expected arguments break the schema: "
                                 f"{exc.message}") from exc
        cases.append(case)
    return cases


def spread(cases: list[Case], limit: int | None) -> list[Case]:
    """``limit`` cases spread over the file, so every category (and no-call) is hit."""
    if not limit or limit >= len(cases):
        return cases
    step = len(cases) / limit
    return [cases[int(i * step)] for i in range(limit)]


# ----- scoring ---------------------------------------------------------------------
def _norm(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return value.strip().strip(".!?'\"").strip().lower()
    return value


def arguments_match(got: dict[str, Any], case: Case) -> bool:
    """Same keys; each value equal to the expected one (or an accepted alternative),
    strings compared case-insensitively, numbers numerically."""
    assert case.expected is not None
    expected: dict[str, Any] = case.expected["arguments"]
    if set(got) != set(expected):
        return False
    for key, want in expected.items():
        allowed = {json.dumps(_norm(v)) for v in [want, *case.accept.get(key, [])]}
        if json.dumps(_norm(got[key])) not in allowed:
            return False
    return True


def score(case: Case, message: dict[str, Any], catalog: dict[str, dict[str, Any]],
          out: Outcome) -> None:
    calls = message.get("tool_calls") or []
    if not calls:
        return
    fn = calls[0].get("function") or {}
    out.called = str(fn.get("name"))
    out.arguments = str(fn.get("arguments"))
    try:
        args = json.loads(out.arguments)
    except ValueError:
        args = None
    out.valid_json = isinstance(args, dict)
    tool = catalog.get(out.called)
    if out.valid_json and tool is not None:
        out.schema_valid = jsonschema.Draft202012Validator(
            tool["function"]["parameters"]).is_valid(args)
    if case.expected is not None:
        out.right_function = out.called == case.expected["name"]
        out.exact = out.right_function and out.valid_json and arguments_match(args, case)


async def run_case(client: httpx.AsyncClient, url: str, model: str, tool_choice: str,
                   case: Case, catalog: dict[str, dict[str, Any]], max_tokens: int) -> Outcome:
    body = {"model": model, "messages": [{"role": "user", "content": case.prompt}],
            "tools": [catalog[n] for n in case.tools], "tool_choice": tool_choice,
            "temperature": 0.0, "max_tokens": max_tokens}
    out = Outcome(case=case.id, category=case.category,
                  expected=None if case.expected is None else case.expected["name"])
    t0 = time.perf_counter()
    try:
        r = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        return out
    out.latency_s = time.perf_counter() - t0
    out.served_by = r.headers.get("x-zoe-model")
    if r.status_code != 200:
        out.error = f"HTTP {r.status_code}: {r.text[:200]}"
        return out
    score(case, r.json()["choices"][0]["message"], catalog, out)
    return out


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    tool_cases = [o for o in outcomes if o.expected is not None]
    none_cases = [o for o in outcomes if o.expected is None]
    calls = [o for o in outcomes if o.called is not None]

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return {
        "cases": len(outcomes), "tool_cases": len(tool_cases), "no_tool_cases": len(none_cases),
        "right_function": share(sum(o.right_function for o in tool_cases), len(tool_cases)),
        "valid_json": share(sum(o.valid_json for o in calls), len(calls)),
        "schema_valid": share(sum(o.schema_valid for o in calls), len(calls)),
        "exact": share(sum(o.exact for o in tool_cases), len(tool_cases)),
        "missed_calls": share(sum(o.called is None and not o.error for o in tool_cases),
                              len(tool_cases)),
        "false_calls": share(sum(o.called is not None for o in none_cases), len(none_cases)),
        "errors": sum(bool(o.error) for o in outcomes),
        "latency_ms": pcts([o.latency_s for o in outcomes if not o.error], 1e3),
    }


async def run_all(client: httpx.AsyncClient, url: str, model: str, tool_choice: str,
                  cases: list[Case], catalog: dict[str, dict[str, Any]],
                  args: argparse.Namespace, tick: Callable[[], None]) -> list[Outcome]:
    """Every case, ``args.concurrency`` in flight, in the file's order."""
    sem = asyncio.Semaphore(args.concurrency)

    async def one(case: Case) -> Outcome:
        async with sem:
            out = await run_case(client, url, model, tool_choice, case, catalog,
                                 args.max_tokens)
        tick()
        return out

    return list(await asyncio.gather(*(one(c) for c in cases)))


# ----- the server --------------------------------------------------------------------
async def answering(url: str) -> bool:
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            return (await client.get(f"{url}/v1/models")).status_code == 200
        except httpx.HTTPError:
            return False


async def start_stack(url: str, tmp: Path, config: Path | None, min_free_gib: float,
                      say: Say) -> Server:
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK or parts.port is None:
        raise BenchError(f"nothing answers at {url}, and only a local URL with a port "
                         "(http://127.0.0.1:PORT) can be started here")
    if config is None:
        config = stack_config(tmp, parts.port)
        argv = gateway_argv(config)
    else:
        argv = [*gateway_argv(config), "--host", "127.0.0.1", "--port", str(parts.port)]
    await wait_for_memory(min_free_gib, say)
    say(f"nothing answers at {url}: starting our stack ({config.name}); log in {tmp}")
    server = spawn("zoe-vllm", argv, tmp / "server.log", url.rstrip("/"))
    try:
        await wait_ready(server, "/health", 900, all_ready)
    except BaseException:
        server.stop()
        raise
    say(f"stack ready in {server.ready_s:.0f}s")
    return server


async def check_models(client: httpx.AsyncClient, url: str, models: list[str]) -> None:
    """Fail fast on a model the server does not serve (names and our aliases)."""
    data = (await client.get(f"{url}/v1/models")).json().get("data", [])
    known = {m["id"] for m in data} | {a for m in data
                                       for a in (m.get("zoe") or {}).get("aliases", [])}
    missing = [m for m in models if m not in known]
    if missing:
        raise BenchError(f"{url} does not serve {missing}; it serves {sorted(known)}")


# ----- the run -----------------------------------------------------------------------
async def evaluate(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    catalog = load_catalog()
    cases = spread(load_cases(CASES, catalog), args.limit)
    url = args.url.rstrip("/")
    tmp = Path(tempfile.gettempdir()) / f"zoe-eval-tools-{os.getpid()}"
    server: Server | None = None
    runs: list[dict[str, Any]] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:

        def say(line: str) -> None:
            progress.console.log(line)

        if not await answering(url):
            server = await start_stack(url, tmp, args.config, args.min_free_gib, say)
        try:
            async with httpx.AsyncClient(timeout=args.timeout) as client:
                await check_models(client, url, args.model)
                for model in args.model:
                    for choice in args.tool_choice:
                        task = progress.add_task(f"{model}, tool_choice={choice}",
                                                 total=len(cases))
                        outcomes = await run_all(
                            client, f"{url}/v1/chat/completions", model, choice, cases,
                            catalog, args, functools.partial(progress.advance, task))
                        runs.append({"model": model, "tool_choice": choice,
                                     "summary": summarize(outcomes),
                                     "outcomes": [asdict(o) for o in outcomes]})
        except BaseException:
            if server is not None:
                say(f"server logs kept in {tmp}")
            raise
        finally:
            if server is not None:
                say("stopping the stack this run started")
                server.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return {"runs": runs, "cases": [asdict(c) for c in cases], "url": url,
            "started_stack": server is not None, "limit": args.limit}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_tools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:11434",
                        help="the server (default: %(default)s)")
    parser.add_argument("--model", action="append",
                        help=f"model name (repeatable; default: {DEFAULT_MODEL})")
    parser.add_argument("--tool-choice", action="append", choices=["auto", "required"],
                        help="repeatable; default: both auto and required")
    parser.add_argument("--limit", type=int, help="only this many cases, spread over the file")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight (default 1: latencies of one request)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument("--config", type=Path,
                        help="config for the stack started when nothing answers at --url "
                             "(default: the cpu profile)")
    parser.add_argument("--min-free-gib", type=float, default=9.0,
                        help="memory to wait for before starting a stack (default 9)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="the Markdown report (default: docs/benchmarks/tools.md)")
    args = parser.parse_args(argv)
    args.model = args.model or [DEFAULT_MODEL]
    args.tool_choice = args.tool_choice or ["auto", "required"]
    return args


def main(argv: list[str] | None = None) -> int:
    from bench.tools_report import write

    args = parse_args(argv)
    console = Console()
    try:
        result = asyncio.run(evaluate(args, console))
    except BenchError as exc:
        console.print(f"[red]eval-tools failed:[/red] {exc}")
        return 1
    result["machine"] = machine()
    result["command"] = " ".join(["python -m bench.eval_tools",
                                  *(shlex.quote(a) for a in sys.argv[1:])])
    result["at"] = time.strftime("%Y-%m-%d %H:%M %Z")
    write(result, args.out)
    console.print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
