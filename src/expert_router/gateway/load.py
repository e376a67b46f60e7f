"""Each replica's own report of its load, read from its Prometheus `/metrics` on a short interval.

A gateway process knows only the requests it sent itself. Several workers or instances in front of the
same experts each see a fraction, so a least-in-flight choice and a per-process limit drift apart from
what the engine really carries. vLLM reports its load (`vllm:num_requests_running`,
`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`; the emulated engine and the synthetic expert
report the same names): every gateway reads the same numbers, so they share one view. On top of a
report a gateway adds the requests it sent since that read *began*: a request sent while the read was
on its way may or may not be in the report, and forgetting it would let the gateway admit one more
than the limit (counting it twice until the next read only holds a request back for one interval).
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
    sent: int = 0
    """Requests this gateway has sent the replica, ever."""
    seen: int = 0
    """Of those, how many were sent before the last report's read began (the report shows them)."""
    reporting: bool = False
    """False until a read found vLLM's metric names (then the gateway falls back to its own counts)."""

    def requests(self) -> float:
        """Requests the replica carries by its own report, plus this gateway's sends it cannot show yet."""
        return self.running + self.waiting + self.sent - self.seen

    def update(self, text: str, sent_before: int | None = None) -> None:
        """Take a new report (Prometheus text exposition); `sent_before`: the value of `sent` when its read
        began (default: now, for a report read without waiting)."""
        values: dict[str, float] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in (RUNNING, WAITING, KV_USAGE):
                        values[sample.name] = values.get(sample.name, 0.0) + sample.value  # summed over models
        except ValueError:  # not Prometheus text (an HTML page, a cut-off line): no report, as for none at all
            values = {}
        self.reporting = RUNNING in values
        self.running, self.waiting = values.get(RUNNING, 0.0), values.get(WAITING, 0.0)
        self.kv_usage = values.get(KV_USAGE, 0.0)
        self.read_at = time.monotonic()
        self.seen = self.sent if sent_before is None else sent_before
