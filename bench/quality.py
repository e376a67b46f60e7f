"""Answer quality of the demo: does routing send prompts to an expert that models them better?

Fits the demo's classifier (k = 8, balanced) on the offline demo corpus, builds the demo's experts
with the default settings (held-out split included) and evaluates them: NMI of clusters against the
topic labels, the largest cluster's share, the sample prompts that reach their topic's expert, the
rows where a cluster's own expert has the lowest perplexity, routed/base and routed/random-other
perplexity ratios and the routing accuracy on held-out labelled documents.

Prints one JSON line. Run: python bench/quality.py [--work DIR] [--experts DIR (reuse a build)]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from expert_router.classifier import Classifier, ClassifierSettings
from expert_router.commands.demo import SAMPLE_PROMPTS
from expert_router.corpus import load_corpus
from expert_router.quality import evaluate_experts
from expert_router.quality.heldout import majority_labels


def classifier_figures(classifier: Classifier, texts: list[str], labels: list[str | None]) -> dict[str, object]:
    clusters = classifier.route(texts).cluster
    sizes = np.bincount(clusters, minlength=classifier.k)
    topics = majority_labels(clusters.tolist(), labels)
    routed = classifier.route([prompt for _, prompt in SAMPLE_PROMPTS]).cluster.tolist()
    on_topic = sum(topics.get(c) == topic for c, (topic, _) in zip(routed, SAMPLE_PROMPTS))
    return {
        "documents": len(texts),
        "nmi": round(float(normalized_mutual_info_score(labels, clusters)), 4),
        "largest_cluster_share": round(float(sizes.max() / sizes.sum()), 4),
        "largest_over_mean": round(float(sizes.max() / sizes.mean()), 3),
        "sample_prompts_on_topic": f"{on_topic}/{len(SAMPLE_PROMPTS)}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="folder for the classifier and experts (default: a temporary one)")
    parser.add_argument("--experts", type=Path, help="evaluate these built experts instead of building new ones")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-quality-"))
    documents = load_corpus("demo")
    texts, labels = [d.text for d in documents], [d.label for d in documents]
    classifier = Classifier.fit(texts, ClassifierSettings(k=8, balanced=True))
    classifier.save(work / "classifier")
    result: dict[str, object] = classifier_figures(classifier, texts, labels)
    experts = args.experts
    if experts is None:
        experts = work / "experts"
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "expert_router",
                "experts",
                "build",
                "demo",
                "--classifier",
                str(work / "classifier"),
                "--out",
                str(experts),
            ],
            check=True,
            capture_output=True,
        )
        result["build_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    evaluation = evaluate_experts(experts)
    result["evaluate_s"] = round(time.perf_counter() - started, 1)
    summary = evaluation.summary()
    result.update({key: summary[key] for key in ("diagonal_lowest_rows", "rows_with_held_out", "routing_accuracy")})
    result["routed_vs_base"] = round(summary["routed_vs_base"], 4)
    result["routed_vs_random"] = round(summary["routed_vs_random"], 4)
    result["routing_accuracy"] = (
        round(summary["routing_accuracy"], 4) if summary["routing_accuracy"] is not None else None
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
