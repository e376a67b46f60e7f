"""The paper's findings, checked against a results folder: each one reproduced or not, with its numbers.

The claims are the paper's (../shared/paper-notes.md, "Results to compare against"), written as tests
on the cells of configurations A..E (Table I): A, B, C the tensor-parallel baselines, D and E the
expert routers. Each test names the numbers it read, so a reader can disagree with the threshold. A
claim that does not hold says why in one line: a difference of our model or of the paper's set-up.
Those lines are written from what the engine model is, never by tuning the model until a claim holds.

The capacity table answers a planner's first question: how many users each configuration serves
within latency targets (by default MLPerf's Llama-2-70B server limits: p99 TTFT <= 2 s, p99 TPOT <= 200 ms).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from expert_router.analysis.cell_table import CONFIGURATIONS, HIGH_LOAD, Stats, Table
from expert_router.analysis.results import Cell, CellKey
from expert_router.analysis.sections import Section

BASELINES = ("A", "B", "C")
ROUTERS = ("D", "E")
MATCH = 0.10
"""Two throughputs 'match' or 'differ little' within this relative difference."""


@dataclass(frozen=True)
class Targets:
    """Latency limits a served user level must meet (MLPerf Llama-2-70B server scenario by default)."""

    ttft_p99_s: float = 2.0
    tpot_p99_s: float = 0.2
    error_rate: float = 0.01
    """Share of failed requests a served level may have: the latencies are of the answered requests
    only, so a level that turns users away (429, 503) would otherwise look served, and fast."""


@dataclass
class Finding:
    claim: str
    holds: bool | None
    """None when the results lack the cells the claim needs."""
    numbers: str
    why: str = ""


def _ms(x: float) -> str:
    return f"{x * 1000:.0f}" if x >= 0.01 else f"{x * 1000:.1f}"


def _lowest(
    table: Table,
    field: str,
    winner: str,
    levels: list[int],
    unit: Callable[[float], str],
    claim: str,
    highest: bool = False,
) -> Finding:
    """`winner` has the lowest (highest) `field` among A..E at every one of `levels`, in every mix.

    A cell with no answer ranks nowhere, nor does one that failed more of its requests than a served
    level may (`Targets.error_rate`, as in the capacity table): these latencies and rates are of the
    answered requests only, so a configuration that turned most users away (429, 503) had won a TTFT
    ranking on the few it answered."""
    checks, shown = [], []
    for mix in table.mixes:
        for users in levels:
            row = table.complete(mix, users)
            if not row:
                continue
            values = {c: getattr(s, field) for c, s in row.items()}
            failing = {c for c, s in row.items() if s.error_rate > Targets.error_rate}
            measured = [c for c in values if not np.isnan(values[c]) and c not in failing]
            if winner not in measured:
                best = "none"  # the winner answered nothing here: the claim does not hold
            else:
                best = (max if highest else min)(measured, key=lambda c: values[c])
                if np.isclose(values[winner], values[best], rtol=1e-9, atol=1e-12):
                    best = winner  # a tie counts for the winner
            checks.append(best == winner)
            shown.append(
                f"{mix} u{users}: "
                + " ".join(
                    f"{c} {unit(v)}" + (f" ({row[c].error_rate:.0%} failed)" if c in failing else "")
                    for c, v in values.items()
                )
                + ("" if best == winner else f" (best {best})")
            )
    if not checks:
        return Finding(claim, None, "cells missing")
    return Finding(claim, all(checks), f"{sum(checks)}/{len(checks)} cells; " + "; ".join(shown[-3:]))


def lowest_tpot(table: Table) -> Finding:
    claim = "E has the lowest TPOT, with small variance"
    median = _lowest(table, "tpot_median", "E", table.levels, _ms, claim)
    spread = _lowest(table, "tpot_std", "E", table.levels, _ms, claim)
    if median.holds is None or spread.holds is None:
        return median
    return Finding(
        claim,
        median.holds and spread.holds,
        f"E lowest median in {median.numbers.split(' cells;')[0]} cells, lowest std in "
        f"{spread.numbers.split(' cells;')[0]} cells; TPOT median (ms): " + median.numbers.split("; ", 1)[-1],
    )


def tp_communication(table: Table) -> Finding:
    """At one user there is no batching: a TP baseline that streams fewer weight bytes per GPU than E
    (B: 70 GB over 8 GPUs) and is still slower per token pays its all-reduces and launches."""
    claim = "Baselines pay TP communication in TPOT (slower than E per token at 1 user)"
    low = 1  # the claim's own level: at more users, batching is in the TPOT too
    shown, checks = [], []
    for mix in table.mixes:
        row = table.complete(mix, low, ("A", "B", "C", "E"))
        if row:
            checks.append(all(row[c].tpot_median > row["E"].tpot_median for c in BASELINES))
            shown.append(f"{mix} u{low} TPOT ms: " + " ".join(f"{c} {_ms(s.tpot_median)}" for c, s in row.items()))
    if not checks:
        return Finding(claim, None, "cells missing")
    return Finding(claim, all(checks), "; ".join(shown))


def lowest_ttft_high_load(table: Table) -> Finding:
    return _lowest(
        table,
        "ttft_median",
        "C",
        table.high_levels(),
        _ms,
        f"C has the lowest median TTFT at high load (>= {HIGH_LOAD} users)",
    )


def baselines_lower_min_ttft(table: Table) -> Finding:
    claim = "Baselines show a lower minimum TTFT than the routers (gateway latency)"
    shown, checks = [], []
    for mix in table.mixes:
        mins = {
            c: min(
                (
                    s.ttft_min
                    for k, s in table.stats.items()
                    if k.configuration == c and k.mix == mix and not np.isnan(s.ttft_min)
                ),
                default=float("nan"),
            )
            for c in CONFIGURATIONS
        }
        if any(np.isnan(v) for v in mins.values()):
            continue
        checks.append(max(mins[c] for c in BASELINES) < min(mins[c] for c in ROUTERS))
        shown.append(f"{mix} min TTFT ms: " + " ".join(f"{c} {_ms(v)}" for c, v in mins.items()))
    if not checks:
        return Finding(claim, None, "cells missing")
    return Finding(claim, all(checks), "; ".join(shown))


def highest_user_throughput(table: Table) -> Finding:
    levels = [u for u in table.levels if u <= 800]
    return _lowest(
        table,
        "user_throughput",
        "E",
        levels,
        lambda v: f"{v:.1f}",
        "E has the highest user throughput (tokens/s) up to 800 users",
        highest=True,
    )


def mixes_differ_little(table: Table) -> Finding:
    claim = f"Uniform and normal mixes differ little for D and E (mean user throughput within {MATCH:.0%})"
    if len(table.mixes) < 2:
        return Finding(claim, None, "one mix only")
    first, second = table.mixes[:2]
    gaps: dict[str, float] = {}
    for c in ROUTERS:
        for users in table.levels:
            a, b = table.get(c, first, users), table.get(c, second, users)
            if a and b and np.isfinite(a.user_throughput) and b.user_throughput > 0:  # nan: nothing answered
                gaps[f"{c} u{users}"] = abs(a.user_throughput / b.user_throughput - 1)
    if not gaps:
        return Finding(claim, None, "cells missing")
    worst = max(gaps, key=lambda k: gaps[k])
    return Finding(
        claim,
        gaps[worst] <= MATCH,
        f"largest difference {gaps[worst]:.1%} at {worst} "
        f"({sum(g <= MATCH for g in gaps.values())}/{len(gaps)} cells within)",
    )


def lowest_p99_response(table: Table) -> Finding:
    return _lowest(
        table,
        "response_p99",
        "C",
        table.high_levels(),
        lambda v: f"{v:.1f}s",
        f"C has the lowest p99 response time at high concurrency (>= {HIGH_LOAD} users)",
    )


def e_matches_c(table: Table) -> Finding:
    claim = f"E matches C's mean system throughput at 200 and 600 users (within {MATCH:.0%}) and falls behind at 1,000"
    shown, checks = [], []
    for mix in table.mixes:
        for users, want_match in ((200, True), (600, True), (1000, False)):
            row = table.complete(mix, users, ("C", "E"))
            if not row or not np.isfinite(row["E"].system_mean) or not row["C"].system_mean > 0:
                continue  # not measured: no comparison (a nan ratio had read as "does not match")
            ratio = row["E"].system_mean / row["C"].system_mean
            checks.append(abs(ratio - 1) <= MATCH if want_match else ratio < 1 - MATCH)
            shown.append(f"{mix} u{users}: E {row['E'].system_mean:,.0f} / C {row['C'].system_mean:,.0f} tok/s")
    if not checks:
        return Finding(claim, None, "cells missing")
    return Finding(claim, all(checks), f"{sum(checks)}/{len(checks)} cells; " + "; ".join(shown))


def _highest(values: list[float]) -> float:
    """The largest of the cells' values that were measured (nan when none was: every request failed)."""
    measured = [v for v in values if not np.isnan(v)]
    return max(measured) if measured else float("nan")


