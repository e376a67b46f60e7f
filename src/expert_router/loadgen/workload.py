"""The requests a run sends: prompts drawn per cluster by a mix, shaped to drawn input lengths.

Everything is drawn before the run starts (nothing is tokenized or classified on the hot path), from
one seed, and can be saved and replayed exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
from scipy.stats import norm

from expert_router.errors import UserError
from expert_router.loadgen.lengths import LengthDistribution

Counter = Callable[[str], int]


@dataclass(frozen=True)
class WorkItem:
    id: int
    cluster: int
    prompt: str
    input_tokens: int
    max_tokens: int


def mix_probabilities(k: int, mix: str, mean: float | None = None, std: float | None = None) -> np.ndarray:
    """Share of requests per cluster: `uniform`, or `normal` (a normal density over the cluster
    indices 0..k-1, as in the paper's second scenario; mean (k-1)/2 and std k/6 unless given)."""
    if mix == "uniform":
        return np.full(k, 1.0 / k)
    if mix == "normal":
        mean = (k - 1) / 2 if mean is None else mean
        std = k / 6 if std is None else std
        if std <= 0:
            raise UserError("--mix-std must be positive")
        density = norm.pdf(np.arange(k), loc=mean, scale=std)
        if density.sum() <= 0:
            raise UserError("the normal mix puts no weight on any cluster: check --mix-mean")
        return density / density.sum()
    raise UserError(f"unknown mix {mix!r}: use uniform or normal")


def word_count(text: str) -> int:
    """Tokens when no tokenizer is given: whitespace-separated words."""
    return len(text.split())


def build_workload(
    texts_by_cluster: dict[int, list[str]],
    n: int,
    probabilities: np.ndarray,
    lengths: LengthDistribution,
    max_tokens: int,
    seed: int,
    count_tokens: Counter = word_count,
) -> list[WorkItem]:
    rng = np.random.default_rng(seed)
    available = np.array([bool(texts_by_cluster.get(c)) for c in range(len(probabilities))])
    p = np.where(available, probabilities, 0.0)
    if p.sum() == 0:
        raise UserError("no corpus documents fall into the clusters the mix asks for")
    p = p / p.sum()
    clusters = rng.choice(len(p), size=n, p=p)
    targets = lengths.sample(rng, n)
    items = []
    for i, (cluster, target) in enumerate(zip(clusters.tolist(), targets.tolist())):
        prompt = _compose(texts_by_cluster[cluster], int(target), rng)
        tokens = count_tokens(prompt)
        if tokens > target:  # a tokenizer counts more tokens than words: cut back in proportion, once
            words = prompt.split()
            prompt = " ".join(words[: max(1, len(words) * int(target) // tokens)])
            tokens = count_tokens(prompt)
        items.append(WorkItem(i, cluster, prompt, tokens, max_tokens))
    return items


def _compose(texts: Sequence[str], target_words: int, rng: np.random.Generator) -> str:
    """Documents of one cluster, joined until `target_words` words, then cut there."""
    words: list[str] = []
    while len(words) < target_words:
        words.extend(texts[int(rng.integers(len(texts)))].split())
    return " ".join(words[:target_words])


def save_workload(items: Sequence[WorkItem], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for item in items:
            f.write(orjson.dumps(asdict(item)) + b"\n")


def load_workload(path: Path) -> list[WorkItem]:
    if not path.is_file():
        raise UserError(f"workload file not found: {path}")
    items = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(WorkItem(**orjson.loads(line)))
            except (orjson.JSONDecodeError, TypeError) as exc:
                raise UserError(f"{path}:{number}: not a workload item ({exc})") from None
    if not items:
        raise UserError(f"{path} holds no requests")
    return items
