"""Prometheus metrics of the external processor: how long classifying takes and where requests go.

Names follow the gateway's (`expert_router_*`), with `extproc` in them so both can be scraped into one
Prometheus without clashing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from expert_router.gateway.metrics import ROUTE_BUCKETS


class ExtprocMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.classify_seconds = Histogram(
            "expert_router_extproc_classify_seconds",
            "Time spent classifying one prompt",
            buckets=ROUTE_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "expert_router_extproc_decisions",
            "Requests decided, by cluster and outcome (classifier, model, default, or an error reply)",
            ["cluster", "outcome"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "expert_router_extproc_streams",
            "ext_proc streams open (one per request Envoy is processing)",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
