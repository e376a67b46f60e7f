"""A run's digest: the report's numbers from it are exactly the metrics' definitions over the records."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from test_metrics import RECORDS, rec

from expert_router.analysis import digest, metrics
from expert_router.analysis.results import Cell, CellKey, read_digest
from expert_router.loadgen.records import RecordWriter


def runs() -> list[list]:
    rng = np.random.default_rng(1)
    second = []
    for user in range(6):  # closed loop: back-to-back requests, token gaps drawn
        t = 0.0
        for k in range(8):
            times = list(t + 0.05 + np.cumsum(rng.uniform(0.01, 0.2, int(rng.integers(1, 9)))))
            packed = [0, *[1] * (len(times) - 1)] if k == 3 else None  # an empty first chunk
            second.append(rec(t, times, t_end=times[-1] + 0.01, user=user, route_s=0.002 * k or None, tokens=packed))
            t = times[-1] + 0.01
    empty = rec(4.0, [], t_end=4.2)  # ended at once: a success without TTFT
    empty.output_tokens = 1
    return [[*RECORDS, empty], second]


def test_pooled_digests_are_the_metrics_over_the_pooled_records():
    """Per-request metrics over every repetition's requests, bit for bit; throughput: the mean of the
    runs' steady means (repetitions' throughputs do not add up)."""
    made = runs()
    records = [r for run in made for r in run]
    s = digest.pooled([digest.digest(run, window_s=0.5) for run in made])  # short windows: steady ones
    ttfts, tpots, rt = metrics.ttft(records), metrics.tpot(records), metrics.response_time(records)
    assert (s.requests, s.ok, s.failed, s.ttft_n, s.tpot_n) == (
        len(records),
        len(metrics.ok(records)),
        1,
        len(ttfts),
        len(tpots),
    )
    assert (s.ttft_median_s, s.ttft_p99_s, s.tpot_mean_s, s.tpot_p99_s) == (
        metrics.percentile(ttfts, 50),
        metrics.percentile(ttfts, 99),
        metrics.mean(tpots),
        metrics.percentile(tpots, 99),
    )
    assert (s.response_time_p90_s, s.user_throughput_std, s.route_mean_s) == (
        metrics.percentile(rt, 90),
        metrics.std(metrics.user_throughput(records)),
        metrics.mean(metrics.routing_overhead(records)),
    )
    steady = [metrics.system_throughput(run, 0.5).steady() for run in made]
    steady_means = [float(np.mean(w)) for w in steady if len(w)]
    assert steady_means
    assert s.system_throughput_mean == pytest.approx(float(np.mean(steady_means)))
    assert s.goodput == pytest.approx(metrics.goodput(records, 2.0, 0.2))
    assert s.icl_median_s is None


def test_a_digest_reads_back_as_written(tmp_path: Path):
    run = digest.digest(runs()[1])
    digest.save(run, tmp_path / "digest.npz")
    back = digest.load(tmp_path / "digest.npz")
    assert back is not None and back.requests == run.requests and back.windows.phases == run.windows.phases
    for name in ("prompt_tokens", "failure", *digest.PER_REQUEST):
        np.testing.assert_array_equal(getattr(back, name), getattr(run, name))
    np.testing.assert_array_equal(back.windows.tokens_per_s, run.windows.tokens_per_s)


def test_a_run_without_a_digest_is_digested_from_its_records(tmp_path: Path):
    writer = RecordWriter(tmp_path / "records.jsonl")
    writer.write_meta({"settings": {"mode": "closed"}})
    for record in runs()[1]:
        writer.write(record)
    writer.close()
    from_records = read_digest(tmp_path, "closed")
    digest.save(from_records, tmp_path / "digest.npz")
    saved = read_digest(tmp_path, "closed")
    assert from_records.requests == saved.requests == 48
    np.testing.assert_array_equal(from_records.tpot, saved.tpot)


def test_cell_values_pool_repetitions_in_record_order():
    made = runs()
    cell = Cell.of_records(CellKey("E", "uniform", 6), made)
    pooled_records = [r for run in made for r in run]
    np.testing.assert_array_equal(cell.values("ttft"), metrics.ttft(pooled_records))
    np.testing.assert_array_equal(cell.values("tpot"), metrics.tpot(pooled_records))
    np.testing.assert_array_equal(cell.values("response"), metrics.response_time(pooled_records))
    np.testing.assert_array_equal(cell.values("user_throughput"), metrics.user_throughput(pooled_records))
    np.testing.assert_array_equal(cell.values("route"), metrics.routing_overhead(pooled_records))
    assert (cell.requests, cell.failed) == (len(pooled_records), 1)
    assert digest.pooled(cell.runs).goodput == pytest.approx(metrics.goodput(pooled_records, 2.0, 0.2))


def test_one_runs_summary_adds_the_gaps_between_tokens():
    for run in runs():
        made = digest.digest(run)
        summary = digest.summary_of(made, run)
        assert asdict(summary) == {**asdict(digest.pooled([made])), "icl_median_s": summary.icl_median_s,
                                   "icl_p99_s": summary.icl_p99_s}  # fmt: skip
        assert summary.icl_p99_s == metrics.percentile(metrics.inter_chunk_latency(run), 99) is not None
        assert asdict(digest.summarize(run)) == asdict(summary)
