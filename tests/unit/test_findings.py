"""The paper's findings and the capacity table, from hand-made records and hand-made cell statistics."""

from __future__ import annotations

from dataclasses import replace

import pytest

from expert_router.analysis import cell_table as t
from expert_router.analysis import digest
from expert_router.analysis import findings as f
from expert_router.analysis.results import Cell, CellKey
from expert_router.loadgen.records import RequestRecord


def record(user: int, start: float, ttft: float, tpot: float, tokens: int) -> RequestRecord:
    times = [start + ttft + i * tpot for i in range(tokens)]
    return RequestRecord(
        request_id=user,
        workload_id=0,
        user_id=user,
        cluster_drawn=0,
        prompt_tokens=10,
        max_tokens=tokens,
        t_scheduled=start,
        t_start=start,
        t_first_token=times[0],
        t_end=times[-1],
        chunk_times=times,
        chunk_tokens=[1] * tokens,
        output_tokens=tokens,
        finish_reason="stop",
        http_status=200,
    )


def cell(configuration: str, users: int, ttft: float, tpot: float, mix: str = "uniform") -> Cell:
    runs = [[record(u, 0.0, ttft * (1 + u / 10), tpot, 11) for u in range(users)]]
    return Cell.of_records(CellKey(configuration, mix, users), runs)


def stats(
    ttft: float = 0.1,
    tpot: float = 0.02,
    system: float = 1000.0,
    peak: float | None = None,
    user: float = 40.0,
    response: float = 10.0,
) -> t.Stats:
    return t.Stats(ttft, ttft / 2, ttft * 2, tpot, tpot / 10, tpot * 1.5, response, user, system, peak or system * 1.2)


# What the paper reports, as cell statistics: E fastest per token and per user, C best at high load,
# baselines first to the first token, D slow everywhere.
PAPER = {
    "A": stats(ttft=0.20, tpot=0.030, system=3000, user=30, response=30),
    "B": stats(ttft=0.15, tpot=0.025, system=3500, user=35, response=25),
    "C": stats(ttft=0.10, tpot=0.028, system=5000, user=33, response=20),
    "D": stats(ttft=0.60, tpot=0.050, system=1500, user=20, response=40),
    "E": stats(ttft=0.55, tpot=0.015, system=5000, user=60, response=22),
}


def paper_table(levels: tuple[int, ...] = (1, 200, 600, 1000)) -> t.Table:
    table = {}
    for mix in ("uniform", "normal"):
        for users in levels:
            for c, s in PAPER.items():
                if c == "E" and users == 1000:
                    s = replace(s, system_mean=3000, user_throughput=25)  # E falls behind C at 1,000
                table[CellKey(c, mix, users)] = s
    return t.Table(table)


def test_cell_stats_read_from_records_match_hand_computation():
    s = t.cell_stats(cell("E", 4, ttft=0.1, tpot=0.02))
    # users 0..3 get TTFT 0.1, 0.11, 0.12, 0.13; every TPOT is exactly 20 ms
    assert s.ttft_min == pytest.approx(0.1) and s.ttft_median == pytest.approx(0.115)
    assert s.tpot_median == pytest.approx(0.02) and s.tpot_std == pytest.approx(0.0, abs=1e-12)
    assert s.user_throughput == pytest.approx(sum(11 / (0.1 * (1 + u / 10) + 0.2) for u in range(4)) / 4)


def test_every_finding_holds_on_the_papers_numbers():
    found = {check.__name__: check(paper_table()) for check in f.FINDINGS}
    assert {name: x.holds for name, x in found.items()} == {name: True for name in found}
    assert "E 15" in found["tp_communication"].numbers  # the numbers behind it: E's TPOT in ms at 1 user


def test_a_finding_that_fails_says_why_and_missing_cells_say_so():
    table = paper_table()
    table.stats[CellKey("D", "uniform", 600)] = replace(PAPER["D"], system_mean=2500)
    by_claim = {x.claim: x for x in f.findings(table)}
    d = by_claim["D stays under 2,000 tokens/s mean system throughput, with the lowest peak"]
    assert d.holds is False and "2,500" in d.numbers and d.why
    empty = f.findings(t.Table({}))
    assert all(x.holds is None and not x.why for x in empty)


def test_e_falling_behind_is_required_at_1000_users():
    table = paper_table()
    table.stats[CellKey("E", "normal", 1000)] = PAPER["E"]  # E still matches C at 1,000
    assert f.e_matches_c(table).holds is False


