"""``make soak``: twice the stack's capacity in streaming clients, for minutes, with faults.

Starts its own server on the cpu profile (real workers, real model; probes
every 5 s with a 10 s timeout so faults are found within the run), then keeps
``--clients`` streaming clients busy (default: twice the sum over the always-on
models of ``max_num_seqs + max_queued``) until ``--minutes`` have passed. Meanwhile
it kills the tools worker with SIGKILL, stops the chat worker with SIGSTOP, and
injects an out-of-memory error into the tools worker.

Every request ends in exactly one class, counted per model:

- ``completed``: a 200 whose stream ran to ``[DONE]`` with no error event;
- ``failed_over``: the same, answered by the next model of the fallback chain
  (``x-zoe-route: fallback:<model>``);
- ``refused``: 429 or 503 with an error body (the client waits ``Retry-After``);
- ``errored``: any other answer: another status, an error event mid-stream, the
  connection dropped;
- ``lost``: no answer at all within ``--request-timeout`` seconds.

It stops by itself: no new request after the deadline, in-flight ones get a
bounded drain, then the server is stopped. Exit status 1 if anything was lost
or the stack did not return to idle; the summary is printed and, with
``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import (
    BenchError,
    Server,
    all_ready,
    free_port,
    gateway_argv,
    machine,
    process_rss_mb,
    spawn,
    stack_config,
    wait_for_memory,
    wait_ready,
)

CHAT, TOOLS = "smollm2-135m-chat", "smollm2-135m-tools"
SUPERVISOR = {"health_interval_s": 5, "probe_timeout_s": 10, "request_wait_s": 10}
PROMPTS = ["Tell me about cats.", "Write a short poem about the sea.",
           "Explain how a bicycle works.", "List some fruits."]
CLASSES = ("completed", "failed_over", "refused", "errored", "lost")


def say(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Tally:
    by_model: dict[str, Counter[str]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0

    def add(self, model: str, outcome: str, detail: str = "") -> None:
        self.by_model.setdefault(model, Counter())[outcome] += 1
        if detail:
            self.errors[detail[:120]] += 1

    def total(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for c in self.by_model.values():
            out.update(c)
        return out


async def one_request(client: httpx.AsyncClient, url: str, model: str, rng: random.Random,
                      timeout_s: float) -> tuple[str, str, float]:
    """Send one streaming request; (outcome, detail, seconds to wait before the next)."""
    body = {"model": model, "stream": True, "max_tokens": rng.randint(4, 24),
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                if r.status_code in (429, 503):
                    text = (await r.aread()).decode(errors="replace")
                    code = _error_code(text)
                    wait = float(r.headers.get("retry-after", "1") or 1)
                    return "refused", f"{r.status_code} {code}", wait
                if r.status_code != 200:
                    text = (await r.aread()).decode(errors="replace")
                    return "errored", f"HTTP {r.status_code}: {text[:80]}", 0.0
                last = ""
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    last = line
                    if line != "data: [DONE]" and "error" in _json(line[6:]):
                        return "errored", f"in-band: {_error_code(line[6:])}", 0.0
                if last != "data: [DONE]":
                    return "errored", "stream ended without [DONE]", 0.0
                route = r.headers.get("x-zoe-route", "")
                return ("failed_over" if route.startswith("fallback:") else "completed"), "", 0.0
    except TimeoutError:
        return "lost", f"no answer within {timeout_s:.0f}s", 0.0
    except httpx.HTTPError as exc:
        return "errored", f"{type(exc).__name__}", 0.5


def _json(text: str) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    return {}


def _error_code(text: str) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        error = json.loads(text)["error"]
        return str(error.get("code") or error.get("type"))
    return text[:40]


async def client_loop(i: int, client: httpx.AsyncClient, url: str, deadline: float,
                      tally: Tally, timeout_s: float) -> None:
    rng = random.Random(i)
    model = CHAT if i % 2 else TOOLS
    while time.monotonic() < deadline:
        tally.in_flight += 1
        try:
            outcome, detail, wait = await one_request(client, url, model, rng, timeout_s)
        finally:
            tally.in_flight -= 1
        tally.add(model, outcome, detail if outcome in ("errored", "lost", "refused") else "")
        if wait:
            await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))


# ----- faults -------------------------------------------------------------------------------
async def health(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await client.get(f"{url}/health", timeout=10)
    workers: dict[str, Any] = r.json()["workers"]
    return workers


async def wait_back(client: httpx.AsyncClient, url: str, model: str, old_pid: int,
                    bound_s: float) -> float | None:
    """Seconds until ``model`` is READY again under a new pid; None if not within bound."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound_s:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            w = (await health(client, url))[model]
            if w["state"] == "ready" and w["pid"] not in (None, old_pid):
                return time.monotonic() - t0
        await asyncio.sleep(0.5)
    return None


