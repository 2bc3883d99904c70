"""Tool-calling accuracy on home-assistant requests: ``python -m bench.eval_tools``.

Each case of ``evals/tools/cases.jsonl`` is a request, the tools offered (names
from ``evals/tools/tools.json``) and the expected call (function and
arguments), or none. The original cases are one user message and strict JSON
schemas; the ``ha_`` cases are what Home Assistant's Assist sends: its long
system prompt, its loose intent schemas, whole conversations with earlier tool
calls and their results. For every model and ``tool_choice`` asked for, it
reports: the right function, arguments that are valid JSON (and valid against
the schema), arguments that match exactly, calls missed, false calls (a tool
called where none was expected), latency and prompt length, for all cases and
for each of the two groups. The models are, by default, every text model of
``--profile`` with a tool parser. It talks to any OpenAI-compatible server at
``--url``; if nothing answers there (and the URL is this machine), it starts
our stack on that profile and stops it afterwards.
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
from shared.config import DEFAULT_PROFILE, PROFILES_DIR, ConfigError, LoadedConfig
from shared.config import load as load_config

CASES = REPO / "evals" / "tools" / "cases.jsonl"
TOOLS = REPO / "evals" / "tools" / "tools.json"
DEFAULT_OUT = REPO / "docs" / "benchmarks" / "tools.md"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# Role values as strings: a role that has no member in shared.config yet
# (embedding) must not break this module when it is added there.
NOT_TEXT_ROLES = frozenset({"vision", "embedding"})
ROLES = frozenset({"system", "user", "assistant", "tool"})
MESSAGE_KEYS = {"system": {"role", "content"}, "user": {"role", "content"},
                "assistant": {"role", "content", "tool_calls"},
                "tool": {"role", "tool_call_id", "content"}}
HA_PREFIX = "ha_"
GROUPS = (("original", "original cases"), ("ha", "Home Assistant cases"))


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    prompt: str  # the request; with `messages`, a short label of the last one
    tools: list[str]
    expected: dict[str, Any] | None  # {"name", "arguments"}; None: no call expected
    accept: dict[str, list[Any]] = field(default_factory=dict)  # other right values
    system: str | None = None  # a file next to the cases: the system message
    messages: list[dict[str, Any]] | None = None  # the conversation, instead of `prompt`
    alternatives: list[dict[str, Any]] = field(default_factory=list)  # other right arguments


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
    prompt_tokens: int | None = None  # the server's usage.prompt_tokens, when it says
    error: str = ""
    served_by: str | None = None  # our gateway's x-zoe-model (a fallback shows here)


def group_of(category: str) -> str:
    return "ha" if category.startswith(HA_PREFIX) else "original"


# ----- the data set ------------------------------------------------------------------
def load_catalog(path: Path = TOOLS) -> dict[str, dict[str, Any]]:
    tools: list[dict[str, Any]] = json.loads(path.read_text())
    return {t["function"]["name"]: t for t in tools}


def _schema_error(arguments: Any, schema: dict[str, Any]) -> str | None:
    try:
        jsonschema.validate(arguments, schema)
    except jsonschema.ValidationError as exc:
        return exc.message
    return None


@functools.cache
def _read_system(path: Path) -> str:
    return path.read_text()


def system_path(case: Case, base: Path) -> Path:
    assert case.system is not None
    return base / case.system


def _check_system(case: Case, base: Path, where: str) -> None:
    if case.system is None:
        return
    # A bare file name: cases must not reach outside their folder.
    if not isinstance(case.system, str) or Path(case.system).name != case.system:
        raise BenchError(f"{where}: `system` must be a file name in {base}")
    path = system_path(case, base)
    if not path.is_file():
        raise BenchError(f"{where}: system prompt file {path} does not exist")
    if not _read_system(path).strip():
        raise BenchError(f"{where}: system prompt file {path} is empty")


def _check_call(call: Any, case: Case, catalog: dict[str, dict[str, Any]],
                where: str) -> str:
    """An earlier assistant tool call, as HA sends it back; returns its id."""
    if not isinstance(call, dict) or call.get("type") != "function" \
            or not isinstance(call.get("id"), str) or not isinstance(call.get("function"), dict):
        raise BenchError(f"{where}: a tool call needs `id`, `type: function` and `function`")
    name = call["function"].get("name")
    if name not in catalog:
        raise BenchError(f"{where}: earlier call to unknown tool {name!r}")
    if name not in case.tools:
        raise BenchError(f"{where}: earlier call to {name!r}, which is not among the tools "
                         "offered")
    try:
        args = json.loads(call["function"].get("arguments"))
    except (TypeError, ValueError) as exc:
        raise BenchError(f"{where}: arguments of the earlier {name!r} call are not a JSON "
                         "string") from exc
    if not isinstance(args, dict):
        raise BenchError(f"{where}: arguments of the earlier {name!r} call are not an object")
    if (error := _schema_error(args, catalog[name]["function"]["parameters"])) is not None:
        raise BenchError(f"{where}: the earlier {name!r} call breaks the schema: {error}")
    return str(call["id"])


def _check_messages(case: Case, catalog: dict[str, dict[str, Any]], where: str) -> None:
    """A conversation the chat API accepts: known roles, every tool call answered by a
    ``tool`` message with its id, and the model's turn next (last: user or tool)."""
    messages = case.messages
    if not isinstance(messages, list) or not messages:
        raise BenchError(f"{where}: `messages` must be a non-empty list")
    pending: set[str] = set()  # tool call ids not answered yet
    seen: set[str] = set()
    for i, m in enumerate(messages):
        at = f"{where} messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BenchError(f"{at}: role must be one of {sorted(ROLES)}")
        role = m["role"]
        if extra := set(m) - MESSAGE_KEYS[role]:
            raise BenchError(f"{at}: unexpected keys {sorted(extra)} for a {role} message")
        if role != "tool" and pending:
            raise BenchError(f"{at}: tool calls {sorted(pending)} have no tool message")
        content = m.get("content")
        if role == "system" and (i != 0 or case.system is not None):
            raise BenchError(f"{at}: a system message only comes first, and not with `system`")
        if role in ("system", "user") and (not isinstance(content, str) or not content.strip()):
            raise BenchError(f"{at}: a {role} message needs text content")
        if role == "assistant":
            calls = m.get("tool_calls") or []
            if content is not None and not isinstance(content, str):
                raise BenchError(f"{at}: assistant content must be text or null")
            if not isinstance(calls, list) or (not content and not calls):
                raise BenchError(f"{at}: an assistant message needs text or tool calls")
            for call in calls:
                call_id = _check_call(call, case, catalog, at)
                if call_id in seen:
                    raise BenchError(f"{at}: tool call id {call_id!r} is used twice")
                seen.add(call_id)
                pending.add(call_id)
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                raise BenchError(f"{at}: tool message for no pending call "
                                 f"({m.get('tool_call_id')!r})")
            pending.discard(m["tool_call_id"])
            if not isinstance(content, str):
                raise BenchError(f"{at}: a tool message's content is the result as text")
    if messages[-1]["role"] not in ("user", "tool") or pending:
        raise BenchError(f"{where}: the conversation must end with the user's request or "
                         "the results of every tool call (the model's turn next)")


