"""Shared fixtures: a small labelled corpus that needs no network and no installed packages."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

TOPICS = {
    "cooking": [
        "recipe",
        "oven",
        "bake",
        "flour",
        "sugar",
        "butter",
        "onion",
        "garlic",
        "simmer",
        "sauce",
        "pasta",
        "tomato",
        "salt",
        "pepper",
        "roast",
    ],
    "computing": [
        "kernel",
        "compiler",
        "python",
        "memory",
        "pointer",
        "segfault",
        "linux",
        "process",
        "thread",
        "socket",
        "bytes",
        "cache",
        "cpu",
    ],
    "law": [
        "court",
        "judge",
        "contract",
        "lawyer",
        "tenant",
        "lease",
        "plaintiff",
        "statute",
        "appeal",
        "verdict",
        "evidence",
        "liability",
    ],
    "space": [
        "rocket",
        "orbit",
        "planet",
        "galaxy",
        "telescope",
        "astronaut",
        "moon",
        "mars",
        "comet",
        "nebula",
        "gravity",
        "launch",
    ],
}


def make_corpus(n_per_topic: int = 60, seed: int = 0) -> list[tuple[str, str]]:
    """Texts of 12-20 topic words with a little shared filler; returns (text, label) pairs."""
    rng = random.Random(seed)
    filler = ["the", "of", "and", "very", "quite", "often", "some", "people", "say", "that"]
    corpus = []
    for _ in range(n_per_topic):
        for label, words in TOPICS.items():
            n = rng.randint(12, 20)
            text = " ".join(rng.choice(words) if rng.random() < 0.8 else rng.choice(filler) for _ in range(n))
            corpus.append((f"{text} {rng.randint(1, 999)}", label))
    return corpus


@pytest.fixture(scope="session", autouse=True)
def corpus_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Named corpora cached in the session's own folder (the CLI processes the tests start inherit it): the
    demo corpus is built once per run, not once per process, and never from or into the user's cache."""
    folder = tmp_path_factory.mktemp("corpus-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EXPERT_ROUTER_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def small_corpus() -> list[tuple[str, str]]:
    return make_corpus()


@pytest.fixture(scope="session")
def small_classifier(tmp_path_factory: pytest.TempPathFactory, small_corpus: list[tuple[str, str]]) -> Path:
    """Eight clusters of the tiny corpus, saved: a second to fit, enough for routing to differ by prompt."""
    from expert_router.classifier import Classifier, ClassifierSettings

    out = tmp_path_factory.mktemp("small-classifier") / "classifier"
    Classifier.fit([text for text, _ in small_corpus], ClassifierSettings(k=8, dims=20)).save(out)
    return out


@pytest.fixture
def redis_url(tmp_path):
    """A scratch Redis server (Debian's redis-server, installed by scripts/setup.sh), stopped after the test."""
    from expert_router.testing import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        yield server.url
