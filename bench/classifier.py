"""Routing speed of the classifier against a plain scikit-learn Pipeline doing the same work.

Both are fitted once, on the offline demo corpus, and share the same fitted objects: the Pipeline is
what `fit_pipeline` returns, the Classifier is that Pipeline flattened into arrays. Both produce the
distance of each prompt to every centroid and its nearest cluster.

Prints one JSON line. Run: python bench/classifier.py [--prompts 2000] [--words 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

import numpy as np

from expert_router.classifier import Classifier, ClassifierSettings, fit_pipeline
from expert_router.corpus import load_corpus


def make_prompts(texts: list[str], n: int, words: int, seed: int) -> list[str]:
    """Prompts of about `words` words, glued from corpus documents (the paper's prompts are ~335 tokens)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p.split()) for p in parts) < words:
            parts.append(rng.choice(texts))
        prompts.append(" ".join(" ".join(parts).split()[:words]))
    return prompts


def time_single(route_one, prompts: list[str]) -> np.ndarray:
    for prompt in prompts[:50]:  # warm caches and lazy imports
        route_one(prompt)
    times = np.empty(len(prompts))
    for i, prompt in enumerate(prompts):
        start = time.perf_counter_ns()
        route_one(prompt)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return times


def time_batch(route_many, prompts: list[str], repeats: int = 3) -> float:
    route_many(prompts[:100])
    best = min(_elapsed(route_many, prompts) for _ in range(repeats))
    return len(prompts) / best


def _elapsed(fn, arg) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2000, help="prompts timed one at a time and in one batch")
    parser.add_argument("--words", type=int, default=300, help="words per prompt")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--scaling", choices=("l2", "standard"), default="l2")
    args = parser.parse_args()

    texts = [d.text for d in load_corpus("demo")]
    settings = ClassifierSettings(k=args.k, scaling=args.scaling)
    pipeline = fit_pipeline(texts, settings)
    classifier = Classifier.from_pipeline(pipeline, settings)
    prompts = make_prompts(texts, args.prompts, args.words, seed=0)

    def sklearn_route(batch: list[str]) -> np.ndarray:
        distances = pipeline.transform(batch)  # KMeans.transform: distance to every centroid
        return distances.argmin(axis=1)

    agree = float((classifier.route(prompts).cluster == sklearn_route(prompts)).mean())
    ours = time_single(classifier.route, prompts)
    theirs = time_single(lambda p: sklearn_route([p]), prompts)
    batch = time_batch(classifier.route, prompts)
    sklearn_batch = time_batch(sklearn_route, prompts)

    result = {
        "bench": "classifier",
        "prompts": len(prompts),
        "words_per_prompt": args.words,
        "k": args.k,
        "scaling": args.scaling,
        "vocabulary": len(classifier.vocabulary),
        "routes_agree_with_sklearn": agree,
        "single_p50_ms": round(float(np.percentile(ours, 50)), 4),
        "single_p99_ms": round(float(np.percentile(ours, 99)), 4),
        "batch_prompts_per_s": round(batch, 1),
        "sklearn_single_p50_ms": round(float(np.percentile(theirs, 50)), 4),
        "sklearn_single_p99_ms": round(float(np.percentile(theirs, 99)), 4),
        "sklearn_batch_prompts_per_s": round(sklearn_batch, 1),
        "single_p99_speedup": round(float(np.percentile(theirs, 99) / np.percentile(ours, 99)), 2),
        "batch_speedup": round(batch / sklearn_batch, 2),
        "python": platform.python_version(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