def _check_expected(case: Case, catalog: dict[str, dict[str, Any]], where: str) -> None:
    if case.expected is None:
        if case.alternatives or case.accept:
            raise BenchError(f"{where}: `alternatives` and `accept` need an expected call")
        return
    if not isinstance(case.expected, dict) or set(case.expected) != {"name", "arguments"} \
            or not isinstance(case.expected["arguments"], dict):
        raise BenchError(f"{where}: `expected` is {{\"name\", \"arguments\"}} or null")
    name = case.expected["name"]
    if name not in case.tools:
        raise BenchError(f"{where}: expected {name!r} is not among the tools offered")
    schema = catalog[name]["function"]["parameters"]
    if (error := _schema_error(case.expected["arguments"], schema)) is not None:
        raise BenchError(f"{where}: expected arguments break the schema: {error}")
    if not isinstance(case.alternatives, list):
        raise BenchError(f"{where}: `alternatives` must be a list of argument objects")
    seen = {_canon_arguments(case.expected["arguments"])}
    for n, alt in enumerate(case.alternatives):
        if not isinstance(alt, dict):
            raise BenchError(f"{where}: alternatives[{n}] is not an argument object")
        if (error := _schema_error(alt, schema)) is not None:
            raise BenchError(f"{where}: alternatives[{n}] breaks the schema: {error}")
        # A duplicate is harmless to the score but is most likely a typo.
        if (key := _canon_arguments(alt)) in seen:
            raise BenchError(f"{where}: alternatives[{n}] repeats another right answer")
        seen.add(key)
    keys = set(case.expected["arguments"]).union(*case.alternatives)
    if unknown := set(case.accept) - keys:
        raise BenchError(f"{where}: `accept` names arguments no right answer has: "
                         f"{sorted(unknown)}")


