"""The simulator watches itself: was it, and not the target, what limited the measurement?

A 10 ms timer runs beside the users; how late it fires is the event loop's lag. A percentile of those
samples hides a single long stall (a p99 of 10 ms samples says nothing about one 8 s pause), so the
check also looks at the longest stall and at the share of the run spent stalled. A run is not valid
when the loop lagged, stalled, the simulator used most of a core, most requests failed, or it was
interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAG_LIMIT_MS = 5.0
"""Loop lag p99 above this: tokens were read late."""
STALL_LIMIT_MS = 100.0
"""One stall longer than this makes a run not valid."""
STALLED_SHARE_LIMIT = 0.01
"""Stalls (lag above LAG_LIMIT_MS) covering more than this share of the run make it not valid."""
CPU_LIMIT = 0.90
FAILED_LIMIT = 0.5
"""A run in which more than this share of requests failed is never valid."""
PERIOD_S = 0.01


@dataclass
class SelfCheck:
    lag_p99_ms: float
    lag_max_ms: float
    stalled_share: float
    cpu_share: float
    valid: bool
    reasons: list[str]


def self_check(
    lag_ms: list[float], cpu_share: float, run_s: float, failed: int = 0, requests: int = 0, interrupted: bool = False
) -> SelfCheck:
    lag = np.asarray(lag_ms or [0.0])
    p99, worst = float(np.percentile(lag, 99)), float(lag.max())
    stalled = float(lag[lag > LAG_LIMIT_MS].sum()) / 1000 / max(run_s, 1e-9)
    reasons = []
    if p99 > LAG_LIMIT_MS:
        reasons.append(
            f"event-loop lag p99 {p99:.1f} ms > {LAG_LIMIT_MS:g} ms: the simulator was too busy to read "
            "tokens on time; use --processes or fewer users"
        )
    if worst > STALL_LIMIT_MS:
        reasons.append(
            f"the simulator stalled for {worst:.0f} ms once (limit {STALL_LIMIT_MS:g} ms): token times "
            "around it are late"
        )
    if stalled > STALLED_SHARE_LIMIT:
        reasons.append(f"the simulator was stalled {stalled:.1%} of the run (limit {STALLED_SHARE_LIMIT:.0%})")
    if cpu_share > CPU_LIMIT:
        reasons.append(f"the simulator used {cpu_share:.0%} of a core: it may have been the bottleneck")
    if requests and failed / requests > FAILED_LIMIT:
        reasons.append(f"{failed} of {requests} requests failed: the run measured failures, not the target")
    if requests == 0 and not interrupted:
        reasons.append("no request finished")
    if interrupted:
        reasons.append("the run was interrupted")
    return SelfCheck(p99, worst, stalled, cpu_share, not reasons, reasons)