def d_under_2000(table: Table) -> Finding:
    claim = "D stays under 2,000 tokens/s mean system throughput, with the lowest peak"
    by_config: dict[str, list[Stats]] = {}
    for key, s in table.stats.items():
        by_config.setdefault(key.configuration, []).append(s)
    if set(by_config) != set(CONFIGURATIONS):
        return Finding(claim, None, "cells missing")
    d_mean = _highest([s.system_mean for s in by_config["D"]])
    peaks = {c: _highest([s.system_peak for s in ss]) for c, ss in by_config.items()}
    if np.isnan(d_mean) or np.isnan(peaks["D"]):
        return Finding(claim, None, "D has no measured throughput")
    measured = [
        peaks[c] for c in peaks if not np.isnan(peaks[c])
    ]  # a configuration that answered nothing ranks nowhere
    holds = bool(d_mean < 2000) and peaks["D"] <= min(measured)  # a tie counts for D, as in the rankings
    return Finding(
        claim,
        holds,
        f"D's highest mean {d_mean:,.0f} tok/s; peaks: " + " ".join(f"{c} {peaks[c]:,.0f}" for c in CONFIGURATIONS),
    )


FINDINGS: tuple[Callable[[Table], Finding], ...] = (
    lowest_tpot,
    tp_communication,
    lowest_ttft_high_load,
    baselines_lower_min_ttft,
    highest_user_throughput,
    mixes_differ_little,
    lowest_p99_response,
    e_matches_c,
    d_under_2000,
)