async def inject_faults(client: httpx.AsyncClient, url: str, faults: Path, start: float,
                        duration: float, timeline: list[dict[str, Any]]) -> None:
    """At 20%, 45% and 70% of the run: SIGKILL tools, SIGSTOP chat, OOM in tools. Each
    recovery is timed in the background, so the schedule does not slip."""
    recoveries: list[asyncio.Task[None]] = []

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, start + duration * fraction - time.monotonic()))

    async def recovered(entry: dict[str, Any], model: str, pid: int) -> None:
        back = await wait_back(client, url, model, pid, 900)
        entry["back_ready_after_s"] = None if back is None else round(back, 1)
        say(f"{model} is back after {back:.1f}s" if back is not None else
            f"{model} is NOT back")

    async def fault(name: str, model: str, action: Any) -> None:
        w = (await health(client, url))[model]
        t = round(time.monotonic() - start, 1)
        if w["state"] != "ready" or not w["pid"]:
            say(f"fault {name} skipped: {model} is {w['state']}")
            timeline.append({"fault": name, "model": model, "at_s": t, "skipped": w["state"]})
            return
        action(w["pid"])
        say(f"fault: {name} on {model} (pid {w['pid']}) at {t}s")
        entry: dict[str, Any] = {"fault": name, "model": model, "at_s": t,
                                 "back_ready_after_s": None}
        timeline.append(entry)
        recoveries.append(asyncio.create_task(recovered(entry, model, w["pid"])))

    def oom(pid: int) -> None:
        faults.write_text(json.dumps({TOOLS: {"oom_on_request": 1}}))

    await at(0.20)
    await fault("SIGKILL", TOOLS, lambda pid: os.kill(pid, signal.SIGKILL))
    await at(0.45)
    await fault("SIGSTOP", CHAT, lambda pid: os.kill(pid, signal.SIGSTOP))
    await at(0.70)
    await fault("OOM (injected)", TOOLS, oom)
    await asyncio.gather(*recoveries)
    disarm(faults)


def disarm(faults: Path) -> None:
    faults.write_text("{}")


# ----- the run --------------------------------------------------------------------------------
def soak_config(tmp: Path) -> tuple[Path, int]:
    port = free_port()
    # A reliability run: the tiny profile's SmolLM2 turns the same machinery faster.
    path = stack_config(tmp, port, supervisor=SUPERVISOR, profile="tiny")
    return path, port


def capacity(path: Path) -> int:
    data = yaml.safe_load(path.read_text())
    return sum(m.get("max_num_seqs", 8) + m.get("max_queued", 32) for m in data["models"]
               if not m.get("on_demand"))


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="zoe-soak-"))
    cfg_path, port = soak_config(tmp)
    clients = args.clients or 2 * capacity(cfg_path)
    faults = tmp / "faults.json"
    faults.write_text("{}")
    await wait_for_memory(args.min_free_gib, say)
    url = f"http://127.0.0.1:{port}"
    say(f"starting the stack in {tmp} (log: {tmp / 'server.log'})")
    server = spawn("soak", gateway_argv(cfg_path), tmp / "server.log", url,
                   env={"ZOE_VLLM_FAULTS": str(faults)})
    try:
        ready_s = await wait_ready(server, "/health", 900, all_ready)
        say(f"ready after {ready_s:.0f}s; {clients} streaming clients for "
            f"{args.minutes:g} min")
        return await drive(server, url, faults, clients, args) | {
            "clients": clients, "minutes": args.minutes, "logs": str(tmp),
            "supervisor": SUPERVISOR, "machine": machine()}
    finally:
        for w in (await _health_or_empty(url)).values():
            if w.get("pid"):
                # A stopped worker must be able to die; one already gone must not
                # keep the others stopped.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w["pid"], signal.SIGCONT)
        server.stop()
        say("server stopped")


