"""Remote backends behind the gateway: a real `vllm serve` and a second zoe-vllm.

A second gateway ("stack 2") serves one local worker plus two remote models:
``remote-vllm`` (backend ``openai``) on vLLM's own OpenAI server, and
``remote-ollama`` (backend ``ollama``) on the session stack's Ollama API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared import config as cfgmod
from shared.engine_args import engine_argv, engine_env
from tests.e2e.conftest import REPO, Stack, free_port, wait_for

pytestmark = pytest.mark.e2e

LOCAL, REMOTE_VLLM, REMOTE_OLLAMA = "local-chat", "remote-vllm", "remote-ollama"
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


class VllmServe:
    """vLLM's own OpenAI server on the SmolLM2 weights, started and stopped at will."""

    def __init__(self, tmp: Path) -> None:
        cfg = cfgmod.load(profile="tiny")
        model = cfg.model("smollm2-135m-chat")
        self.port = free_port()
        self.argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                     *engine_argv(cfg, model, accelerator=False),
                     "--host", "127.0.0.1", "--port", str(self.port)]
        # Core 1: the local worker of stack 2 sits on core 0.
        self.env = {**os.environ, **engine_env(model, accelerator=False),
                    "VLLM_CPU_OMP_THREADS_BIND": "1"}
        self.log = tmp / "vllm-serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=self.log.parent, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, 300, "vllm serve to be up", every=1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def vllm_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServe]:
    server = VllmServe(tmp_path_factory.mktemp("vllm-serve"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack2(stack: Stack, vllm_serve: VllmServe,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("stack2")
    port = free_port()
    cpu = yaml.safe_load((cfgmod.PROFILES_DIR / "tiny.yaml").read_text())
    local = next(m for m in cpu["models"] if m["name"] == "smollm2-135m-chat")
    local.update(name=LOCAL, aliases=[], cpu_cores="0")
    config: dict[str, Any] = {
        "server": {"port": port, "default_model": LOCAL},
        "paths": {"logs": str(tmp / "logs"), "run": str(tmp / "run")},
        "supervisor": {"health_interval_s": 1, "probe_timeout_s": 10,
                       "sequential_start": False, "warmup_requests": 1},
        "models": [
            local,
            {"name": REMOTE_VLLM, "role": "tools", "backend": "openai", "url": vllm_serve.url,
             "remote_model": "smollm2-135m-chat", "fallback": LOCAL},
            {"name": REMOTE_OLLAMA, "role": "general", "backend": "ollama", "url": stack.url,
             "remote_model": "smollm2-135m-chat", "fallback": LOCAL},
        ]}
    path = tmp / "stack2.yaml"
    path.write_text(yaml.safe_dump(config))
    out = open(tmp / "server.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(path),
                             "serve"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "server.out").read_text()[-3000:]
        try:
            workers = httpx.get(f"{url}/health", timeout=5).json()["workers"]
        except (httpx.HTTPError, ValueError):
            return False
        return all(w["state"] == "ready" for w in workers.values())

    try:
        wait_for(ready, 600, "stack 2 with both remotes READY", every=1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        out.close()


def chat(url: str, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": PARIS, "max_tokens": 24, "temperature": 0, **extra})


def worker(url: str, model: str) -> dict[str, Any]:
    w: dict[str, Any] = httpx.get(f"{url}/health", timeout=5).json()["workers"][model]
    return w


def test_openai_backend_answers(stack2: str) -> None:
    r = chat(stack2, REMOTE_VLLM)
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-model"] == REMOTE_VLLM
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_openai_backend_streams(stack2: str) -> None:
    with httpx.stream("POST", f"{stack2}/v1/chat/completions", timeout=120, json={
            "model": REMOTE_VLLM, "messages": PARIS, "max_tokens": 12, "stream": True}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert len(events) > 3 and events[-1] == "data: [DONE]"


def test_ollama_backend_answers_and_streams(stack2: str) -> None:
    r = chat(stack2, REMOTE_OLLAMA)
    assert r.status_code == 200, r.text
    assert r.headers["x-zoe-model"] == REMOTE_OLLAMA
    body = r.json()
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0
    with httpx.stream("POST", f"{stack2}/v1/chat/completions", timeout=120, json={
            "model": REMOTE_OLLAMA, "messages": PARIS, "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert len(events) > 3 and events[-1] == "data: [DONE]"
    assert '"usage"' in events[-2]


def test_down_backend_is_skipped_then_recovers(stack2: str, vllm_serve: VllmServe) -> None:
    vllm_serve.stop()
    down = wait_for(lambda: (w := worker(stack2, REMOTE_VLLM))["state"] == "stopped" and w,
                    60, "the remote to be marked down")
    assert down["stage"] == "down" and "3 failed health probes" in down["detail"]
    assert down["probes"]["failed"] >= 3
    r = chat(stack2, REMOTE_VLLM)
    assert r.status_code == 200
    assert r.headers["x-zoe-model"] == LOCAL
    assert r.headers["x-zoe-route"] == f"fallback:{REMOTE_VLLM}"

    vllm_serve.start()
    wait_for(lambda: worker(stack2, REMOTE_VLLM)["state"] == "ready", 60,
             "the remote to be READY again")
    r = chat(stack2, REMOTE_VLLM)
    assert r.status_code == 200 and r.headers["x-zoe-model"] == REMOTE_VLLM
