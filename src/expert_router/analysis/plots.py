"""The paper's figures (Figs. 2-7) from pooled cells; every configuration side by side, labelled."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from expert_router.analysis.digest import WINDOW_S
from expert_router.analysis.results import Cell, CellKey

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
MAX_WIDTH_IN = 14
"""Widest a box figure gets: wider, it is shrunk to fit a page and its labels become unreadable."""
LOG_SPAN = 10
"""Whiskers reaching past this many times the largest median put the value axis on a log scale."""


def _configurations(cells: dict[CellKey, Cell]) -> list[str]:
    return sorted({k.configuration for k in cells})


def _mixes(cells: dict[CellKey, Cell]) -> list[str]:
    return sorted({k.mix for k in cells})


def _users(cells: dict[CellKey, Cell]) -> list[int]:
    return sorted({k.users for k in cells})


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fig2_input_lengths(lengths: dict[str, list[int]], unit: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (mix, values) in enumerate(sorted(lengths.items())):
        ax.hist(values, bins=40, alpha=0.6, color=COLORS[i % len(COLORS)], label=f"{mix} workload (n={len(values)})")
    ax.set_xlabel(f"input length ({unit})")
    ax.set_ylabel("prompts")
    ax.set_title("Fig. 2 - input-length distribution of the workload")
    ax.legend()
    return _save(fig, path)


def fig3_response_time(cells: dict[CellKey, Cell], mix: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, config in enumerate(_configurations(cells)):
        users = [u for u in _users(cells) if CellKey(config, mix, u) in cells]
        rt = [cells[CellKey(config, mix, u)].values("response") for u in users]
        color = COLORS[i % len(COLORS)]
        ax.plot(users, [np.median(r) if len(r) else np.nan for r in rt], "o-", color=color, label=f"{config} median")
        ax.plot(
            users, [np.percentile(r, 99) if len(r) else np.nan for r in rt], "s--", color=color, label=f"{config} p99"
        )
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("response time (s)")
    ax.set_title(f"Fig. 3 - response time vs users ({mix} mix)")
    ax.legend()
    return _save(fig, path)


def _boxes(cells: dict[CellKey, Cell], mix: str, metric: str, ylabel: str, title: str, path: Path) -> Path:
    configs, users = _configurations(cells), _users(cells)
    fig, ax = plt.subplots(figsize=(min(MAX_WIDTH_IN, max(7, 1.2 * len(users) * len(configs))), 4.5))
    width = 0.8 / len(configs)
    shown: list[np.ndarray] = []
    for i, config in enumerate(configs):
        positions, data, medians = [], [], []
        for j, u in enumerate(users):
            cell = cells.get(CellKey(config, mix, u))
            if cell is None:
                continue
            values = cell.values(metric) * 1000
            positions.append(j + (i - (len(configs) - 1) / 2) * width)
            data.append(values if len(values) else [np.nan])
            shown.append(values)
            medians.append(np.median(values) if len(values) else np.nan)
            _mark_quality(ax, cell, positions[-1], np.nanmax(data[-1]) if len(values) else 0.0)
        if not data:
            continue
        color = COLORS[i % len(COLORS)]
        # Whiskers at the minimum and maximum, as the paper's box plots are read (not 1.5 IQR).
        ax.boxplot(
            data,
            positions=positions,
            widths=width * 0.9,
            patch_artist=True,
            whis=(0, 100),
            boxprops={"facecolor": color, "alpha": 0.35},
            medianprops={"color": color},
        )
        ax.plot(positions, medians, "o-", color=color, label=f"{config} median")
    ax.set_xticks(range(len(users)), [str(u) for u in users])
    ax.set_xlabel("concurrent users")
    scale = value_scale(shown)
    ax.set_yscale(scale)
    ax.set_ylabel(ylabel + (", log scale" if scale == "log" else ""))
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def value_scale(groups: Sequence[np.ndarray]) -> str:
    """Which value axis a box figure gets, log or linear: log when the whiskers (minimum to maximum)
    reach past `LOG_SPAN` times the largest median. The paper's box plots whisker to the extremes, and
    one stalled token among thousands (a 2-s TPOT beside medians of 10-60 ms) otherwise squeezes every
    box into the bottom pixel row."""
    kept = [g[np.isfinite(g)] for g in groups]
    kept = [g for g in kept if len(g)]
    if not kept or min(float(g.min()) for g in kept) <= 0:
        return "linear"  # a log axis cannot show zero or less
    largest_median = max(float(np.median(g)) for g in kept)
    return "log" if max(float(g.max()) for g in kept) > LOG_SPAN * largest_median else "linear"


def _mark_quality(ax: Axes, cell: Cell, x: float, y: float) -> None:
    """A cell's error rate above its box, and a warning mark when it was not measured validly."""
    failed = cell.failed
    notes = []
    if failed:
        notes.append(f"err {failed / cell.requests:.0%}")
    if not cell.valid:
        notes.append("not valid")
    if notes:
        ax.annotate(
            "\n".join(notes), (x, y), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7, color="#b00"
        )


