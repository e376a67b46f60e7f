import numpy as np
import pytest

from expert_router.analysis import metrics
from expert_router.analysis.digest import digest, pooled, summarize
from expert_router.errors import UserError
from expert_router.loadgen.records import RequestRecord


def rec(t_start, chunks, t_end=None, status="ok", route_s=None, tokens=None, user=0, t_scheduled=None):
    """A record whose chunks arrive at `chunks` carrying `tokens` tokens each (default one)."""
    tokens = tokens or [1] * len(chunks)
    firsts = [t for t, n in zip(chunks, tokens) if n > 0]
    return RequestRecord(
        request_id=0,
        workload_id=0,
        user_id=user,
        cluster_drawn=0,
        prompt_tokens=10,
        max_tokens=100,
        t_scheduled=t_start if t_scheduled is None else t_scheduled,
        t_start=t_start,
        t_first_token=firsts[0] if firsts else None,
        t_end=t_end if t_end is not None else (chunks[-1] if chunks else t_start),
        chunk_times=list(chunks),
        chunk_tokens=list(tokens),
        output_tokens=sum(tokens),
        status=status,
        server_timing={} if route_s is None else {"route": route_s},
    )


RECORDS = [
    rec(0.0, [0.5, 0.7, 0.9, 1.1], t_end=1.2, route_s=0.001),  # ttft .5, gaps .2 .2 .2, 4 tokens in 1.2 s
    rec(1.0, [1.1, 1.5], t_end=2.0, route_s=0.003),  # ttft .1, gap .4, 2 tokens in 1.0 s
    rec(2.0, [2.3], t_end=2.4),  # one token: TTFT, no TPOT
    rec(0.5, [], t_end=3.0, status="error"),  # failed: error rate and time to failure
]


def test_ttft_and_tpot_by_hand():
    assert metrics.ttft(RECORDS) == pytest.approx([0.5, 0.1, 0.3])
    assert metrics.tpot(RECORDS) == pytest.approx([0.2, 0.4])
    assert sorted(metrics.inter_chunk_latency(RECORDS)) == pytest.approx([0.2, 0.2, 0.2, 0.4])


def test_packed_chunks_count_tokens_not_chunks():
    # 4 tokens per chunk, chunks 40 ms apart: 16 tokens from 0.1 to 0.22 s -> TPOT 0.12 / 15 = 8 ms
    packed = rec(0.0, [0.1, 0.14, 0.18, 0.22], tokens=[4, 4, 4, 4], t_end=0.23)
    assert metrics.tpot([packed]) == pytest.approx([0.12 / 15])
    assert metrics.inter_chunk_latency([packed]) == pytest.approx([0.04, 0.04, 0.04])
    windows = metrics.system_throughput([packed], window_s=1.0)
    assert windows.tokens_per_s.sum() * 0.22 == pytest.approx(16)  # one partial window: first send to last token


def test_empty_text_chunks_are_kept_and_do_not_start_ttft():
    # a role-only chunk (0 tokens) first, then tokens; an end-of-sequence chunk with empty text and 1 token
    record = rec(0.0, [0.05, 0.3, 0.4, 0.5], tokens=[0, 1, 1, 1])
    assert metrics.ttft([record]) == pytest.approx([0.3])
    assert metrics.tpot([record]) == pytest.approx([0.1])


def test_user_throughput_response_time_and_failures():
    assert metrics.user_throughput(RECORDS) == pytest.approx([4 / 1.2, 2 / 1.0, 1 / 0.4])
    assert metrics.response_time(RECORDS) == pytest.approx([1.2, 1.0, 0.4])
    assert metrics.time_to_failure(RECORDS) == pytest.approx([2.5])


def test_open_loop_ttft_from_the_schedule_shows_client_slip():
    late = rec(1.0, [1.2, 1.3], t_scheduled=0.5)
    assert metrics.ttft([late]) == pytest.approx([0.2])
    assert metrics.ttft([late], from_schedule=True) == pytest.approx([0.7])
    # Goodput counts from when it was due: 0.2 s after its send, but 0.7 s after its time, misses 0.5 s.
    # (From the send, a client that fell behind its schedule hid its own delay: coordinated omission.)
    assert metrics.goodput([late], ttft_target_s=0.5, tpot_target_s=1.0) == 0.0
    summary = summarize([late], mode="open", ttft_target_s=0.5, tpot_target_s=1.0)
    assert summary.goodput == 0.0 and summary.ttft_scheduled_p99_s == pytest.approx(0.7)


