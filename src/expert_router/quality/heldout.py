"""The held-out split: documents an expert build does not train on, kept for measuring the experts.

The split is a hash of the text, not a random draw: the same corpus gives the same split on every
machine and every run, and a document that appears twice is on one side only. The build writes the
held-out documents (with the cluster the classifier gave them and their label) and each cluster's
majority label to `held-out.json` beside the experts, so `evaluate` needs neither the corpus nor
the random state of the build.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from expert_router.errors import UserError

FILE_NAME = "held-out.json"


def is_held_out(text: str, fraction: float) -> bool:
    """Whether `text` belongs to the held-out share `fraction` (0..1) of a corpus."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class HeldOut:
    """Held-out documents of an expert build: text, routed cluster, label (None when unlabelled)."""

    texts: list[str]
    clusters: list[int]
    labels: list[str | None]
    cluster_labels: dict[int, str]
    """Each cluster's most common label among its training documents: the topic its expert names."""

    def by_cluster(self, k: int) -> dict[int, list[str]]:
        grouped: dict[int, list[str]] = {c: [] for c in range(k)}
        for text, cluster in zip(self.texts, self.clusters):
            grouped[cluster].append(text)
        return grouped


def majority_labels(clusters: Sequence[int], labels: Sequence[str | None]) -> dict[int, str]:
    """Cluster -> its most common label (clusters without labelled documents are left out)."""
    counts: dict[int, Counter[str]] = {}
    for cluster, label in zip(clusters, labels):
        if label is not None:
            counts.setdefault(cluster, Counter())[label] += 1
    return {cluster: counter.most_common(1)[0][0] for cluster, counter in counts.items()}


def write_held_out(folder: Path, held_out: HeldOut, fraction: float) -> Path:
    path = folder / FILE_NAME
    documents = [
        {"cluster": c, "label": label, "text": t}
        for t, c, label in zip(held_out.texts, held_out.clusters, held_out.labels)
    ]
    path.write_text(
        json.dumps(
            {
                "fraction": fraction,
                "cluster_labels": {str(c): v for c, v in held_out.cluster_labels.items()},
                "documents": documents,
            },
            indent=1,
        )
    )
    return path


def read_held_out(folder: Path) -> HeldOut:
    """The held-out documents an expert build wrote, or a UserError that says how to get them."""
    path = folder / FILE_NAME
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder (the experts' folder is `expert-router experts build`'s --out)")
    if not path.is_file() and not (folder / "deployment.yaml").is_file():
        raise UserError(f"{folder} is not a folder written by `expert-router experts build` (no deployment.yaml)")
    if not path.is_file():
        raise UserError(
            f"{folder} has no {FILE_NAME}: experts built before held-out splits existed; "
            "build them again with `expert-router experts build` (--held-out above 0)"
        )
    try:
        data = json.loads(path.read_text())
        documents = data["documents"]
        return HeldOut(
            texts=[str(d["text"]) for d in documents],
            clusters=[int(d["cluster"]) for d in documents],
            labels=[d.get("label") for d in documents],
            cluster_labels={int(c): str(v) for c, v in data.get("cluster_labels", {}).items()},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a held-out file written by `experts build` ({exc})") from None


def split_documents(
    texts: Sequence[str], labels: Sequence[str | None], clusters: Sequence[int], k: int, fraction: float
) -> tuple[dict[int, list[str]], HeldOut]:
    """(training texts by cluster, the held-out documents) of a routed corpus."""
    training: dict[int, list[str]] = {c: [] for c in range(k)}
    kept = [(t, c, label) for t, c, label in zip(texts, clusters, labels) if is_held_out(t, fraction)]
    trained = [(t, c, label) for t, c, label in zip(texts, clusters, labels) if not is_held_out(t, fraction)]
    for text, cluster, _ in trained:
        training[cluster].append(text)
    topics = majority_labels([c for _, c, _ in trained], [label for _, _, label in trained])
    held_out = HeldOut([t for t, _, _ in kept], [c for _, c, _ in kept], [label for _, _, label in kept], topics)
    return training, held_out
