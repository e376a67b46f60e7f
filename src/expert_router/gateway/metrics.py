"""Prometheus metrics of the gateway.

With `serve --workers N` the workers share one port, so a scrape reaches any one of them: they run in
prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `serve`), and every worker's
/metrics reports the sum over all workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

ROUTE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "expert_router_requests",
            "Requests answered, by endpoint, the cluster whose expert answered (empty when none did: 499, "
            "503) and HTTP status; fallbacks are counted in expert_router_fallbacks",
            ["endpoint", "cluster", "status"],
            registry=self.registry,
        )
        self.routing_seconds = Histogram(
            "expert_router_routing_seconds",
            "Time from receiving a request to sending it upstream",
            buckets=ROUTE_BUCKETS,
            registry=self.registry,
        )
        self.classify_seconds = Histogram(
            "expert_router_classify_seconds",
            "Time spent classifying one prompt",
            buckets=ROUTE_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "expert_router_inflight",
            "Requests in flight per cluster",
            ["cluster"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.fallbacks = Counter(
            "expert_router_fallbacks",
            "Requests sent to another cluster's expert than the classifier chose",
            ["from_cluster", "to_cluster"],
            registry=self.registry,
        )
        self.upstream_failures = Counter(
            "expert_router_upstream_failures",
            "Upstream failures by replica and kind",
            ["replica", "kind"],
            registry=self.registry,
        )
        self.streamed_chunks = Counter(
            "expert_router_streamed_chunks",
            "SSE chunks relayed to clients",
            registry=self.registry,
        )

        self._request_counts: dict[tuple[str, str, str], Counter] = {}
        self._inflight_children: dict[int, Gauge] = {}

    def set_inflight(self, cluster: int, requests: int) -> None:
        """An expert's requests in flight, set at each change (`Experts`' hook)."""
        child = self._inflight_children.get(cluster)
        if child is None:
            child = self._inflight_children[cluster] = self.inflight.labels(str(cluster))
        child.set(requests)

    def count_request(self, endpoint: str, cluster: str, status: str) -> None:
        """`requests` + 1, its labelled child looked up once per label set (`labels()` takes a lock each call)."""
        key = (endpoint, cluster, status)
        child = self._request_counts.get(key)
        if child is None:
            child = self._request_counts[key] = self.requests.labels(endpoint, cluster, status)
        child.inc()

    def exposition(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
