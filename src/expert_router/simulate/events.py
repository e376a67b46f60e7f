"""The discrete-event loop: a clock that jumps from one scheduled event to the next."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class EventQueue:
    """Callbacks at virtual times; ties run in the order they were scheduled (deterministic runs)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, time: float, callback: Callable[[], None]) -> None:
        if time < self.now:
            raise ValueError(f"cannot schedule in the past ({time} < {self.now})")
        heapq.heappush(self._heap, (time, next(self._order), callback))

    def after(self, delay: float, callback: Callable[[], None]) -> None:
        self.at(self.now + delay, callback)

    def run(self, until: float | None = None) -> None:
        """Run events in time order until none are left (or the next is after `until`)."""
        while self._heap and (until is None or self._heap[0][0] <= until):
            self.now, _, callback = heapq.heappop(self._heap)
            callback()

    def __len__(self) -> int:
        return len(self._heap)
