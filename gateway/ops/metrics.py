"""Request-path counters and histograms (Prometheus), kept cheap to update.

Histograms give Prometheus its quantile estimates; ``/metrics`` also wants
exact recent percentiles, so each model keeps a small sliding window of its
latest observations too (bounded memory, sorted only when read).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30)
WINDOW = 1000  # observations per model kept for exact percentiles
MAX_REASONS = 32  # distinct route reasons before the rest count as "other"
PERCENTILES = (50, 90, 99)


class Outcome(enum.Enum):
    """How a request ended, as ``zoe_requests_total{outcome}`` counts it."""

    OK = "ok"
    ERROR = "error"  # the engine failed it (5xx, or an error mid-stream)
    CLIENT_ERROR = "client_error"  # refused by vLLM as the client's fault (4xx)
    BUSY = "busy"  # every model of its chain was full
    UNAVAILABLE = "unavailable"  # no model of its chain could serve (loading, down)
    DISCONNECTED = "disconnected"  # the client went away first


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0


class _Counted(msgspec.Struct):
    data: list[msgspec.Raw]  # not decoded: only counted
    usage: _Usage = msgspec.field(default_factory=_Usage)

def usage_of(body: bytes) -> tuple[int, int]:
    """(inputs, prompt tokens) of an OpenAI embeddings answer, for the metrics."""
    try:
        answer = msgspec.json.decode(body, type=_Counted)
    except msgspec.DecodeError:
        return 0, 0
    return len(answer.data), answer.usage.prompt_tokens


class Window:
    """The latest ``size`` observations; nearest-rank percentiles on demand."""

    def __init__(self, size: int = WINDOW) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.count = 0  # all observations ever, not only those still in the window

    def add(self, value: float) -> None:
        self.values.append(value)
        self.count += 1

    def summary(self) -> dict[str, float | int | None]:
        ordered = sorted(self.values)
        out: dict[str, float | int | None] = {"count": self.count, "window": len(ordered)}
        for q in PERCENTILES:
            out[f"p{q}"] = _nearest_rank(ordered, q)
        return out


def _nearest_rank(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 6)


class Metrics:
    def __init__(self, models: Iterable[str] | None = None) -> None:
        # Labels come from bounded sets; anything else is folded into "other".
        self.models = frozenset(models) if models is not None else None
        self._reasons: set[str] = set()
        self.ttft_window: dict[str, Window] = {}
        self.latency_window: dict[str, Window] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.routes = Counter("zoe_route_decisions", "Routing decisions by chosen model and "
                              "reason", ["model", "reason"], registry=r)
        self.requests = Counter("zoe_requests", "Finished requests by model and outcome",
                                ["model", "outcome"], registry=r)
        self.fallbacks = Counter("zoe_fallbacks", "Requests handed down a fallback chain",
                                 ["from_model", "to_model"], registry=r)
        self.ttft = Histogram("zoe_time_to_first_token_seconds", "Time from request to the "
                              "first streamed chunk", ["model"], buckets=TTFT_BUCKETS,
                              registry=r)
        self.latency = Histogram("zoe_request_latency_seconds", "End-to-end request latency",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.embedding_inputs = Counter("zoe_embedding_inputs", "Texts (or token lists) "
                                        "embedded, by model", ["model"], registry=r)
        self.embedding_tokens = Counter("zoe_embedding_tokens", "Tokens embedded (the "
                                        "answers' usage), by model", ["model"], registry=r)

    def _model(self, model: str) -> str:
        return model if self.models is None or model in self.models else "other"

    def _reason(self, reason: str) -> str:
        if reason not in self._reasons:
            if len(self._reasons) >= MAX_REASONS:
                return "other"
            self._reasons.add(reason)
        return reason

    def routed(self, model: str, reason: str) -> None:
        self.routes.labels(self._model(model), self._reason(reason)).inc()

    def fallback(self, src: str, dst: str) -> None:
        self.fallbacks.labels(self._model(src), self._model(dst)).inc()

    def first_token(self, model: str, seconds: float) -> None:
        model = self._model(model)
        self.ttft.labels(model).observe(seconds)
        self.ttft_window.setdefault(model, Window()).add(seconds)

    def request_done(self, model: str, outcome: Outcome, seconds: float | None = None) -> None:
        model = self._model(model)
        self.requests.labels(model, outcome.value).inc()
        if seconds is not None:
            self.latency.labels(model).observe(seconds)
            self.latency_window.setdefault(model, Window()).add(seconds)

    def embedded(self, model: str, body: bytes) -> None:
        """Count an embeddings answer's inputs and tokens (read from its ``usage``)."""
        inputs, tokens = usage_of(body)
        model = self._model(model)
        self.embedding_inputs.labels(model).inc(inputs)
        self.embedding_tokens.labels(model).inc(tokens)

    def requests_by_outcome(self) -> dict[str, dict[str, int]]:
        """model -> outcome -> finished requests, read from the counter itself."""
        out: dict[str, dict[str, int]] = {}
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    m, o = sample.labels["model"], sample.labels["outcome"]
                    out.setdefault(m, {})[o] = int(sample.value)
        return out

    def routes_by_reason(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for family in self.routes.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    m, r = sample.labels["model"], sample.labels["reason"]
                    out.setdefault(m, {})[r] = int(sample.value)
        return out
