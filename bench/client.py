"""A streaming OpenAI client that times every token, and a bounded load runner."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.common import pcts

Tick = Callable[[], None]


@dataclass
class Sample:
    """One streamed request as the client saw it."""

    ok: bool
    total_s: float = 0.0
    ttft_s: float | None = None  # first chunk that carries output text
    gaps_s: list[float] = field(default_factory=list)  # between output chunks
    tokens: int = 0  # from the final usage chunk; else the output chunks seen
    error: str = ""
    # llama-server's own account in its last chunk: prompt_n tokens computed in prompt_ms,
    # cache_n reused from the slot's last prompt.
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Load:
    """One batch of ``n`` requests at a fixed concurrency."""

    concurrency: int
    wall_s: float
    samples: list[Sample]


def _text_of(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Sample:
    """POST ``body`` (stream: true) and time the answer chunk by chunk."""
    t0 = time.perf_counter()
    last: float | None = None
    sample = Sample(ok=False)
    chunks = 0
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                sample.error = f"HTTP {r.status_code}: {r.text[:200]}"
                return sample
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                event = json.loads(data)
                if "error" in event:
                    sample.error = str(event["error"])[:200]
                    return sample
                sample.timings = event.get("timings") or sample.timings
                usage = event.get("usage")
                if usage:
                    sample.tokens = int(usage.get("completion_tokens") or 0)
                if not _text_of(event):
                    continue
                chunks += 1
                if last is None:
                    sample.ttft_s = now - t0
                else:
                    sample.gaps_s.append(now - last)
                last = now
    except httpx.HTTPError as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
        return sample
    sample.total_s = time.perf_counter() - t0
    sample.tokens = sample.tokens or chunks
    sample.ok = sample.ttft_s is not None
    return sample


async def run_load(url: str, body: dict[str, Any], n: int, concurrency: int,
                   tick: Tick | None = None, timeout_s: float = 600) -> Load:
    """``n`` requests, ``concurrency`` in flight at a time; wall time of the batch."""
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def one() -> Sample:
            async with sem:
                s = await stream_one(client, url, body)
            if tick is not None:
                tick()
            return s

        t0 = time.perf_counter()
        samples = await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - t0
    return Load(concurrency=concurrency, wall_s=wall, samples=list(samples))


def summarize(loads: list[Load]) -> dict[str, Any]:
    """Latency percentiles (ms) and throughput over several batches of one concurrency."""
    samples = [s for load in loads for s in load.samples]
    good = [s for s in samples if s.ok]
    wall = sum(load.wall_s for load in loads)
    tokens = sum(s.tokens for s in good)
    errors = [s.error for s in samples if not s.ok]
    return {
        "requests": len(samples), "failed": len(errors), "errors": errors[:3],
        "ttft_ms": pcts([s.ttft_s for s in good if s.ttft_s is not None], 1e3),
        "itl_ms": pcts([g for s in good for g in s.gaps_s], 1e3),
        "latency_ms": pcts([s.total_s for s in good], 1e3),
        "output_tok_s": tokens / wall if wall else 0.0,
        "req_s": len(good) / wall if wall else 0.0,
        "tokens_per_request": tokens / len(good) if good else 0.0,
    }
