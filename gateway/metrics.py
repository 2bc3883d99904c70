"""Request-path counters and histograms (Prometheus), kept cheap to update."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
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

    def routed(self, model: str, reason: str) -> None:
        self.routes.labels(model, reason).inc()

    def fallback(self, src: str, dst: str) -> None:
        self.fallbacks.labels(src, dst).inc()

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def request_done(self, model: str, outcome: str, seconds: float | None = None) -> None:
        self.requests.labels(model, outcome).inc()
        if seconds is not None:
            self.latency.labels(model).observe(seconds)
