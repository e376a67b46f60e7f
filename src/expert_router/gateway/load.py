"""Each replica's own report of its load, read from its Prometheus `/metrics` on a short interval.

A gateway process knows only the requests it sent itself. Several workers or instances in front of the
same experts each see a fraction, so a least-in-flight choice and a per-process limit drift apart from
what the engine really carries. vLLM reports its load (`vllm:num_requests_running`,
`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`; the emulated engine and the synthetic expert
report the same names): every gateway reads the same numbers, so they share one view. Between two
reads a gateway adds the requests it sent since the last one, which the report cannot show yet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"


@dataclass
class ReportedLoad:
    """What a replica last said of itself, and what this gateway sent it since."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    read_at: float = 0.0
    sent_since: int = 0
    reporting: bool = False
    """False until a read found vLLM's metric names (then the gateway falls back to its own counts)."""

    def requests(self) -> float:
        """Requests the replica carries by its own report, plus this gateway's sends it cannot show yet."""
        return self.running + self.waiting + self.sent_since

    def update(self, text: str) -> None:
        """Take a new report (Prometheus text exposition)."""
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (RUNNING, WAITING, KV_USAGE):
                    values[sample.name] = values.get(sample.name, 0.0) + sample.value  # summed over models
        self.reporting = RUNNING in values
        self.running, self.waiting = values.get(RUNNING, 0.0), values.get(WAITING, 0.0)
        self.kv_usage = values.get(KV_USAGE, 0.0)
        self.read_at = time.monotonic()
        self.sent_since = 0
