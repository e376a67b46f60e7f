"""Measure a folder of built experts: each expert and the base model on each cluster's held-out text.

c-BTM's premise is that the expert of a prompt's cluster models it better than the other experts and
than the base model they all started from. The matrix says so cell by cell; its summary in three
numbers: in how many rows (clusters) the cluster's own expert is the best expert, the routed
expert's perplexity over the base model's, and over a random other expert's (the mean of the row's
other experts: what a router that picks at random would get on average).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expert_router.errors import UserError
from expert_router.quality.heldout import HeldOut, read_held_out
from expert_router.quality.perplexity import perplexity


@dataclass(frozen=True)
class Evaluation:
    """Perplexities: `matrix[i, j]` = expert of cluster j on cluster i's held-out text; `base[i]` = base model."""

    matrix: np.ndarray
    base: np.ndarray
    documents: list[int]
    cluster_labels: dict[int, str]
    routing_accuracy: float | None

    @property
    def rows(self) -> list[int]:
        """Clusters with held-out text (the rows that count)."""
        return [i for i in range(len(self.base)) if not math.isnan(self.base[i])]

    @property
    def diagonal_lowest(self) -> int:
        """Rows where the cluster's own expert has the lowest perplexity of all experts."""
        return sum(1 for i in self.rows if int(np.argmin(self.matrix[i])) == i)

    @property
    def routed_vs_base(self) -> float:
        """Mean over rows of routed expert / base model perplexity (below 1: the expert helps)."""
        return float(np.mean([self.matrix[i, i] / self.base[i] for i in self.rows]))

    @property
    def routed_vs_random(self) -> float:
        """Mean over rows of routed expert / mean of the other experts' perplexity."""
        k = len(self.base)
        return (
            float(
                np.mean(
                    [self.matrix[i, i] / np.mean([self.matrix[i, j] for j in range(k) if j != i]) for i in self.rows]
                )
            )
            if k > 1
            else math.nan
        )

    def summary(self) -> dict[str, Any]:
        return {
            "clusters": len(self.base),
            "rows_with_held_out": len(self.rows),
            "diagonal_lowest_rows": self.diagonal_lowest,
            "routed_vs_base": self.routed_vs_base,
            "routed_vs_random": self.routed_vs_random,
            "routing_accuracy": self.routing_accuracy,
            "held_out_documents": sum(self.documents),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "perplexity": [_json_numbers(row) for row in self.matrix],  # NaN is not JSON: a row with no text is null
            "base_perplexity": _json_numbers(self.base),
            "documents": self.documents,
            "cluster_labels": {str(c): v for c, v in self.cluster_labels.items()},
        }


def _json_numbers(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def routing_accuracy(classifier_dir: Path, held_out: HeldOut) -> float | None:
    """Share of labelled held-out documents the classifier sends to a cluster whose topic is their label."""
    from expert_router.classifier import Classifier

    labelled = [(t, label) for t, label in zip(held_out.texts, held_out.labels) if label is not None]
    if not labelled or not held_out.cluster_labels:
        return None
    routed = Classifier.load(classifier_dir).route([t for t, _ in labelled]).cluster.tolist()
    return float(np.mean([held_out.cluster_labels.get(c) == label for c, (_, label) in zip(routed, labelled)]))


def load_experts(folder: Path) -> tuple[Any, Any, list[int]]:
    """(the base model with every expert's LoRA adapter loaded, the tokenizer, the clusters)."""
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    adapters = sorted((folder / "adapters").glob("expert-*"), key=lambda p: int(p.name.split("-")[1]))
    if not (folder / "base").is_dir() or not adapters:
        raise UserError(
            f"{folder} holds no built experts (base/ and adapters/expert-C/): run `expert-router experts build` first"
        )
    model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(folder / "base"), adapters[0], adapter_name=adapters[0].name
    )
    for path in adapters[1:]:
        model.load_adapter(path, adapter_name=path.name)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder / "base"), [int(p.name.split("-")[1]) for p in adapters]


def evaluate_experts(
    folder: Path, max_documents: int | None = None, progress: Callable[[str], None] | None = None
) -> Evaluation:
    """The evaluation of the experts built in `folder` on their held-out documents."""
    import torch

    torch.manual_seed(0)
    held_out = read_held_out(folder)
    model, tokenizer, clusters = load_experts(folder)
    seq_len = int(json.loads((folder / "build.json").read_text())["settings"]["seq_len"])
    texts = {c: t[:max_documents] for c, t in held_out.by_cluster(len(clusters)).items()}
    if not any(texts.get(c) for c in clusters):  # nothing to measure: every figure would be NaN
        raise UserError(f"{folder} has no held-out documents to evaluate on: build the experts with --held-out above 0")
    k = len(clusters)
    matrix, base = np.full((k, k), math.nan), np.full(k, math.nan)
    for row, cluster in enumerate(clusters):
        if not texts.get(cluster):
            continue
        for column, expert in enumerate(clusters):
            (progress or (lambda _: None))(f"expert-{expert} on cluster {cluster}")
            model.set_adapter(f"expert-{expert}")
            matrix[row, column] = perplexity(model, tokenizer, texts[cluster], seq_len)
        with model.disable_adapter():
            base[row] = perplexity(model, tokenizer, texts[cluster], seq_len)
    accuracy = routing_accuracy(folder / "classifier", held_out) if (folder / "classifier").is_dir() else None
    return Evaluation(matrix, base, [len(texts.get(c, [])) for c in clusters], held_out.cluster_labels, accuracy)
