"""What the paper's findings and the capacity table read from a results folder: a few statistics per
cell (configuration, mix, users), with the report's own pooled definitions.

Computed here once per cell, not as a whole `Summary`: on a full sweep the report's table already costs
minutes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from expert_router.analysis import metrics
from expert_router.analysis.results import Cell, CellKey

CONFIGURATIONS = ("A", "B", "C", "D", "E")
"""The paper's Table I: A, B, C the tensor-parallel baselines, D and E the expert routers."""
HIGH_LOAD = 600
"""Users from which the load counts as high (the paper's Figs. 4 and 6 discuss 600 to 1,000)."""


@dataclass(frozen=True)
class Stats:
    """What the findings read from one cell (repetitions pooled as the report pools them)."""

    ttft_median: float
    ttft_min: float
    ttft_p99: float
    tpot_median: float
    tpot_std: float
    tpot_p99: float
    response_p99: float
    user_throughput: float
    system_mean: float
    system_peak: float
    error_rate: float = 0.0
    valid: bool = True
    """The simulator's self-check passed in every repetition."""


def cell_stats(cell: Cell) -> Stats:
    """Only the metrics the findings read, with `digest.pooled`'s definitions (per-request metrics over
    every repetition; system throughput the mean of the runs' steady means, and the highest peak), but
    without the rest of a Summary: on a full sweep the report's own table already costs minutes."""
    ttfts, tpots = cell.values("ttft"), cell.values("tpot")
    windows = [run.windows for run in cell.runs if run.requests]
    means = [float(w.steady().mean()) for w in windows if len(w.steady())]
    peaks = [float(w.tokens_per_s.max()) for w in windows if len(w.tokens_per_s)]

    def value(x: float | None) -> float:
        return float("nan") if x is None else x

    return Stats(
        value(metrics.percentile(ttfts, 50)),
        value(metrics.percentile(ttfts, 0)),
        value(metrics.percentile(ttfts, 99)),
        value(metrics.percentile(tpots, 50)),
        value(metrics.std(tpots)),
        value(metrics.percentile(tpots, 99)),
        value(metrics.percentile(cell.values("response"), 99)),
        value(metrics.mean(cell.values("user_throughput"))),
        float(np.mean(means)) if means else float("nan"),
        max(peaks) if peaks else float("nan"),
        cell.failed / cell.requests if cell.requests else 1.0,
        cell.valid,
    )


class Table:
    """Stats of every cell by (configuration, mix, users)."""

    def __init__(self, stats: dict[CellKey, Stats]):
        self.stats = stats
        self.mixes = sorted({k.mix for k in stats})
        self.levels = sorted({k.users for k in stats})

    @classmethod
    def of(cls, cells: dict[CellKey, Cell]) -> Table:
        return cls({key: cell_stats(cell) for key, cell in cells.items() if key.configuration in CONFIGURATIONS})

    def get(self, configuration: str, mix: str, users: int) -> Stats | None:
        return self.stats.get(CellKey(configuration, mix, users))

    def complete(self, mix: str, users: int, configurations: Iterable[str] = CONFIGURATIONS) -> dict[str, Stats]:
        """The stats of every named configuration at this point, or {} when one is missing."""
        found = {c: self.get(c, mix, users) for c in configurations}
        return {c: s for c, s in found.items() if s is not None} if all(found.values()) else {}

    def measured_well(self) -> Table:
        """The cells whose self-check passed: the ones a finding may read."""
        return Table({key: s for key, s in self.stats.items() if s.valid})

    def high_levels(self) -> list[int]:
        """The levels at `HIGH_LOAD` users or more: none in a sweep that stops short of it (a claim about
        high load was judged at 25 users, with the paper's reason for 1,000 beside it)."""
        return [u for u in self.levels if u >= HIGH_LOAD]
