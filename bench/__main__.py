"""``python -m bench``: run the benchmarks and write ``docs/benchmarks/``.

Sections: ``overhead`` (gateway + echo worker vs a bare app; seconds),
``compare`` (our stack vs vLLM's own server, side by side; minutes) and
``recovery`` (swap, crash, probe failures, warm-up; minutes) and ``assistant`` (the fast
model's time to first token, short and Home Assistant-sized; minutes) and ``embeddings``
(embeddings/s at batches of 1, 8 and 32 against vllm serve and transformers, and the
gateway's added latency; minutes) and ``engines`` (llama.cpp's llama-server, vllm serve and
ours on one model in bf16, 4-bit and 8-bit, and the steps between; builds llama-server once,
about 40 minutes; then about half an hour) and ``layout`` (both text models busy at once, on
shared or split cores; about ten minutes). ``--quick`` runs
a smoke version of each (a few requests, one round) that still exercises every
path and writes every file. Results of sections not run this time are kept
from ``results.json``, so the page always shows the latest of each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import (
    assistant,
    compare,
    core_layout,
    cpu_engines,
    embeddings,
    overhead,
    recovery,
    report,
)
from bench.common import REPO, BenchError, Say, machine

Section = Callable[[Path, bool, Progress, Say, float], Awaitable[dict[str, Any]]]
SECTIONS: dict[str, Section] = {"overhead": overhead.run, "compare": compare.run,
                                "recovery": recovery.run, "assistant": assistant.run,
                                "embeddings": embeddings.run, "engines": cpu_engines.run,
                                "layout": core_layout.run}
DEFAULT_OUT = REPO / "docs" / "benchmarks"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: few requests, one round (numbers not meaningful)")
    parser.add_argument("--only", action="append", choices=list(SECTIONS),
                        help="run only this section (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where README.md, compare.png and results.json go")
    parser.add_argument("--min-free-gib", type=float, default=9.0,
                        help="wait until this much memory is available before starting "
                             "a model server (default 9)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (configs, server and worker logs)")
    return parser.parse_args(argv)


def load_previous(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {"sections": {}}


async def amain(args: argparse.Namespace, console: Console) -> int:
    names = args.only or list(SECTIONS)
    results_path = args.out / "results.json"
    results = load_previous(results_path)
    results.setdefault("sections", {})
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    results["command"] = f".venv/bin/python -m bench {argv}".rstrip()
    results["machine"] = machine()
    tmp = Path(tempfile.mkdtemp(prefix="zoe-bench-"))
    failed: list[str] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:

        def say(line: str) -> None:
            progress.console.log(line)

        for name in names:
            started = time.strftime("%Y-%m-%d %H:%M %Z")
            try:
                data = await SECTIONS[name](tmp / name, args.quick, progress, say,
                                            args.min_free_gib)
            except BenchError as exc:
                say(f"[red]{name} failed:[/red] {exc}")
                failed.append(name)
                continue
            data["quick"] = args.quick
            data["at"] = started
            data["command"] = results["command"]
            results["sections"][name] = data
            # Written after each section: a later failure keeps what was measured.
            args.out.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
            report.write(results, args.out)
    report.write(results, args.out)
    console.print(f"wrote {args.out / 'README.md'} and {args.out / 'compare.png'}")
    if args.keep:
        console.print(f"logs and configs kept in {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        console.print(f"[red]failed sections: {', '.join(failed)}[/red] (rerun with --keep "
                      "for the logs)")
        return 1
    return 0


async def _until_terminated(args: argparse.Namespace, console: Console) -> int:
    """``amain``, cancelled by SIGTERM: its ``finally`` blocks stop the servers it started
    (each in its own session, so nothing else would). Ctrl-C stays a KeyboardInterrupt."""
    task = asyncio.current_task()
    assert task is not None
    terminated: list[bool] = []

    def on_term() -> None:
        terminated.append(True)
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
    try:
        return await amain(args, console)
    except asyncio.CancelledError:
        if not terminated:
            raise
        console.print("[red]terminated[/red]: the servers this run started are stopped")
        return 128 + signal.SIGTERM


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(_until_terminated(args, Console()))


if __name__ == "__main__":
    raise SystemExit(main())