def test_capacity_is_the_last_level_before_the_first_miss():
    table = paper_table()
    table.stats[CellKey("A", "uniform", 600)] = replace(PAPER["A"], ttft_p99=2.5)
    table.stats[CellKey("A", "uniform", 1000)] = PAPER["A"]  # met again, but 600 already failed
    rows = {(r["configuration"], r["mix"]): r for r in f.capacity(table)}
    assert rows["A", "uniform"]["users"] == 200 and "u600" in str(rows["A", "uniform"]["first_over"])
    assert rows["A", "normal"]["users"] == 1000
    strict = {(r["configuration"], r["mix"]): r["users"] for r in f.capacity(table, f.Targets(tpot_p99_s=0.03))}
    assert strict["E", "uniform"] == 1000 and strict["D", "uniform"] == 0  # D's p99 TPOT is 75 ms


def test_a_level_that_fails_requests_or_was_not_measured_well_is_not_served():
    """Latencies are of answered requests only: a configuration that turned 40% of its users away (429s)
    kept a low p99 and was credited with every level."""
    table = paper_table()
    table.stats[CellKey("E", "uniform", 1000)] = replace(table.stats[CellKey("E", "uniform", 1000)], error_rate=0.4)
    table.stats[CellKey("C", "uniform", 600)] = replace(PAPER["C"], valid=False)
    rows = {(r["configuration"], r["mix"]): r for r in f.capacity(table)}
    assert rows["E", "uniform"]["users"] == 600 and "40% of requests failed" in str(rows["E", "uniform"]["first_over"])
    assert rows["C", "uniform"]["users"] == 200 and "not measured well" in str(rows["C", "uniform"]["first_over"])
    assert rows["E", "normal"]["users"] == 1000


def test_a_configuration_that_answered_nothing_does_not_win_a_ranking():
    """min() over NaN kept the first item: an all-failed A became "lowest TTFT" and "lowest peak"."""
    nothing = replace(PAPER["A"], ttft_median=float("nan"), ttft_min=float("nan"), system_peak=float("nan"),
                      system_mean=float("nan"), user_throughput=float("nan"))  # fmt: skip
    table = paper_table()
    for key in list(table.stats):
        if key.configuration == "A":
            table.stats[key] = nothing
    found = {check.__name__: check(table) for check in f.FINDINGS}
    assert found["highest_user_throughput"].holds is True  # E still leads among those that answered
    assert found["d_under_2000"].holds is True  # D still has the lowest peak of those measured
    # And the winner itself answering nothing is no win.
    for key in list(table.stats):
        if key.configuration == "E":
            table.stats[key] = replace(PAPER["E"], tpot_median=float("nan"))
    assert f.lowest_tpot(table).holds is False


def test_sections_from_records_for_the_report():
    cells = {}
    for c, tpot in zip(t.CONFIGURATIONS, (0.03, 0.025, 0.028, 0.05, 0.015)):
        for users in (1, 4):
            made = cell(c, users, ttft=0.1, tpot=tpot)
            cells[made.key] = made
    findings_section, capacity_section = f.findings_sections(cells)
    assert findings_section.rows[0]["claim"].startswith("E has the lowest TPOT")
    assert findings_section.rows[0]["holds"] == "yes"
    assert [r["users"] for r in capacity_section.rows] == [4] * 5


def test_cell_stats_use_the_reports_pooled_definitions():
    first = [record(u, 0.0, 0.2 * (1 + u / 10), 0.03, 11) for u in range(5)]
    # a second repetition: 5 users, 10 requests each, one a second (steady windows from 2 s to 8 s)
    second = [record(u, k, 0.1, 0.02 + u / 1000, 30) for u in range(5) for k in range(10)]
    made = Cell.of_records(CellKey("C", "uniform", 5), [first, second])
    s, pooled = t.cell_stats(made), digest.pooled(made.runs)
    assert (s.ttft_median, s.ttft_p99, s.tpot_median, s.tpot_p99) == pytest.approx(
        (pooled.ttft_median_s, pooled.ttft_p99_s, pooled.tpot_median_s, pooled.tpot_p99_s)
    )
    assert (s.response_p99, s.user_throughput) == pytest.approx(
        (pooled.response_time_p99_s, pooled.user_throughput_mean)
    )
    assert (s.system_mean, s.system_peak) == pytest.approx(
        (pooled.system_throughput_mean, pooled.system_throughput_peak)
    )


