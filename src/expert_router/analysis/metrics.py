"""The paper's metrics from request records; the README's "Metrics" section states each definition.

Latency and throughput figures come from successful requests; failed ones count towards the error
rate and keep their time to failure, shown beside every latency figure (a configuration must not look
faster by dropping its slowest users). Tokens are counted per chunk (`RequestRecord.chunk_tokens`), so
a server that packs several tokens into one chunk is measured as vLLM's, AIPerf's and MLPerf's
benchmarks measure it: TPOT = (last token time - first token time) / (tokens - 1).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from expert_router.loadgen.records import RequestRecord

Phase = Literal["ramp-up", "steady", "drain", "whole"]


def ok(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if r.ok]


def with_tokens(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    return [r for r in ok(records) if r.t_first_token is not None]


def ttft(records: Sequence[RequestRecord], from_schedule: bool = False) -> np.ndarray:
    """Seconds from sending a request (or, `from_schedule`, from when it was due) to its first token."""
    return np.array(
        [
            r.t_first_token - (r.t_scheduled if from_schedule else r.t_start)
            for r in with_tokens(records)
            if r.t_first_token is not None
        ],
        dtype=float,
    )


def tpot(records: Sequence[RequestRecord]) -> np.ndarray:
    """Per request with at least two tokens: (last token time - first token time) / (tokens - 1)."""
    values = []
    for r in with_tokens(records):
        times = r.token_times()
        tokens = sum(r.chunk_tokens)
        if tokens >= 2 and len(times) >= 1 and r.t_first_token is not None:
            values.append((times[-1] - r.t_first_token) / (tokens - 1))
    return np.array(values, dtype=float)


def inter_chunk_latency(records: Sequence[RequestRecord]) -> np.ndarray:
    """Every gap between consecutive token-carrying chunks, pooled over requests (ITL when one chunk is
    one token, as with vLLM's default stream interval)."""
    runs = [r.token_times() for r in with_tokens(records)]
    lengths = np.fromiter(map(len, runs), dtype=np.int64, count=len(runs))
    times = np.fromiter(itertools.chain.from_iterable(runs), dtype=float, count=int(lengths.sum()))
    within = np.ones(max(len(times) - 1, 0), dtype=bool)  # one diff over all, minus the gaps between requests
    ends = np.cumsum(lengths)[:-1] - 1
    within[ends[(ends >= 0) & (ends < len(within))]] = False
    return np.diff(times)[within] if len(times) else np.array([], dtype=float)


def response_time(records: Sequence[RequestRecord]) -> np.ndarray:
    """Seconds from sending a request to its last byte."""
    return np.array([r.t_end - r.t_start for r in ok(records) if r.t_end is not None], dtype=float)


def time_to_failure(records: Sequence[RequestRecord]) -> np.ndarray:
    """Seconds from sending a failed request to its failure."""
    return np.array([r.t_end - r.t_start for r in records if not r.ok and r.t_end is not None], dtype=float)


def user_throughput(records: Sequence[RequestRecord]) -> np.ndarray:
    """Per request, output tokens / (t_end - t_start): the speed one user experiences."""
    return np.array(
        [r.output_tokens / (r.t_end - r.t_start) for r in ok(records) if r.t_end is not None and r.t_end > r.t_start],
        dtype=float,
    )


def routing_overhead(records: Sequence[RequestRecord]) -> np.ndarray:
    """The gateway's own time per request (Server-Timing `route`: classify, queue, connect and write)."""
    return np.array([r.server_timing["route"] for r in ok(records) if "route" in r.server_timing], dtype=float)


@dataclass
class Windows:
    """System throughput: tokens per second in consecutive windows, each marked with its phase."""

    starts: np.ndarray
    """Window start, seconds after the run's first send."""
    tokens_per_s: np.ndarray
    phases: list[Phase]

    def steady(self) -> np.ndarray:
        """The windows of the steady state; in a run that never reached one, every window ("whole")."""
        return np.array([v for v, p in zip(self.tokens_per_s, self.phases) if p in ("steady", "whole")], dtype=float)

    @property
    def whole_run(self) -> bool:
        """The run never held its full load, so its "steady" mean is the whole run's."""
        return bool(self.phases) and self.phases[0] == "whole"


def steady_interval(records: Sequence[RequestRecord], mode: str = "closed") -> tuple[float, float] | None:
    """When the run held its full load: after ramp-up, before drain (None when it never did).

    Closed loop: from the moment every user has received its first token, to the moment the first
    user's last request ended (from then on fewer users are active). Open loop: from the first
    answer's end (the system holds requests in every stage), to the last scheduled send.
    """
    good = [r for r in records if r.t_end is not None]
    if not good:
        return None
    if mode == "open":
        start, end = min(r.t_end for r in good if r.t_end is not None), max(r.t_scheduled for r in good)
    else:
        by_user: dict[int, list[RequestRecord]] = {}
        for r in good:
            by_user.setdefault(r.user_id, []).append(r)
        firsts = [min(rs, key=lambda r: r.t_start) for rs in by_user.values()]
        start = max((r.t_first_token if r.t_first_token is not None else r.t_end or 0.0) for r in firsts)
        end = min(max(r.t_end or 0.0 for r in rs) for rs in by_user.values())
    return (start, end) if end > start else None


def system_throughput(records: Sequence[RequestRecord], window_s: float = 2.0, mode: str = "closed") -> Windows:
    """Tokens per second in consecutive windows of `window_s` from the first send to the last token.

    Tokens count at their chunk's arrival. A last, partial window is dropped, unless it is the only one
    (a run shorter than a window), which is divided by its own length. Each window is marked ramp-up,
    steady or drain by `steady_interval`; with no steady window at all (a run too short for its load)
    every window is marked "whole": its mean stands in for the steady one, and the report says so.
    """
    good = ok(records)
    times = np.fromiter(itertools.chain.from_iterable(r.chunk_times for r in good), dtype=float)
    counts = np.fromiter(itertools.chain.from_iterable(r.chunk_tokens for r in good), dtype=float)
    if not len(times) or not records:
        return Windows(np.array([]), np.array([]), [])
    start = min(r.t_start for r in records)
    end = float(times.max())
    edges = start + window_s * np.arange(int(np.ceil(max(end - start, 1e-9) / window_s)) + 1)
    if len(edges) == 2:
        edges[-1] = max(end, start + 1e-9)  # a run shorter than one window: divided by its own length
    elif end - edges[-2] < window_s - 1e-9:
        edges = edges[:-1]  # a last, partial window is dropped: a few tokens over a sliver would read as a spike
    tokens, _ = np.histogram(times, bins=edges, weights=counts)
    widths = np.diff(edges)
    return Windows(edges[:-1] - start, tokens / widths, _phases(edges, steady_interval(records, mode)))


def _phases(edges: np.ndarray, steady: tuple[float, float] | None) -> list[Phase]:
    """Each window's phase. A steady interval that holds no whole window (shorter than about two) is
    none: its windows are all "whole", as without one, or the run had no steady mean and no note."""
    phases: list[Phase] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if steady is None:
            phases.append("whole")
        elif lo >= steady[0] and hi <= steady[1]:
            phases.append("steady")
        else:
            phases.append("ramp-up" if lo < steady[0] else "drain")
    return phases if "steady" in phases else ["whole"] * len(phases)


def percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def std(values: np.ndarray) -> float | None:
    return float(np.std(values)) if len(values) else None


def goodput(records: Sequence[RequestRecord], ttft_target_s: float, tpot_target_s: float) -> float | None:
    """Share of all requests (failed ones included) that succeeded within both targets, TTFT counted
    from when each request was due: in an open loop, time a late send spent in the client counts."""
    if not records:
        return None
    good = 0
    for r in ok(records):
        first = ttft([r], from_schedule=True)  # a late send's wait is the user's too (MLPerf's way)
        per_token = tpot([r])
        if (not len(first) or first[0] <= ttft_target_s) and (not len(per_token) or per_token[0] <= tpot_target_s):
            good += 1
    return good / len(records)


@dataclass
class Summary:
    requests: int
    ok: int
    failed: int
    error_rate: float
    time_to_failure_median_s: float | None
    output_tokens: int
    chunk_tokens: int
    ttft_n: int
    ttft_mean_s: float | None
    ttft_median_s: float | None
    ttft_p99_s: float | None
    ttft_scheduled_median_s: float | None
    ttft_scheduled_p99_s: float | None
    """From when the request was due (open loop: the schedule's time), so a late send counts."""
    tpot_n: int
    tpot_mean_s: float | None
    tpot_median_s: float | None
    tpot_p99_s: float | None
    icl_median_s: float | None
    icl_p99_s: float | None
    user_throughput_mean: float | None
    user_throughput_std: float | None
    response_time_p50_s: float | None
    response_time_p90_s: float | None
    response_time_p99_s: float | None
    system_throughput_mean: float | None
    """Mean over the steady windows only."""
    system_throughput_peak: float | None
    steady_windows: int
    route_mean_s: float | None
    route_std_s: float | None
    route_p50_s: float | None
    route_p99_s: float | None
    goodput: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