async def _health_or_empty(url: str) -> dict[str, Any]:
    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
        async with httpx.AsyncClient() as c:
            return await health(c, url)
    return {}


async def drive(server: Server, url: str, faults: Path, clients: int,
                args: argparse.Namespace) -> dict[str, Any]:
    duration = args.minutes * 60
    tally = Tally()
    timeline: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    timeout = httpx.Timeout(args.request_timeout, connect=30)
    rss_start = process_rss_mb(server.proc.pid)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client, \
            httpx.AsyncClient(timeout=10) as probe:
        start = time.monotonic()
        deadline = start + duration
        loops = [asyncio.create_task(client_loop(i, client, url, deadline, tally,
                                                 args.request_timeout))
                 for i in range(clients)]
        chaos = asyncio.create_task(inject_faults(probe, url, faults, start, duration,
                                                  timeline))
        while time.monotonic() < deadline:
            await asyncio.sleep(min(30.0, max(0.1, deadline - time.monotonic())))
            t = tally.total()
            say(f"{time.monotonic() - start:5.0f}s  in flight {tally.in_flight:3d}  "
                + "  ".join(f"{k} {t[k]}" for k in CLASSES))
        say("deadline: no new requests; draining")
        # Each loop ends after its current request, which is bounded by request_timeout.
        await asyncio.wait_for(asyncio.gather(*loops), args.request_timeout + 60)
        drained_s = time.monotonic() - deadline
        # The last fault's recovery is part of the run even if it outlasts the deadline.
        await asyncio.wait_for(chaos, 900)
        idle = await wait_idle(probe, url)
    total = tally.total()
    summary = {
        "duration_s": round(duration), "drain_s": round(drained_s, 1),
        "requests": sum(total.values()), "outcomes": {k: total[k] for k in CLASSES},
        "by_model": {m: {k: c[k] for k in CLASSES} for m, c in sorted(tally.by_model.items())},
        "details": dict(tally.errors.most_common(12)), "faults": timeline,
        "idle_after": idle, "gateway_rss_mb": [round(rss_start, 1),
                                               round(process_rss_mb(server.proc.pid), 1)],
    }
    return summary


async def wait_idle(client: httpx.AsyncClient, url: str, bound_s: float = 60) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound_s:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            workers = await health(client, url)
            if all(w["active_requests"] == 0 and w["queued"] == 0
                   and (w["engine"] is None or (w["engine"]["running"], w["engine"]["waiting"])
                        == (0, 0)) for w in workers.values()):
                return True
        await asyncio.sleep(0.5)
    return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float,
                        default=float(os.environ.get("SOAK_MINUTES", "5")))
    parser.add_argument("--clients", type=int, default=0,
                        help="concurrent streaming clients (default: twice the capacity)")
    parser.add_argument("--request-timeout", type=float, default=240.0,
                        help="seconds without an answer before a request counts as lost")
    parser.add_argument("--min-free-gib", type=float, default=9.0)
    parser.add_argument("--out", type=Path, help="write the summary here as JSON")
    return parser.parse_args(argv)


async def stoppable(args: argparse.Namespace) -> dict[str, Any]:
    """``soak`` that SIGINT/SIGTERM cancel cleanly (its ``finally`` stops the server)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    return await soak(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = asyncio.run(stoppable(args))
    except BenchError as exc:
        say(f"failed: {exc}")
        return 2
    except asyncio.CancelledError:
        say("stopped by a signal")
        return 130
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    lost = summary["outcomes"]["lost"]
    ok = lost == 0 and summary["idle_after"] and all(
        f.get("back_ready_after_s") is not None for f in summary["faults"])
    say("PASS" if ok else f"FAIL: lost {lost}, idle {summary['idle_after']}, "
                          f"faults {summary['faults']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
