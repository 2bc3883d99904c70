"""The first-token split: vLLM's Prometheus text read as per-request means, and the page."""

from __future__ import annotations

import pytest

from bench import first_token as ft
from bench.common import BenchError


def _metrics(requests: int, ttft_s: float, prefill_s: float, queried: int, hits: int) -> str:
    lines = ["# HELP vllm:time_to_first_token_seconds x", "# TYPE x histogram"]
    for h, total in (("time_to_first_token_seconds", ttft_s), ("request_queue_time_seconds",
                     0.0), ("request_prefill_time_seconds", prefill_s),
                     ("e2e_request_latency_seconds", ttft_s)):
        lines += [f'vllm:{h}_bucket{{le="0.1",model_name="m"}} {requests}',
                  f'vllm:{h}_sum{{engine="0",model_name="m"}} {total}',
                  f'vllm:{h}_count{{engine="0",model_name="m"}} {requests}']
    # Two label sets of one counter are summed.
    lines += [f'vllm:prefix_cache_queries_total{{engine="0"}} {queried - 1}',
              'vllm:prefix_cache_queries_total{engine="1"} 1',
              f"vllm:prefix_cache_hits_total {hits}"]
    return "\n".join(lines) + "\n"


def test_two_scrapes_give_each_requests_mean_share() -> None:
    before = ft.scrape(_metrics(3, 0.3, 0.2, 100, 10))
    after = ft.scrape(_metrics(13, 0.7, 0.5, 850, 650))
    r = ft.per_request(before, after)
    assert r["time_to_first_token_seconds"] == pytest.approx(40.0)  # 0.4 s over 10 requests
    assert r["request_prefill_time_seconds"] == pytest.approx(30.0)
    assert r["tokens_computed"] == pytest.approx(11.0) and r["tokens_cached"] == 64.0


def test_no_request_between_the_scrapes_is_an_error() -> None:
    same = ft.scrape(_metrics(3, 0.3, 0.2, 100, 10))
    with pytest.raises(BenchError, match="no request"):
        ft.per_request(same, same)


def test_the_page_splits_each_first_token() -> None:
    vllm = {"client_ttft_ms": 40.0, "time_to_first_token_seconds": 34.0,
            "request_prefill_time_seconds": 30.0, "tokens_computed": 11.0, "tokens_cached": 64.0}
    llama = {"client_ttft_ms": 21.0, "prompt_ms": 16.0, "tokens_computed": 1.0,
             "tokens_cached": 74.0}
    r = {"form": "W8A8 int8", "n": 20, "at": "today", "servers": {
        "vllm": {"repeated": vllm, "new": vllm, "decode": {**vllm, "step_ms": 26.0}},
        "llama": {"repeated": llama, "new": llama, "decode": {**llama, "step_ms": 14.7}}}}
    page = ft.render(r, "python -m bench.first_token")
    assert "| first token, at the client | 40.0 ms | 21.0 ms |" in page
    assert "| prompt tokens computed / found cached | 11 / 64 | 1 / 74 |" in page
    assert "(queue, engine core, inputs) | 4.0 ms | - |" in page
    assert "the way back | 6.0 ms | 5.0 ms |" in page
    assert "| one decode step (64-token answers) | 26.0 ms | 14.7 ms |" in page
