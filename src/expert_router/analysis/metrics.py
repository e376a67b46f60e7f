"""The paper's metrics from request records (see the README's "Metrics" for the definitions).

Only successful requests count towards latency and throughput figures; failed ones count towards
the error rate. A request with a single token has a TTFT but no TPOT (there is no gap to average); an
answer that ended at once (end-of-sequence first, no text) is a success with a response time but no TTFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def ok(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok"]


def with_tokens(records: Sequence[dict]) -> list[dict]:
    return [r for r in ok(records) if r.get("t_first_token") is not None]


def ttft(records: Sequence[dict]) -> np.ndarray:
    """Seconds from sending a request to its first token."""
    return np.array([r["t_first_token"] - r["t_start"] for r in with_tokens(records)], dtype=float)


def tpot(records: Sequence[dict]) -> np.ndarray:
    """Per request, the mean gap between consecutive tokens (requests with at least two tokens)."""
    values = [float(np.mean(np.diff(r["token_times"]))) for r in with_tokens(records) if len(r["token_times"]) >= 2]
    return np.array(values, dtype=float)


def inter_token_gaps(records: Sequence[dict]) -> np.ndarray:
    """Every gap between consecutive tokens, pooled over requests (ITL)."""
    gaps = [np.diff(r["token_times"]) for r in with_tokens(records) if len(r["token_times"]) >= 2]
    return np.concatenate(gaps) if gaps else np.array([], dtype=float)


def response_time(records: Sequence[dict]) -> np.ndarray:
    """Seconds from sending a request to its last byte."""
    return np.array([r["t_end"] - r["t_start"] for r in ok(records)], dtype=float)


def user_throughput(records: Sequence[dict]) -> np.ndarray:
    """Per request, output tokens / (t_end - t_start): the speed one user experiences."""
    return np.array([r["output_tokens"] / (r["t_end"] - r["t_start"]) for r in ok(records)
                     if r["t_end"] > r["t_start"]], dtype=float)


def system_throughput(records: Sequence[dict], window_s: float = 2.0, start: float | None = None,
                      end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokens per second in consecutive windows of `window_s`: (window starts, tokens/s).

    Windows run from `start` (default: the first request's send time) to `end` (default: the last
    token); a window with no tokens counts as zero. The last, partial window is dropped unless it is
    the only one.
    """
    times = [t for r in ok(records) for t in r["token_times"]]
    if not times:
        return np.array([]), np.array([])
    start = min(r["t_start"] for r in records) if start is None else start
    end = max(times) if end is None else end
    n_windows = max(1, int((end - start) // window_s))
    edges = start + window_s * np.arange(n_windows + 1)
    counts, _ = np.histogram(times, bins=edges)
    return edges[:-1] - start, counts / window_s


def percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def std(values: np.ndarray) -> float | None:
    return float(np.std(values)) if len(values) else None


@dataclass
class Summary:
    requests: int
    ok: int
    failed: int
    error_rate: float
    output_tokens: int
    ttft_mean_s: float | None
    ttft_median_s: float | None
    ttft_p99_s: float | None
    tpot_mean_s: float | None
    tpot_median_s: float | None
    user_throughput_mean: float | None
    user_throughput_std: float | None
    response_time_p50_s: float | None
    response_time_p90_s: float | None
    response_time_p99_s: float | None
    system_throughput_mean: float | None
    route_ms_p50: float | None
    route_ms_p99: float | None
    goodput: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(records: Sequence[dict], window_s: float = 2.0, ttft_target_s: float | None = None,
              tpot_target_s: float | None = None) -> Summary:
    good = ok(records)
    rt = response_time(records)
    _, system = system_throughput(records, window_s)
    routes = np.array([r["route_ms"] for r in good if r.get("route_ms") is not None], dtype=float)
    goodput = None
    if good and (ttft_target_s is not None or tpot_target_s is not None):
        def meets(r: dict) -> bool:
            first = (r["t_first_token"] if r["t_first_token"] is not None else r["t_end"]) - r["t_start"]
            gaps = np.diff(r["token_times"])
            return ((ttft_target_s is None or first <= ttft_target_s)
                    and (tpot_target_s is None or not len(gaps) or float(np.mean(gaps)) <= tpot_target_s))
        goodput = sum(meets(r) for r in good) / len(records)
    ttfts, tpots, users = ttft(records), tpot(records), user_throughput(records)
    return Summary(
        requests=len(records), ok=len(good), failed=len(records) - len(good),
        error_rate=(len(records) - len(good)) / len(records) if records else 0.0,
        output_tokens=int(sum(r["output_tokens"] for r in good)),
        ttft_mean_s=mean(ttfts), ttft_median_s=percentile(ttfts, 50), ttft_p99_s=percentile(ttfts, 99),
        tpot_mean_s=mean(tpots), tpot_median_s=percentile(tpots, 50),
        user_throughput_mean=mean(users), user_throughput_std=std(users),
        response_time_p50_s=percentile(rt, 50), response_time_p90_s=percentile(rt, 90),
        response_time_p99_s=percentile(rt, 99),
        system_throughput_mean=mean(system), route_ms_p50=percentile(routes, 50), route_ms_p99=percentile(routes, 99),
        goodput=goodput,
    )
