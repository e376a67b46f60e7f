"""The requests a run sends: prompts drawn per cluster by a mix, shaped to drawn input lengths.

Everything is drawn before the run starts (nothing is tokenized or classified on the hot path), from
one seed, and can be saved and replayed exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from expert_router.errors import UserError
from expert_router.loadgen.lengths import LengthDistribution, parse_lengths

Counter = Callable[[str], int]


@dataclass(frozen=True)
class WorkItem:
    id: int
    cluster: int
    prompt: str
    input_tokens: int
    max_tokens: int
    length_unit: str = "tokens"
    """What `input_tokens` counts: a tokenizer's `tokens`, or whitespace `words` when none was given."""


class WorkloadSpec(BaseModel):
    """How a workload is drawn: from which corpus, tagged by which classifier, mixed and shaped how.

    The experiment runner and `expert-router load` both draw through `draw_workload(spec)`.
    """

    model_config = ConfigDict(extra="forbid")

    classifier: Path
    corpus: str = "demo"
    tokenizer: Path | None = Field(None, description="tokenizer.json of the served model: lengths in its tokens")
    mix: Literal["uniform", "normal"] = "uniform"
    mix_mean: float | None = None
    mix_std: float | None = None
    input_lengths: str = "mlperf"
    input_mean: float = 335.0
    input_std: float = 30.0
    max_tokens: int = Field(1000, ge=1)
    pool: int = Field(1000, ge=1, description="distinct prompts drawn")
    seed: int = 0


def draw_workload(spec: WorkloadSpec) -> list[WorkItem]:
    """Classify the corpus, then draw `spec.pool` prompts by the mix and the length distribution."""
    k, by_cluster = clustered_corpus(spec.classifier, spec.corpus)
    count = word_count if spec.tokenizer is None else tokenizer_counter(spec.tokenizer)
    probabilities = mix_probabilities(k, spec.mix, spec.mix_mean, spec.mix_std)
    lengths = parse_lengths(spec.input_lengths, spec.input_mean, spec.input_std)
    return build_workload(by_cluster, spec.pool, probabilities, lengths, spec.max_tokens, spec.seed, count)


@functools.lru_cache(maxsize=4)
def clustered_corpus(classifier_path: Path, corpus: str) -> tuple[int, dict[int, tuple[str, ...]]]:
    """The corpus's texts by the cluster the classifier gives them, and k. Kept for the process: an
    experiment draws one workload per cell from the same corpus, and reading and classifying the whole
    corpus is what a draw costs."""
    from expert_router.classifier import Classifier
    from expert_router.corpus import load_corpus

    classifier = Classifier.load(classifier_path)
    texts = [d.text for d in load_corpus(corpus)]
    by_cluster: dict[int, list[str]] = {}
    for text, cluster in zip(texts, classifier.route(texts).cluster.tolist()):
        by_cluster.setdefault(cluster, []).append(text)
    return classifier.k, {c: tuple(t) for c, t in by_cluster.items()}


def tokenizer_counter(path: Path) -> Counter:
    """Counts tokens with a Hugging Face `tokenizer.json`."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("--tokenizer needs the `tokenizers` package: pip install tokenizers") from None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
        raise UserError(f"cannot read tokenizer {path}: {exc}") from None
    return lambda text: len(tokenizer.encode(text).ids)


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
        z = (np.arange(k) - mean) / std
        density = np.exp(-0.5 * z * z) / (std * np.sqrt(2 * np.pi))  # the normal pdf (SciPy's: 0.6 s to import)
        if density.sum() <= 0:
            raise UserError("the normal mix puts no weight on any cluster: check --mix-mean")
        return density / density.sum()
    raise UserError(f"unknown mix {mix!r}: use uniform or normal")


def word_count(text: str) -> int:
    """Tokens when no tokenizer is given: whitespace-separated words."""
    return len(text.split())


def build_workload(
    texts_by_cluster: Mapping[int, Sequence[str]],
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
        prompt, tokens = _fit(prompt, int(target), count_tokens)
        unit = "words" if count_tokens is word_count else "tokens"
        items.append(WorkItem(i, cluster, prompt, tokens, max_tokens, unit))
    return items


def _fit(prompt: str, target: int, count_tokens: Counter) -> tuple[str, int]:
    """Cut a prompt back until it has at most `target` tokens (a tokenizer counts more tokens than words)."""
    words = prompt.split()
    tokens = count_tokens(prompt)
    while tokens > target and len(words) > 1:
        words = words[: max(1, min(len(words) - 1, len(words) * target // tokens))]
        prompt = " ".join(words)
        tokens = count_tokens(prompt)
    return prompt, tokens


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