def test_windows_are_marked_ramp_up_steady_and_drain():
    # two closed-loop users: each starts at 0; user 0's first token at 1.0, user 1's at 3.0;
    # user 0 ends last at 9.0, user 1 at 11.0 -> steady from 3.0 to 9.0
    records = [
        rec(0.0, list(np.arange(1.0, 5.0, 0.5)), t_end=5.0, user=0),
        rec(5.0, list(np.arange(5.5, 9.0, 0.5)), t_end=9.0, user=0),
        rec(0.0, list(np.arange(3.0, 11.0, 0.5)), t_end=11.0, user=1),
    ]
    assert metrics.steady_interval(records) == (3.0, 9.0)
    windows = metrics.system_throughput(records, window_s=2.0)
    assert windows.phases == ["ramp-up", "ramp-up", "steady", "steady", "drain"]  # the partial [10, 11) is dropped
    assert len(windows.steady()) == 2
    summary = summarize(records)
    assert summary.system_throughput_mean == pytest.approx(float(np.mean(windows.steady())))
    assert summary.system_throughput_mean > float(np.mean(windows.tokens_per_s))  # ramp and drain pull the mean down


def write_cell(results, records) -> None:
    """`records` as the results folder's one cell: configuration A, uniform mix, 2 users."""
    from expert_router.loadgen.records import RecordWriter

    run = results / "runs" / "A" / "uniform" / "u2" / "r0"
    run.mkdir(parents=True)
    writer = RecordWriter(run / "records.jsonl")
    for r in records:
        writer.write(r)
    writer.close()
    (run / "summary.json").write_text("{}")
    (run / "cell.json").write_text('{"configuration": "A", "mix": "uniform", "users": 2}')


def test_a_run_that_never_held_its_load_is_marked_whole_and_the_report_says_so(tmp_path):
    """With no steady interval every window was marked steady: the table's "steady mean" silently
    averaged ramp-up and drain."""
    from expert_router.analysis.report import write_report

    # user 0 is done (9.0) before user 1's first token (9.5): the load was never held
    records = [rec(0.0, list(np.arange(1.0, 9.0, 0.5)), t_end=9.0, user=0), rec(0.0, [9.5, 10.0, 12.5], user=1)]
    assert metrics.steady_interval(records) is None
    windows = metrics.system_throughput(records, window_s=2.0)
    assert set(windows.phases) == {"whole"} and windows.whole_run
    assert len(windows.steady()) == len(windows.tokens_per_s)  # the whole run's mean stands in
    write_cell(tmp_path / "results", records)
    report = write_report(tmp_path / "results")
    assert "No steady state in 1 cell(s) (A uniform u2)" in report.markdown.read_text()


def test_a_steady_state_shorter_than_a_window_counts_as_none():
    """It held no whole window: the steady mean was blank, Fig. 7 unshaded, and the report said nothing."""
    records = [rec(0.0, list(np.arange(0.5, 3.5, 0.25)), t_end=3.5, user=0), rec(0.0, [1.2, 2.0, 6.0], user=1)]
    assert metrics.steady_interval(records) == pytest.approx((1.2, 3.5))
    windows = metrics.system_throughput(records, window_s=2.0)
    assert windows.whole_run and len(windows.steady()) == len(windows.tokens_per_s) == 3
    assert summarize(records).system_throughput_mean is not None


def test_a_run_shorter_than_a_window_is_divided_by_its_own_length():
    windows = metrics.system_throughput([rec(0.0, [0.1, 0.2, 0.5])], window_s=2.0)
    assert windows.tokens_per_s.tolist() == pytest.approx([3 / 0.5])


def test_summary_goodput_and_routing_overhead():
    summary = summarize(RECORDS, ttft_target_s=0.35, tpot_target_s=0.3)
    assert (summary.requests, summary.ok, summary.failed) == (4, 3, 1)
    assert summary.error_rate == 0.25 and summary.output_tokens == 7 and summary.chunk_tokens == 7
    assert summary.ttft_median_s == pytest.approx(0.3) and summary.ttft_n == 3
    assert summary.tpot_mean_s == pytest.approx(0.3) and summary.tpot_n == 2
    assert summary.route_mean_s == pytest.approx(0.002) and summary.route_std_s == pytest.approx(0.001)
    # request 1: ttft .5 > .35; request 2: ttft .1, tpot .4 > .3; request 3: ttft .3, no gaps -> meets
    assert summary.goodput == pytest.approx(1 / 4)


def test_pooled_repetitions_average_throughput_instead_of_adding_it():
    run = [rec(0.0, list(np.arange(0.1, 4.0, 0.1)), t_end=4.0)]
    one = summarize(run)
    both = pooled([digest(run), digest(run)])
    assert both.system_throughput_mean == pytest.approx(one.system_throughput_mean)
    assert both.requests == 2


def test_no_successful_requests():
    summary = summarize([rec(0.0, [], status="error")])
    assert summary.ok == 0 and summary.ttft_median_s is None and summary.system_throughput_mean is None


def test_an_answer_that_ends_at_once_is_a_success_without_ttft():
    empty = rec(0.0, [], t_end=0.2)
    empty.output_tokens = 1
    records = [*RECORDS, empty]
    summary = summarize(records)
    assert (summary.ok, summary.failed) == (4, 1)
    assert len(metrics.ttft(records)) == 3 and 0.2 in metrics.response_time(records)


