"""/metrics, /metrics/prometheus and `zoe-vllm status` against the real stack."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import REPO, Stack, wait_for

pytestmark = pytest.mark.e2e

CHAT, TOOLS = "smollm2-135m-chat", "smollm2-135m-tools"


@pytest.fixture(autouse=True)
def eager_models_ready(stack: Stack) -> None:
    for model in (CHAT, TOOLS):
        stack.wait_state(model, "ready", 300)


def metrics(stack: Stack) -> dict[str, Any]:
    r = httpx.get(f"{stack.url}/metrics", timeout=10)
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def samples(stack: Stack) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = httpx.get(f"{stack.url}/metrics/prometheus", timeout=10)
    assert r.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def sample(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def chat(stack: Stack, model: str, tokens: int, stream: bool = False) -> dict[str, Any]:
    body = {"model": model, "max_tokens": tokens, "ignore_eos": True, "stream": stream,
            "messages": [{"role": "user", "content": "Count to ten."}]}
    if not stream:
        r = httpx.post(f"{stack.v1}/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out
    body["stream_options"] = {"include_usage": True}
    usage: dict[str, Any] = {}
    with httpx.stream("POST", f"{stack.v1}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return {"usage": usage}


def test_json_metrics_count_real_traffic(stack: Stack) -> None:
    before = metrics(stack)["models"][CHAT]
    gen0 = before["tokens"]["generation"]
    served0 = before["requests"]["served"]
    plain = chat(stack, CHAT, 12)["usage"]
    streamed = chat(stack, CHAT, 9, stream=True)["usage"]
    assert plain["completion_tokens"] == 12 and streamed["completion_tokens"] == 9

    # Token counts travel from vLLM's stat logger through the worker: poll for them.
    expected = gen0 + 12 + 9
    doc = wait_for(lambda: (d := metrics(stack))["models"][CHAT]["tokens"]["generation"]
                   >= expected and d, 30, "generated tokens to reach /metrics")
    m = doc["models"][CHAT]
    # health probes (every 2 s here) generate a token each, nothing else runs
    assert m["tokens"]["generation"] - gen0 < 21 + 50
    assert m["tokens"]["prompt"] >= before["tokens"]["prompt"] + plain["prompt_tokens"] * 2
    assert m["requests"]["served"] == served0 + 2
    assert m["requests"]["routes"]["explicit"] >= 2
    assert m["ttft_seconds"]["count"] >= 1 and 0 < m["ttft_seconds"]["p50"] < 60
    lat = m["latency_seconds"]
    assert lat["count"] >= 2 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] < 120
    assert m["state"] == "ready" and m["loaded"] is True
    assert m["active_requests"] == 0 and m["queued"] == 0
    # Failures count for the whole session (earlier tests inject them): none was added.
    assert m["failure_count"] == before["failure_count"]

    # The seed's figures: uptime, health, last health check, hardware
    assert doc["uptime_s"] > 0 and doc["health"]["status"] == "ok"
    assert CHAT in doc["health"]["ready"] and TOOLS in doc["health"]["ready"]
    assert time.time() - m["last_health_check"] < 60
    assert m["uptime_s"] > 0 and m["load_seconds"] > 0
    hw = doc["hardware"]
    assert hw["kind"] in ("cpu", "nvidia", "jetson")
    if hw["kind"] == "cpu":
        assert doc["gpu"] is None and hw["gpus"] == []
    assert hw["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert len(hw["cpu"]["per_core_percent"]) == psutil.cpu_count()
    assert hw["probes"]["host"]["ok"] and hw["probes"]["host"]["age_s"] < 30


def test_worker_memory_is_the_real_process_tree(stack: Stack) -> None:
    def rss_reported() -> dict[str, Any] | None:
        models = metrics(stack)["models"]
        return models if all(models[m]["memory_rss_bytes"] for m in (CHAT, TOOLS)) else None

    models = wait_for(rss_reported, 30, "worker RSS from the host probe")
    for name in (CHAT, TOOLS):
        tree = psutil.Process(stack.worker(name)["pid"])
        real = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
        reported = models[name]["memory_rss_bytes"]
        assert reported > 500 * 2**20  # a vLLM engine, not just a Python process
        assert 0.5 * real < reported < 2 * real


def test_prometheus_exposition_relays_engines(stack: Stack) -> None:
    found = samples(stack)
    for model in (CHAT, TOOLS):
        assert sample(found, "zoe_worker_state", model=model, state="ready") == 1
        assert sample(found, "zoe_worker_state", model=model, state="failed") == 0
        assert sample(found, "zoe_model_loaded", model=model) == 1
        assert sample(found, "zoe_engine_kv_cache_usage_ratio", model=model) >= 0
        assert sample(found, "zoe_engine_running_sequences", model=model) >= 0
        assert sample(found, "zoe_generation_tokens_total", model=model) > 0  # warm-up
        assert sample(found, "zoe_model_load_seconds", model=model) > 0
        assert sample(found, "zoe_health_checks_total", model=model) >= 1
    assert sample(found, "zoe_model_loaded", model="tiny-idefics3-vision") == 0
    assert sample(found, "zoe_uptime_seconds") > 0
    kind = metrics(stack)["hardware"]["kind"]
    assert any(name == "zoe_hardware_info" and ("kind", kind) in labels
               for name, labels in found)
    assert any(name == "zoe_memory_total_bytes" for name, _ in found)


def test_metrics_answer_under_load(stack: Stack) -> None:
    """Eight long streams keep the engine busy; both endpoints keep answering."""
    errors: list[str] = []

    def stream() -> None:
        try:
            chat(stack, CHAT, 120, stream=True)
        except Exception as exc:  # reported below, not swallowed
            errors.append(repr(exc))

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        seen = wait_for(lambda: metrics(stack)["models"][CHAT]["active_requests"] >= 4, 60,
                        "the load to be visible in /metrics")
        assert seen
        found = samples(stack)
        assert sample(found, "zoe_active_requests", model=CHAT) >= 1
        for _ in range(5):
            t0 = time.monotonic()
            assert httpx.get(f"{stack.url}/metrics/prometheus", timeout=5).status_code == 200
            assert httpx.get(f"{stack.url}/metrics", timeout=5).status_code == 200
            assert time.monotonic() - t0 < 5
    finally:
        for t in threads:
            t.join(300)
    assert not errors


def run_status(stack: Stack, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "--config",
                           str(stack.config_path), "status", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_status_command_prints_the_workers(stack: Stack) -> None:
    out = run_status(stack)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("zoe-vllm ok, up ")
    assert lines[2].split()[:3] == ["NAME", "STATE", "PID"]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    for model in (CHAT, TOOLS):
        assert rows[model][1] == "ready"
        assert rows[model][2] == str(stack.worker(model)["pid"])
        assert rows[model][4] == "GiB" or rows[model][4] == "MiB"  # memory: "1.2 GiB"
    assert rows["tiny-idefics3-vision"][1] == "stopped"

    out = run_status(stack, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["health"]["status"] == "ok"
    assert doc["metrics"]["models"][CHAT]["state"] == "ready"
