"""The report's answer-quality section: the perplexity heat map and one table row per cluster.

`answer_quality_section` returns figures and rows in the shape the speed report uses (PNG paths and
dicts), so the report can put them beside the speed figures without knowing how they were measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from expert_router.quality.evaluate import Evaluation

COLUMNS = [
    ("cluster", "cluster"),
    ("topic", "topic"),
    ("held-out docs", "documents"),
    ("routed expert", "routed"),
    ("best other expert", "best_other"),
    ("random other expert", "random_other"),
    ("base model", "base"),
    ("routed / base", "routed_vs_base"),
]
"""Table columns (header, key): perplexities on the cluster's held-out text."""


@dataclass(frozen=True)
class QualitySection:
    """What the report shows: `figures` (PNGs), `rows` (one per cluster, keys of COLUMNS), `summary`."""

    figures: list[Path]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    columns: tuple[tuple[str, str], ...] = tuple(COLUMNS)


def heat_map(evaluation: Evaluation, path: Path) -> Path:
    """Rows: clusters' held-out text; columns: each expert, then the base model; colour: log perplexity."""
    k = len(evaluation.base)
    values = np.column_stack([evaluation.matrix, evaluation.base])
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * (k + 1), 1.0 + 0.6 * k))
    image = ax.imshow(np.log(values), cmap="viridis_r", aspect="auto")
    for i in range(k):
        for j in range(k + 1):
            if not math.isnan(values[i, j]):
                ax.text(
                    j,
                    i,
                    f"{values[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if j == i else "black",
                    fontweight="bold" if j == i else "normal",
                )
    topics = [evaluation.cluster_labels.get(i, "") for i in range(k)]
    ax.set_xticks(range(k + 1), [f"expert-{j}" for j in range(k)] + ["base"], rotation=45, ha="right")
    ax.set_yticks(range(k), [f"{i} {t}".strip() for i, t in enumerate(topics)])
    ax.set_xlabel("model")
    ax.set_ylabel("held-out text of cluster")
    ax.set_title("Perplexity on each cluster's held-out text (lower is better)")
    fig.colorbar(image, ax=ax, label="log perplexity")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table_rows(evaluation: Evaluation) -> list[dict[str, Any]]:
    k = len(evaluation.base)
    rows = []
    for i in evaluation.rows:
        others = [float(evaluation.matrix[i, j]) for j in range(k) if j != i]
        rows.append(
            {
                "cluster": i,
                "topic": evaluation.cluster_labels.get(i),
                "documents": evaluation.documents[i],
                "routed": float(evaluation.matrix[i, i]),
                "best_other": min(others, default=None),
                "random_other": float(np.mean(others)) if others else None,
                "base": float(evaluation.base[i]),
                "routed_vs_base": float(evaluation.matrix[i, i] / evaluation.base[i]),
            }
        )
    return rows


def answer_quality_section(evaluation: Evaluation, out: Path) -> QualitySection:
    """Write the heat map and `quality.json` into `out`; return what the report shows."""
    out.mkdir(parents=True, exist_ok=True)
    figure = heat_map(evaluation, out / "quality_perplexity.png")
    (out / "quality.json").write_text(json.dumps(evaluation.to_json(), indent=1))
    return QualitySection([figure], table_rows(evaluation), evaluation.summary())
