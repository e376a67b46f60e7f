"""One run reduced to what the report reads: a few numbers per request and the run's throughput windows.

A full virtual sweep holds hundreds of millions of token times; the report needs none of them one by
one. Every per-request metric is one number per request (TTFT, TPOT, response time, user throughput,
the gateway's time) and system throughput is one number per 2-second window, so a run is reduced to
those as it is read (or as `expert-router simulate` writes it: `digest.npz` beside `records.jsonl`),
and its records are dropped. The numbers are the metrics module's own definitions, in record order
(a test holds them equal to `metrics.ttft` and the others over the records).

This is the one way from records to a `metrics.Summary`: one run's (`summarize`, what `load` and
`simulate` write to `summary.json`) and a cell's repetitions (`pooled`, what the report reads).
Not kept in a digest: the gaps between tokens (`icl_*` of a Summary), which `summarize` reads from the
records themselves and only each run's `summary.json` reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expert_router.analysis import metrics
from expert_router.loadgen.records import RequestRecord

WINDOW_S = 2.0
"""System-throughput window of the report (the paper's 2 seconds)."""
FORMAT = 1
PER_REQUEST = ("ttft", "ttft_scheduled", "tpot", "response", "user_throughput", "route")
"""Arrays with one value per successful request, NaN where the metric does not apply to it."""


@dataclass
class RunDigest:
    requests: int
    output_tokens: int
    chunk_tokens: int
    prompt_tokens: np.ndarray
    """Every request's, failed ones included (Fig. 2)."""
    failure: np.ndarray
    """Time to failure of every failed request that ended."""
    ttft: np.ndarray
    ttft_scheduled: np.ndarray
    tpot: np.ndarray
    response: np.ndarray
    user_throughput: np.ndarray
    route: np.ndarray
    windows: metrics.Windows

    @property
    def ok(self) -> int:
        return len(self.ttft)

    def values(self, name: str) -> np.ndarray:
        """A per-request metric without the requests it does not apply to (what `metrics.<name>` returns)."""
        values: np.ndarray = getattr(self, name)
        return values[~np.isnan(values)]


def digest(records: Sequence[RequestRecord], mode: str = "closed", window_s: float = WINDOW_S) -> RunDigest:
    """Reduce one run's records."""
    good = metrics.ok(records)
    columns = {name: np.full(len(good), np.nan) for name in PER_REQUEST}
    for i, r in enumerate(good):
        _fill(columns, i, r)
    return RunDigest(
        requests=len(records),
        output_tokens=int(sum(r.output_tokens for r in good)),
        chunk_tokens=int(sum(sum(r.chunk_tokens) for r in good)),
        prompt_tokens=np.array([r.prompt_tokens for r in records], dtype=np.int64),
        failure=metrics.time_to_failure(records),
        windows=metrics.system_throughput(records, window_s, mode),
        **columns,
    )


def _fill(columns: dict[str, np.ndarray], i: int, r: RequestRecord) -> None:
    """Row i from one successful record: the definitions of `metrics.ttft`, `tpot`, `response_time`,
    `user_throughput` and `routing_overhead`, one record at a time (a test holds them equal)."""
    if r.t_first_token is not None:
        columns["ttft"][i] = r.t_first_token - r.t_start
        columns["ttft_scheduled"][i] = r.t_first_token - r.t_scheduled
        times = r.token_times()
        tokens = sum(r.chunk_tokens)
        if tokens >= 2 and times:
            columns["tpot"][i] = (times[-1] - r.t_first_token) / (tokens - 1)
    if r.t_end is not None:
        columns["response"][i] = r.t_end - r.t_start
        if r.t_end > r.t_start:
            columns["user_throughput"][i] = r.output_tokens / (r.t_end - r.t_start)
    if "route" in r.server_timing:
        columns["route"][i] = r.server_timing["route"]


def pooled(runs: Sequence[RunDigest], ttft_target_s: float = 2.0, tpot_target_s: float = 0.2) -> metrics.Summary:
    """Repetitions of one cell: per-request metrics over every run's requests; system throughput (a time
    series per run, which do not add up) the mean of the runs' steady means, and the highest peak.
    Inter-chunk latency is not kept (None)."""

    def pool(name: str) -> np.ndarray:
        return np.concatenate([run.values(name) for run in runs]) if runs else np.array([], dtype=float)

    requests, good = sum(run.requests for run in runs), sum(run.ok for run in runs)
    ttfts, tpots, rt, routes = pool("ttft"), pool("tpot"), pool("response"), pool("route")
    users = pool("user_throughput")
    failures = np.concatenate([run.failure for run in runs]) if runs else np.array([], dtype=float)
    means = [float(np.mean(s)) for s in (run.windows.steady() for run in runs if run.requests) if len(s)]
    peaks = [float(run.windows.tokens_per_s.max()) for run in runs if run.requests and len(run.windows.tokens_per_s)]
    return metrics.Summary(
        requests=requests,
        ok=good,
        failed=requests - good,
        error_rate=(requests - good) / requests if requests else 0.0,
        time_to_failure_median_s=metrics.percentile(failures, 50),
        output_tokens=sum(run.output_tokens for run in runs),
        chunk_tokens=sum(run.chunk_tokens for run in runs),
        ttft_n=len(ttfts),
        ttft_mean_s=metrics.mean(ttfts),
        ttft_median_s=metrics.percentile(ttfts, 50),
        ttft_p99_s=metrics.percentile(ttfts, 99),
        ttft_scheduled_median_s=metrics.percentile(pool("ttft_scheduled"), 50),
        ttft_scheduled_p99_s=metrics.percentile(pool("ttft_scheduled"), 99),
        tpot_n=len(tpots),
        tpot_mean_s=metrics.mean(tpots),
        tpot_median_s=metrics.percentile(tpots, 50),
        tpot_p99_s=metrics.percentile(tpots, 99),
        icl_median_s=None,
        icl_p99_s=None,
        user_throughput_mean=metrics.mean(users),
        user_throughput_std=metrics.std(users),
        response_time_p50_s=metrics.percentile(rt, 50),
        response_time_p90_s=metrics.percentile(rt, 90),
        response_time_p99_s=metrics.percentile(rt, 99),
        system_throughput_mean=float(np.mean(means)) if means else None,
        system_throughput_peak=max(peaks) if peaks else None,
        steady_windows=sum(len(run.windows.steady()) for run in runs if run.requests),
        route_mean_s=metrics.mean(routes),
        route_std_s=metrics.std(routes),
        route_p50_s=metrics.percentile(routes, 50),
        route_p99_s=metrics.percentile(routes, 99),
        goodput=_goodput(runs, requests, ttft_target_s, tpot_target_s),
    )


def summarize(
    records: Sequence[RequestRecord],
    window_s: float = WINDOW_S,
    mode: str = "closed",
    ttft_target_s: float = 2.0,
    tpot_target_s: float = 0.2,
) -> metrics.Summary:
    """Every metric of one run. Pool runs with `pooled` instead: throughputs of runs do not add up."""
    return summary_of(digest(records, mode, window_s), records, ttft_target_s, tpot_target_s)


def summary_of(
    run: RunDigest, records: Sequence[RequestRecord], ttft_target_s: float = 2.0, tpot_target_s: float = 0.2
) -> metrics.Summary:
    """One run's Summary from its digest, with the gaps between tokens read from its records (for a
    caller that keeps the digest too)."""
    summary = pooled([run], ttft_target_s, tpot_target_s)
    icl = metrics.inter_chunk_latency(records)
    summary.icl_median_s, summary.icl_p99_s = metrics.percentile(icl, 50), metrics.percentile(icl, 99)
    return summary


def _goodput(runs: Sequence[RunDigest], requests: int, ttft_target_s: float, tpot_target_s: float) -> float | None:
    """`metrics.goodput`: successful requests within both targets, TTFT from when each was due (a metric
    that does not apply is met)."""
    if not requests:
        return None
    good = 0
    for run in runs:
        with np.errstate(invalid="ignore"):
            fast = (np.isnan(run.ttft_scheduled) | (run.ttft_scheduled <= ttft_target_s)) & (
                np.isnan(run.tpot) | (run.tpot <= tpot_target_s)
            )
        good += int(fast.sum())
    return good / requests


def save(run: RunDigest, path: Path) -> None:
    """As plain arrays (`np.load` without pickle reads them back)."""
    arrays = {name: getattr(run, name) for name in ("prompt_tokens", "failure", *PER_REQUEST)}
    counts = np.array([FORMAT, run.requests, run.output_tokens, run.chunk_tokens], dtype=np.int64)
    with open(path, "wb") as f:
        np.savez(
            f,
            counts=counts,
            window_starts=run.windows.starts,
            window_tokens_per_s=run.windows.tokens_per_s,
            window_phases=np.array(run.windows.phases, dtype="<U8"),
            **arrays,
        )


def load(path: Path) -> RunDigest | None:
    """A saved digest, or None when the file is of another format (the caller reads the records)."""
    with np.load(path, allow_pickle=False) as data:
        counts = data["counts"]
        if int(counts[0]) != FORMAT:
            return None
        windows = metrics.Windows(
            data["window_starts"],
            data["window_tokens_per_s"],
            [str(p) for p in data["window_phases"]],  # type: ignore[misc]
        )
        arrays = {name: data[name] for name in ("prompt_tokens", "failure", *PER_REQUEST)}
        return RunDigest(int(counts[1]), int(counts[2]), int(counts[3]), windows=windows, **arrays)