def load_cases(path: Path, catalog: dict[str, dict[str, Any]]) -> list[Case]:
    """Read and check the cases: known tools, expected call offered and schema-valid, and
    for the optional fields: the system file exists, the conversation is well-formed, the
    alternatives are schema-valid."""
    cases = []
    ids: set[str] = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = Case(**json.loads(line))
        except (TypeError, ValueError) as exc:
            raise BenchError(f"{path.name}:{n}: not a case: {exc}") from exc
        where = f"{path.name}:{n} ({case.id})"
        if case.id in ids:
            raise BenchError(f"{where}: the id is used twice")
        ids.add(case.id)
        if not isinstance(case.prompt, str) or not case.prompt.strip():
            raise BenchError(f"{where}: `prompt` must be text")
        unknown = [t for t in case.tools if t not in catalog]
        if unknown:
            raise BenchError(f"{where}: unknown tools {unknown}")
        _check_system(case, path.parent, where)
        if case.messages is not None:
            _check_messages(case, catalog, where)
        _check_expected(case, catalog, where)
        cases.append(case)
    return cases


def request_messages(case: Case, base: Path = CASES.parent) -> list[dict[str, Any]]:
    """What is sent: the system prompt (from its file), then the conversation or the one
    user message."""
    system = [] if case.system is None else [
        {"role": "system", "content": _read_system(system_path(case, base))}]
    turns = case.messages if case.messages is not None else [
        {"role": "user", "content": case.prompt}]
    return [*system, *turns]


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


def _canon(value: Any) -> str:
    """A value in comparable form. A list of strings is a set: HA's `domain` and
    `device_class` lists mean the same in any order."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return json.dumps(sorted({_norm(v) for v in value}))
    return json.dumps(_norm(value))


def _canon_arguments(arguments: dict[str, Any]) -> str:
    return json.dumps({k: _canon(v) for k, v in arguments.items()}, sort_keys=True)


def _same_arguments(got: dict[str, Any], want: dict[str, Any],
                    accept: dict[str, list[Any]]) -> bool:
    # The same keys: an argument left out, or given where none is wanted (even an empty
    # one, which HA refuses for a name or an area), is another call.
    if set(got) != set(want):
        return False
    return all(_canon(got[key]) in {_canon(v) for v in [value, *accept.get(key, [])]}
               for key, value in want.items())


def arguments_match(got: dict[str, Any], case: Case) -> bool:
    """The expected arguments or one of the alternatives: the same keys, each value equal
    (or one ``accept`` lists for that key), strings case-insensitively, numbers
    numerically, lists of strings as sets."""
    assert case.expected is not None
    return any(_same_arguments(got, want, case.accept)
               for want in [case.expected["arguments"], *case.alternatives])


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
    body = {"model": model, "messages": request_messages(case),
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
    data = r.json()
    tokens = (data.get("usage") or {}).get("prompt_tokens")
    out.prompt_tokens = tokens if isinstance(tokens, int) else None
    score(case, data["choices"][0]["message"], catalog, out)
    return out


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    tool_cases = [o for o in outcomes if o.expected is not None]
    none_cases = [o for o in outcomes if o.expected is None]
    calls = [o for o in outcomes if o.called is not None]
    tokens = [float(o.prompt_tokens) for o in outcomes if o.prompt_tokens is not None]

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
        "prompt_tokens": pcts(tokens) if tokens else None,
    }


def summarize_groups(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """The summary of each group of cases that has any (original, Home Assistant)."""
    groups = []
    for key, label in GROUPS:
        mine = [o for o in outcomes if group_of(o.category) == key]
        if mine:
            groups.append({"group": key, "label": label, "summary": summarize(mine)})
    return groups


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


# ----- the models ----------------------------------------------------------------------
def profile_tool_models(cfg: LoadedConfig) -> list[str]:
    """The profile's text models that can call tools: a tool parser, and not a vision or
    embedding model (those are never asked for a tool call)."""
    return [m.name for m in cfg.models
            if m.tool_call_parser and m.role.value not in NOT_TEXT_ROLES]


def served_tool_models(data: list[dict[str, Any]]) -> list[str]:
    """From a server's ``/v1/models``. It does not say which model has a tool parser: on
    our gateway, the ``tools`` role's model; on another server, every model it lists."""
    ours = [m for m in data if isinstance(m.get("zoe"), dict)]
    if ours:
        return [str(m["id"]) for m in ours if m["zoe"].get("role") == "tools"]
    return [str(m["id"]) for m in data]


