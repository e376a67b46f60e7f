"""Progress displays for long CLI jobs. They write to stderr, so stdout stays clean for data (JSON lines)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.status import Status
from rich.table import Table

if TYPE_CHECKING:
    from expert_router.classifier import Classifier

T = TypeVar("T")

console = Console(stderr=True)
"""Where progress and summaries go; `rich` drops the animation when stderr is not a terminal."""

output = Console()
"""Where results that a user asked for go (tables on stdout)."""


def counted(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield `items` while showing how many have passed (and of how many, when `total` is known)."""
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    columns += [BarColumn(), MofNCompleteColumn()] if total else [TextColumn("{task.completed:,.0f}")]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


class Stages:
    """A spinner naming the stage under way; remembers how long each stage took."""

    def __init__(self, title: str):
        self.title = title
        self.durations: dict[str, float] = {}
        self._current: str | None = None
        self._started = 0.0
        self._status: Status | None = None

    def __call__(self, name: str) -> None:
        self._close_stage()
        self._current, self._started = name, time.perf_counter()
        if self._status is not None:
            self._status.update(f"{self.title}: {name}")

    def _close_stage(self) -> None:
        if self._current is not None:
            self.durations[self._current] = time.perf_counter() - self._started
            self._current = None

    @contextmanager
    def running(self) -> Iterator[Stages]:
        with console.status(self.title) as status:
            self._status = status
            try:
                yield self
            finally:
                self._close_stage()
                self._status = None


def cluster_table(classifier: Classifier, title: str, terms: int) -> Table:
    """Each cluster's training size and top terms, as `fit`, `inspect` and the demo show them."""
    table = Table(title=title)
    table.add_column("cluster", justify="right")
    table.add_column("documents", justify="right")
    table.add_column("top terms")
    sizes: list[int | None] = [*classifier.train_sizes] if classifier.train_sizes else [None] * classifier.k
    for cluster, (size, top) in enumerate(zip(sizes, classifier.top_terms(terms))):
        table.add_row(str(cluster), "-" if size is None else f"{size:,}", ", ".join(top))
    return table