WHY: dict[str, str] = {
    "lowest_tpot": "model: at few users B (70B FP8 on TP8: 8.7 GB of weights per GPU) streams fewer bytes per "
    "GPU and step than E (16 GB on one GPU); our all-reduces, at NCCL's published bus bandwidth, cost less than that",
    "tp_communication": "model: TP cost is a ring all-reduce at NCCL's published bus bandwidth plus latency and "
    "the logits gather, not NCCL timed at decode-sized messages; "
    "with it B's 8.7 GB per GPU still decode faster than E's 16 GB, so only A and C are slower than E",
    "lowest_ttft_high_load": "model/set-up: the baselines' Table I batch caps (A, B 200; C 2 x 100) leave most of "
    "1,000 closed-loop users waiting for a slot (TTFT in seconds), while E's 8 x 125 slots hold them; the "
    "paper's low TTFT for C means its servers did not queue so (TensorRT-LLM's admission is not ours)",
    "baselines_lower_min_ttft": "set-up: our gateway adds the ~1 ms measured here (one process, no NGINX tier), "
    "not the paper's 442 ms; without it E's 8B prefill on one GPU is as fast as B's and faster than A's and C's",
    "highest_user_throughput": "model: at 1 user B decodes faster than E (fewer weight bytes per GPU, see TPOT); "
    "from 50 users on E leads",
    "mixes_differ_little": "model/set-up: our normal mix sends the hot experts more users than their 125 batch "
    "slots (E) or KV cache (D) hold, so they queue; the paper's normal draw may be flatter",
    "lowest_p99_response": "model: E's 8B steps (14-17 ms TPOT) and 1,000 slots finish answers 2-3x sooner than "
    "C's queued 70B TP4 ones; the paper's E was slowed by what our engines do not model (its 442 ms gateway, "
    "its relay)",
    "e_matches_c": "model: C is capped at 2 x 100 running sequences (Table I) at ~20 ms per step, ~10,000 tokens/s; "
    "E's 8 x 125 slots at 8B step times reach 2-5x that; an 8B roofline is far faster than the paper's E was",
    "d_under_2000": "model: D is an INT4 (W4A16) roofline: 37.7 GB per step at the H100's bandwidth, batches up to "
    "125; AWQ's dequantisation cost at large batches is only in the efficiency factors, and the paper's "
    "TensorRT-LLM AWQ kernels delivered far less",
}
"""One line per claim, shown only when it does not hold: which difference (our model, or the paper's
set-up) explains it. Written from the engine model's structure, never fitted."""