async def served(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = (await client.get(f"{url}/v1/models")).json().get("data", [])
    return data


async def default_models(client: httpx.AsyncClient, url: str, args: argparse.Namespace,
                         say: Say) -> list[str]:
    """The profile's tool models that the server serves; failing that, those it lists."""
    data = await served(client, url)
    ids = {str(m["id"]) for m in data}
    try:
        cfg = load_config(path=args.config) if args.config else load_config(args.profile)
    except ConfigError as exc:
        say(f"cannot read the profile ({exc}); asking {url} for its models instead")
    else:
        wanted = profile_tool_models(cfg)
        here = [m for m in wanted if m in ids]
        if here:
            if missing := [m for m in wanted if m not in ids]:
                say(f"{url} does not serve {missing} of {cfg.source.name}: skipped")
            return here
        say(f"{url} serves none of the tool models of {cfg.source.name} "
            f"({', '.join(wanted) or 'none'}); asking it for its models instead")
    found = served_tool_models(data)
    if not found:
        raise BenchError(f"no model to evaluate: {url} lists no tool model "
                         f"(it serves {sorted(ids)}); name one with --model")
    return found


async def check_models(client: httpx.AsyncClient, url: str, models: list[str]) -> None:
    """Fail fast on a model the server does not serve (names and our aliases)."""
    data = await served(client, url)
    known = {m["id"] for m in data} | {a for m in data
                                       for a in (m.get("zoe") or {}).get("aliases", [])}
    missing = [m for m in models if m not in known]
    if missing:
        raise BenchError(f"{url} does not serve {missing}; it serves {sorted(known)}")


# ----- the server --------------------------------------------------------------------
async def answering(url: str) -> bool:
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            return (await client.get(f"{url}/v1/models")).status_code == 200
        except httpx.HTTPError:
            return False


async def start_stack(url: str, tmp: Path, config: Path | None, profile: str,
                      min_free_gib: float, say: Say) -> Server:
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK or parts.port is None:
        raise BenchError(f"nothing answers at {url}, and only a local URL with a port "
                         "(http://127.0.0.1:PORT) can be started here")
    if config is None and profile == DEFAULT_PROFILE:
        # The cpu profile with our port, and logs and run files in tmp.
        config = stack_config(tmp, parts.port)
        argv = gateway_argv(config)
    else:
        config = config or PROFILES_DIR / f"{profile}.yaml"
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


# ----- the run -----------------------------------------------------------------------
async def evaluate(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    catalog = load_catalog()
    cases = [c for c in load_cases(CASES, catalog)
             if not args.category or any(c.category.startswith(p) for p in args.category)]
    if not cases:
        raise BenchError(f"no case has a category starting with {args.category}")
    cases = spread(cases, args.limit)
    url = args.url.rstrip("/")
    tmp = Path(tempfile.gettempdir()) / f"zoe-eval-tools-{os.getpid()}"
    server: Server | None = None
    runs: list[dict[str, Any]] = []
    descriptions: dict[str, str] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:

        def say(line: str) -> None:
            progress.console.log(line)

        if not await answering(url):
            server = await start_stack(url, tmp, args.config, args.profile, args.min_free_gib,
                                       say)
        try:
            async with httpx.AsyncClient(timeout=args.timeout) as client:
                models = args.model or await default_models(client, url, args, say)
                await check_models(client, url, models)
                say(f"models: {', '.join(models)}")
                descriptions = {str(m["id"]): str((m.get("zoe") or {}).get("description", ""))
                                for m in await served(client, url) if m["id"] in models}
                for model in models:
                    for choice in args.tool_choice:
                        task = progress.add_task(f"{model}, tool_choice={choice}",
                                                 total=len(cases))
                        outcomes = await run_all(
                            client, f"{url}/v1/chat/completions", model, choice, cases,
                            catalog, args, functools.partial(progress.advance, task))
                        runs.append({"model": model, "tool_choice": choice,
                                     "summary": summarize(outcomes),
                                     "groups": summarize_groups(outcomes),
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
            "started_stack": server is not None, "limit": args.limit,
            "profile": args.profile, "config": None if args.config is None else str(args.config),
            "descriptions": descriptions}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_tools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:11434",
                        help="the server (default: %(default)s)")
    parser.add_argument("--model", action="append",
                        help="model name (repeatable; default: every text model of the "
                             "profile with a tool parser that the server serves, else the "
                             "tool models the server's /v1/models lists)")
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        choices=sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")),
                        help="the profile whose models are evaluated by default, and started "
                             "when nothing answers at --url (default: %(default)s)")
    parser.add_argument("--tool-choice", action="append", choices=["auto", "required"],
                        help="repeatable; default: both auto and required")
    parser.add_argument("--category", action="append",
                        help="only cases whose category starts with this (repeatable; "
                             "e.g. ha_ for the Home Assistant cases)")
    parser.add_argument("--limit", type=int, help="only this many cases, spread over the file")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight (default 1: latencies of one request)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument("--config", type=Path,
                        help="a config file instead of --profile: its models, and the stack "
                             "started when nothing answers at --url")
    parser.add_argument("--min-free-gib", type=float, default=9.0,
                        help="memory to wait for before starting a stack (default 9)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="the Markdown report (default: docs/benchmarks/tools.md)")
    args = parser.parse_args(argv)
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