def test_old_records_are_read_as_one_token_per_chunk():
    old = {
        "request_id": 1,
        "workload_id": 1,
        "user_id": 0,
        "cluster_drawn": 0,
        "prompt_tokens": 3,
        "max_tokens": 9,
        "t_scheduled": 0.0,
        "t_start": 0.0,
        "t_first_token": 0.1,
        "t_end": 0.3,
        "token_times": [0.1, 0.2, 0.3],
        "output_tokens": 3,
        "chunks": 3,
        "route_ms": 2.0,
        "status": "ok",
    }
    record = RequestRecord.from_dict(old)
    assert record.chunk_tokens == [1, 1, 1] and record.server_timing == {"route": 0.002}


def test_routing_overhead_is_the_ttft_difference_at_equal_load():
    from expert_router.analysis.overhead import overhead_rows
    from expert_router.analysis.results import Cell, CellKey

    direct = [rec(0.0, [0.10, 0.2]), rec(0.0, [0.12, 0.2]), rec(0.0, [0.14, 0.2])]
    routed = [
        rec(0.0, [0.11, 0.2], route_s=0.001),
        rec(0.0, [0.13, 0.2], route_s=0.001),
        rec(0.0, [0.15, 0.2], route_s=0.001),
    ]
    cells = {
        CellKey("router", "uniform", 4): Cell.of_records(CellKey("router", "uniform", 4), [routed]),
        CellKey("direct", "uniform", 4): Cell.of_records(CellKey("direct", "uniform", 4), [direct]),
    }
    [row] = overhead_rows(cells, {"direct": "router"})
    assert row["ttft_diff_mean_ms"] == pytest.approx(10.0)
    assert row["ttft_diff_p50_ms"] == pytest.approx(10.0)
    assert row["ttft_diff_std_ms"] == pytest.approx(np.sqrt(2 * np.var([0.10, 0.12, 0.14])) * 1000)
    assert row["gateway_mean_ms"] == pytest.approx(1.0)
    assert overhead_rows(cells, {}) == []


def test_a_report_asked_for_fig7_panels_at_unmeasured_user_counts_says_so(tmp_path):
    """Each unmeasured count had been drawn as an empty panel, without a word."""
    from expert_router.analysis.report import write_report
    from expert_router.errors import UserError

    write_cell(tmp_path / "results", RECORDS)
    with pytest.raises(UserError, match=r"--fig7-users \[1000\]: no cells at those user counts; measured: \[2\]"):
        write_report(tmp_path / "results", fig7_users=[2, 1000])
    assert write_report(tmp_path / "results", fig7_users=[2]).figures


@pytest.mark.parametrize(
    "name, content, said",
    [
        ("summary.json", b"{bad", "summary.json is damaged"),
        ("summary.json", b"\xff\xfe", "summary.json is damaged"),
        ("cell.json", b"{bad", "cell.json is damaged"),
        ("cell.json", b'{"configuration": "A", "mix": "uniform", "users": "x"}', "cell.json is damaged"),
        ("cell.json", b'{"configuration": "A"}', "cell.json is damaged"),
        ("../../../../../settings.json", b"{bad", "settings.json is damaged"),
    ],
)
def test_a_damaged_results_file_is_named_not_a_traceback(tmp_path, capsys, name, content, said):
    """Each was a JSONDecodeError, UnicodeDecodeError or ValueError traceback from `expert-router report`."""
    from expert_router.cli import main

    records = [rec(0.0, [0.5, 1.0, 1.5], user=0), rec(0.2, [0.7, 1.2], user=1)]
    write_cell(tmp_path / "results", records)
    run = tmp_path / "results" / "runs" / "A" / "uniform" / "u2" / "r0"
    (run / name).write_bytes(content)
    assert main(["report", str(tmp_path / "results")]) == 2
    assert said in capsys.readouterr().err.replace("\n", "")  # the console wraps long lines


def test_a_damaged_digest_is_made_again_from_the_records(tmp_path):
    """numpy's ValueError traceback; the digest is only a summary of the records beside it."""
    from expert_router.analysis.report import write_report

    records = [rec(0.0, [0.5, 1.0, 1.5], user=0), rec(0.2, [0.7, 1.2], user=1)]
    write_cell(tmp_path / "results", records)
    run = tmp_path / "results" / "runs" / "A" / "uniform" / "u2" / "r0"
    (run / "digest.npz").write_bytes(b"junk that is not a digest")
    assert "A" in write_report(tmp_path / "results").markdown.read_text()
    (run / "records.jsonl").unlink()  # as `simulate` leaves a cell: its digest and summary only
    (run / "summary.json").write_text('{"meta": {"settings": {"mode": "closed"}}}')
    with pytest.raises(UserError, match="digest.npz is damaged"):
        write_report(tmp_path / "results")
