import numpy as np
import pytest

from expert_router.analysis import metrics


def rec(t_start, tokens, t_end=None, status="ok", route_ms=None):
    return {"t_start": t_start, "t_first_token": tokens[0] if tokens else None, "token_times": tokens,
            "t_end": t_end if t_end is not None else (tokens[-1] if tokens else t_start), "output_tokens": len(tokens),
            "status": status, "route_ms": route_ms}


RECORDS = [
    rec(0.0, [0.5, 0.7, 0.9, 1.1], t_end=1.2, route_ms=1.0),  # ttft .5, gaps .2 .2 .2, 4 tokens in 1.2 s
    rec(1.0, [1.1, 1.5], t_end=2.0, route_ms=3.0),           # ttft .1, gap .4, 2 tokens in 1.0 s
    rec(2.0, [2.3], t_end=2.4),                               # one token: TTFT, no TPOT
    rec(0.5, [], t_end=3.0, status="error"),                  # failed: only in the error rate
]


def test_ttft_and_tpot_by_hand():
    assert metrics.ttft(RECORDS) == pytest.approx([0.5, 0.1, 0.3])
    assert metrics.tpot(RECORDS) == pytest.approx([0.2, 0.4])
    assert sorted(metrics.inter_token_gaps(RECORDS)) == pytest.approx([0.2, 0.2, 0.2, 0.4])


def test_user_throughput_and_response_time():
    assert metrics.user_throughput(RECORDS) == pytest.approx([4 / 1.2, 2 / 1.0, 1 / 0.4])
    assert metrics.response_time(RECORDS) == pytest.approx([1.2, 1.0, 0.4])


def test_system_throughput_windows_include_empty_ones():
    records = [rec(0.0, [0.1, 0.2, 0.3]), rec(0.0, [4.5, 4.6], t_end=5.0)]
    starts, rates = metrics.system_throughput(records, window_s=2.0)
    assert starts.tolist() == [0.0, 2.0]  # the partial window [4, 6) is dropped...
    assert rates.tolist() == [1.5, 0.0]   # ...and the empty window [2, 4) counts as zero
    starts, rates = metrics.system_throughput(records, window_s=1.0)
    assert rates.tolist() == [3.0, 0.0, 0.0, 0.0]


def test_summary_and_goodput():
    summary = metrics.summarize(RECORDS, ttft_target_s=0.35, tpot_target_s=0.3)
    assert (summary.requests, summary.ok, summary.failed) == (4, 3, 1)
    assert summary.error_rate == 0.25 and summary.output_tokens == 7
    assert summary.ttft_median_s == pytest.approx(0.3)
    assert summary.tpot_mean_s == pytest.approx(0.3)
    assert summary.user_throughput_mean == pytest.approx(np.mean([4 / 1.2, 2.0, 2.5]))
    assert summary.route_ms_p50 == pytest.approx(2.0)
    # request 1: ttft .5 > .35; request 2: ttft .1, tpot .4 > .3; request 3: ttft .3, no gaps -> meets
    assert summary.goodput == pytest.approx(1 / 4)


def test_no_successful_requests():
    summary = metrics.summarize([rec(0.0, [], status="error")])
    assert summary.ok == 0 and summary.ttft_median_s is None and summary.system_throughput_mean is None


def test_an_answer_that_ends_at_once_is_a_success_without_ttft():
    empty = {"t_start": 0.0, "t_first_token": None, "token_times": [], "t_end": 0.2, "output_tokens": 1,
             "status": "ok", "route_ms": None}
    records = [*RECORDS, empty]
    summary = metrics.summarize(records)
    assert (summary.ok, summary.failed) == (4, 1)
    assert len(metrics.ttft(records)) == 3 and 0.2 in metrics.response_time(records)
