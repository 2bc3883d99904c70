"""The real stack, started once per test session on the tiny profile.

Real worker processes, real vLLM engines on the real SmolLM2 weights, real
ZeroMQ sockets, real HTTP. Only the profile (`tiny`: the machinery is the same
as `cpu`'s, the model smaller, so the suite runs in CI's time), the port, the
run/log folders, the probe interval and a (disarmed) fault-injection file differ
from `make up`. Answer quality is tested on the cpu profile's own model in
`test_tool_calls.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from shared.config import PROFILES_DIR

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 900  # first start on a fresh machine also converts the model
HEALTH_INTERVAL_S = 2.0
REQUEST_WAIT_S = 5.0
VISION_IDLE_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def health_doc(r: httpx.Response) -> dict[str, Any]:
    """``/health``'s document (200, or 503 while not serving); any other answer fails the
    test with what it said, not a KeyError far from the cause."""
    body: Any = r.json() if r.headers.get("content-type", "").startswith("application/json") \
        else None
    if r.status_code not in (200, 503) or not isinstance(body, dict) or "workers" not in body:
        raise AssertionError(f"/health answered {r.status_code}: {r.text[:500]!r}")
    doc: dict[str, Any] = body
    return doc


@dataclass
class Stack:
    url: str
    config_path: Path
    faults_path: Path
    logs: Path
    proc: subprocess.Popen[bytes]

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def health(self) -> dict[str, Any]:
        return health_doc(httpx.get(f"{self.url}/health", timeout=10))

    def worker(self, model: str) -> dict[str, Any]:
        w: dict[str, Any] = self.health()["workers"][model]
        return w

    def wait_state(self, model: str, state: str, timeout: float = 300) -> dict[str, Any]:
        return wait_for(lambda: (w := self.worker(model))["state"] == state and w, timeout,
                        f"{model} to be {state}", every=0.25)

    def arm(self, faults: dict[str, Any]) -> None:
        self.faults_path.write_text(json.dumps(faults))

    def disarm(self) -> None:
        self.faults_path.write_text("{}")

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


def stack_config(tmp: Path, port: int, profile: str = "tiny",
                 models: list[str] | None = None,
                 overrides: dict[str, dict[str, Any]] | None = None) -> Path:
    """``profile`` with the test's port, folders and probe timing; ``models`` keeps only those,
    and ``overrides`` sets fields of a model by its name."""
    data = yaml.safe_load((PROFILES_DIR / f"{profile}.yaml").read_text())
    if models is not None:
        data["models"] = [m for m in data["models"] if m["name"] in models]
    for m in data["models"]:
        m.update((overrides or {}).get(m["name"], {}))
    data["server"]["port"] = port
    data["paths"]["logs"] = str(tmp / "logs")
    data["paths"]["run"] = str(tmp / "run")
    if profile == "tiny":
        # Fast probes for the supervision tests; larger models keep their profile's timing.
        data["supervisor"]["health_interval_s"] = HEALTH_INTERVAL_S
        data["supervisor"]["probe_timeout_s"] = 5
    data["supervisor"]["request_wait_s"] = REQUEST_WAIT_S
    for m in data["models"]:
        if m.get("on_demand"):
            m["idle_unload_s"] = VISION_IDLE_S
        if m.get("chat_template"):
            m["chat_template"] = str((PROFILES_DIR / m["chat_template"]).resolve())
    path = tmp / "stack.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), "tiny") as s:
        yield s


@contextlib.contextmanager
def running_stack(tmp: Path, profile: str, models: list[str] | None = None,
                  overrides: dict[str, dict[str, Any]] | None = None) -> Iterator[Stack]:
    """The server on ``profile`` until every eager worker is READY; stopped, with nothing
    left behind, on exit."""
    port = free_port()
    config_path = stack_config(tmp, port, profile, models, overrides)
    faults = tmp / "faults.json"
    faults.write_text("{}")
    env = {**os.environ, "ZOE_VLLM_FAULTS": str(faults), "PYTHONUNBUFFERED": "1"}
    out = open(tmp / "server.out", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "--config", str(config_path), "serve"],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    s = Stack(url=f"http://127.0.0.1:{port}", config_path=config_path, faults_path=faults,
              logs=tmp / "logs", proc=proc)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: "
                                 f"{(tmp / 'server.out').read_text()[-3000:]}")
        try:
            h = s.health()
        except httpx.HTTPError:
            return False
        return all(w["state"] == "ready" for w in h["workers"].values() if not w["on_demand"])

    try:
        wait_for(healthy, START_DEADLINE_S, "every worker READY", every=1)
        yield s
    finally:
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()
    # Stopping must leave nothing behind: no worker, no EngineCore, no engine worker.
    wait_for(lambda: not alive(tree), 30, "every worker and engine process to exit")


@pytest.fixture(autouse=True)
def healthy_stack_between_tests(request: pytest.FixtureRequest) -> None:
    """Tests that use the shared stack start with no fault armed and every eager
    worker READY, whatever an earlier test killed, unloaded or swapped."""
    if "stack" not in request.fixturenames:
        return
    s: Stack = request.getfixturevalue("stack")
    s.disarm()

    def settled() -> bool:
        workers = s.health()["workers"]
        return all(w["state"] == "ready" for w in workers.values() if not w["on_demand"])
    wait_for(settled, 600, "every eager worker READY before the test", every=0.5)


@contextlib.contextmanager
def running_prometheus(stack: Stack, tmp: Path) -> Iterator[str]:
    """A real Prometheus server (Debian's, from `make test-deps`) scraping ``stack`` every
    second on a free loopback port, with a throw-away TSDB; its URL."""
    binary = shutil.which("prometheus")
    assert binary, "the Prometheus server is missing: run `make test-deps`"
    target = stack.url.removeprefix("http://")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "zoe-vllm", "metrics_path": "/metrics/prometheus",
                                  "static_configs": [{"targets": [target]}]}]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {(tmp / 'prometheus.log').read_text()}")
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 60, "prometheus to be ready", every=0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def prometheus_query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result