def test_a_cell_that_was_not_measured_is_no_evidence_against_a_claim():
    """A nan mean read as "E does not match C" and "D is not under 2,000", each with the model's excuse;
    and where a nan gap sat in the list decided whether the mixes "differ little"."""
    nan = float("nan")
    table = paper_table()
    table.stats[CellKey("C", "uniform", 200)] = replace(PAPER["C"], system_mean=nan)
    assert f.e_matches_c(table).holds is True  # the other cells still say so
    for key in list(table.stats):
        if key.configuration == "D":
            table.stats[key] = replace(PAPER["D"], system_mean=nan, system_peak=nan)
    assert f.d_under_2000(table).holds is None
    for first in (True, False):
        mixed = paper_table()
        users = 1 if first else 1000
        mixed.stats[CellKey("E", "normal", users)] = replace(
            mixed.stats[CellKey("E", "normal", users)], user_throughput=nan
        )
        found = f.mixes_differ_little(mixed)
        assert found.holds is True and "nan" not in found.numbers


def test_claims_about_high_load_need_high_load_cells():
    """A sweep to 25 users had "C lowest TTFT at >= 600 users" judged at 25 users."""
    table = paper_table(levels=(1, 10, 25))
    assert f.lowest_ttft_high_load(table).holds is None and f.lowest_p99_response(table).holds is None


def test_ties_count_for_the_claimed_winner_and_counts_are_not_called_milliseconds():
    table = paper_table()
    for key in list(table.stats):
        if key.configuration == "A":
            table.stats[key] = replace(table.stats[key], system_peak=PAPER["D"].system_peak)
    assert f.d_under_2000(table).holds is True
    assert f.lowest_tpot(table).numbers.startswith("E lowest median in 8/8 cells, lowest std in 8/8 cells")


def test_a_configuration_that_failed_many_requests_does_not_win_a_ranking():
    """Latencies are of answered requests only: D turning 40% of its users away at high load had the
    lowest median TTFT of the few it answered, and took the ranking from C."""
    table = paper_table()
    fast_but_failing = replace(PAPER["D"], ttft_median=0.01, response_p99=1.0, error_rate=0.4)
    table.stats[CellKey("D", "uniform", 1000)] = fast_but_failing
    found = f.lowest_ttft_high_load(table)
    assert found.holds is True and "D 10 (40% failed)" in found.numbers
    assert f.lowest_p99_response(table).holds is True
    # The claimed winner failing as much wins nothing either, however low its figure.
    table.stats[CellKey("C", "normal", 600)] = replace(PAPER["C"], error_rate=0.3)
    assert f.lowest_ttft_high_load(table).holds is False
    # Within the capacity table's limit (1%), a failure or two changes nothing.
    table = paper_table()
    table.stats[CellKey("C", "normal", 600)] = replace(PAPER["C"], error_rate=0.005)
    assert f.lowest_ttft_high_load(table).holds is True


def test_a_cell_that_was_not_measured_well_is_no_evidence_for_or_against_a_claim():
    """Cells whose self-check failed (no steady state) still ranked: C's queue still filling at 600 users
    lost it "lowest TTFT at high load", and only the capacity table stopped at such cells."""
    table = paper_table()
    table.stats[CellKey("C", "uniform", 600)] = replace(PAPER["C"], ttft_median=50.0, valid=False)
    found = {finding.claim: finding for finding in f.findings(table)}
    ttft = found[f.lowest_ttft_high_load(table).claim]
    assert ttft.holds is True and ttft.numbers.startswith("3/3 cells")  # the other high-load cells still say so
    assert f.lowest_ttft_high_load(table).holds is False  # judged on every cell, it had failed
    for users in (600, 1000):
        for mix in ("uniform", "normal"):
            table.stats[CellKey("C", mix, users)] = replace(PAPER["C"], valid=False)
    ttft = next(x for x in f.findings(table) if x.claim == ttft.claim)
    assert ttft.holds is None and "4 cell(s) not measured well left out" in ttft.numbers


def test_the_report_says_how_many_cells_the_findings_left_out():
    cells = {}
    for c, tpot in zip(t.CONFIGURATIONS, (0.03, 0.025, 0.028, 0.05, 0.015)):
        made = cell(c, 4, ttft=0.1, tpot=tpot)
        cells[made.key] = made
    assert "left out" not in f.findings_sections(cells)[0].note
    cells[CellKey("A", "uniform", 4)].valid = False
    assert "1 cell(s) that were not measured well are left out" in f.findings_sections(cells)[0].note