def _left_out(table: Table) -> int:
    """How many cells the findings leave out: those not measured well."""
    return sum(not s.valid for s in table.stats.values())


def findings(table: Table) -> list[Finding]:
    """Every claim, judged on the cells that were measured well. A cell whose self-check failed (no
    steady state in the window) is left out as a missing one is, evidence neither for a claim nor
    against it: its latencies are of a load that had not settled, and a baseline still filling its
    queue had ranked beside cells that had."""
    judged = table.measured_well()
    left_out = _left_out(table)
    found = []
    for check in FINDINGS:
        finding = check(judged)
        if finding.holds is False:
            finding.why = WHY.get(check.__name__, "")
        elif finding.holds is None and left_out:
            finding.numbers += f" ({left_out} cell(s) not measured well left out)"
        found.append(finding)
    return found


def capacity(table: Table, targets: Targets = Targets()) -> list[dict[str, object]]:
    """Per configuration and mix: the most users served with every level up to it within the targets."""
    rows: list[dict[str, object]] = []
    for configuration in CONFIGURATIONS:
        for mix in table.mixes:
            served, first_over = 0, ""
            for users in table.levels:
                s = table.get(configuration, mix, users)
                if s is None:
                    continue
                if not s.valid:
                    first_over = f"u{users}: not measured well (the simulator's self-check failed)"
                    break
                if s.error_rate > targets.error_rate:
                    first_over = f"u{users}: {s.error_rate:.0%} of requests failed"
                    break
                if s.ttft_p99 <= targets.ttft_p99_s and s.tpot_p99 <= targets.tpot_p99_s:
                    served = users
                    continue
                first_over = f"u{users}: p99 TTFT {s.ttft_p99:.2f} s, p99 TPOT {_ms(s.tpot_p99)} ms"
                break
            if any(k.configuration == configuration and k.mix == mix for k in table.stats):
                rows.append(
                    {
                        "configuration": configuration,
                        "mix": mix,
                        "users": served,
                        "first_over": first_over or "none measured",
                    }
                )
    return rows


FINDING_COLUMNS = [("finding", "claim"), ("holds", "holds"), ("numbers", "numbers"), ("why not", "why")]
CAPACITY_COLUMNS = [
    ("configuration", "configuration"),
    ("mix", "mix"),
    ("most users within targets", "users"),
    ("first level over", "first_over"),
]


def findings_sections(cells: dict[CellKey, Cell], targets: Targets = Targets()) -> list[Section]:
    """The findings table and the capacity table, for `write_report` to append."""
    table = Table.of(cells)
    found = findings(table)
    rows = [
        {"claim": f.claim, "holds": {True: "yes", False: "no", None: "-"}[f.holds], "numbers": f.numbers, "why": f.why}
        for f in found
    ]
    held = sum(f.holds is True for f in found)
    left_out = _left_out(table)
    note = f"{held} of {len(found)} hold." + (
        f" {left_out} cell(s) that were not measured well are left out of them." if left_out else ""
    )
    return [
        Section("The paper's findings", FINDING_COLUMNS, rows, note),
        Section(
            "Capacity",
            CAPACITY_COLUMNS,
            capacity(table, targets),
            f"Every user level up to the one shown meets p99 TTFT <= {targets.ttft_p99_s:g} s and "
            f"p99 TPOT <= {targets.tpot_p99_s * 1000:g} ms (MLPerf Llama-2-70B server limits by default), "
            f"with at most {targets.error_rate:.0%} of its requests failed, in cells that were measured well.",
        ),
    ]