def fig4_ttft(cells: dict[CellKey, Cell], mix: str, path: Path) -> Path:
    return _boxes(cells, mix, "ttft", "TTFT (ms)", f"Fig. 4 - time to first token vs users ({mix} mix)", path)


def fig5_tpot(cells: dict[CellKey, Cell], mix: str, path: Path) -> Path:
    return _boxes(cells, mix, "tpot", "TPOT (ms)", f"Fig. 5 - time per output token vs users ({mix} mix)", path)


def fig6_user_throughput_and_p99(cells: dict[CellKey, Cell], path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"uniform": "o-", "normal": "s--"}
    for i, config in enumerate(_configurations(cells)):
        color = COLORS[i % len(COLORS)]
        for mix in _mixes(cells):
            users = [u for u in _users(cells) if CellKey(config, mix, u) in cells]
            throughput = [cells[CellKey(config, mix, u)].values("user_throughput") for u in users]
            mean = np.array([np.mean(t) if len(t) else np.nan for t in throughput])
            std = np.array([np.std(t) if len(t) else np.nan for t in throughput])
            style = styles.get(mix, "^-.")
            left.errorbar(users, mean, yerr=std, fmt=style, color=color, capsize=3, label=f"{config}, {mix}")
            p99 = [
                np.percentile(r, 99) if len(r) else np.nan
                for r in (cells[CellKey(config, mix, u)].values("response") for u in users)
            ]
            right.plot(users, p99, style, color=color, label=f"{config}, {mix}")
    left.set(
        xlabel="concurrent users",
        ylabel="user throughput (tokens/s, mean ± std)",
        title="Fig. 6a - user throughput, uniform vs normal",
    )
    right.set(xlabel="concurrent users", ylabel="p99 response time (s)", title="Fig. 6b - p99 response time")
    left.legend()
    right.legend()
    return _save(fig, path)


def fig7_system_throughput(cells: dict[CellKey, Cell], mix: str, users: Sequence[int], path: Path) -> Path:
    window_s = WINDOW_S
    configs = _configurations(cells)
    fig, axes = plt.subplots(len(users), 1, figsize=(11, 2.6 * len(users)), squeeze=False)
    for row, u in enumerate(users):
        ax = axes[row][0]
        for i, config in enumerate(configs):
            cell = cells.get(CellKey(config, mix, u))
            if cell is None:
                continue
            color = COLORS[i % len(COLORS)]
            steady_means = []
            for rep, run in enumerate(cell.runs):  # every repetition; the first drawn boldest
                windows = run.windows
                if not len(windows.tokens_per_s):
                    continue
                edges = np.append(windows.starts, windows.starts[-1] + window_s)
                ax.step(
                    edges,
                    np.append(windows.tokens_per_s, windows.tokens_per_s[-1]),
                    where="post",
                    color=color,
                    alpha=1.0 if rep == 0 else 0.35,
                    label=config if rep == 0 else None,
                )
                steady = [s for s, phase in zip(windows.starts, windows.phases) if phase == "steady"]
                if rep == 0 and steady:
                    ax.axvspan(steady[0], steady[-1] + window_s, color=color, alpha=0.06)
                if len(windows.steady()):
                    steady_means.append(float(np.mean(windows.steady())))
            if steady_means:
                mean = float(np.mean(steady_means))
                ax.axhline(
                    mean,
                    color=color,
                    linestyle=":",
                    label=f"{config} steady mean {mean:,.0f}" + ("" if cell.valid else " (not valid)"),
                )
        ax.set(ylabel="tokens/s", title=f"{u} user" + ("" if u == 1 else "s"))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the lines, not over them
    axes[-1][0].set_xlabel(f"time (s), {window_s:g}-second windows")
    fig.suptitle(f"Fig. 7 - system throughput over time ({mix} mix; shaded: steady state, all repetitions drawn)")
    return _save(fig, path)
