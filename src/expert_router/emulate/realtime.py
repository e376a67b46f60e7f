"""Drive an engine in real time: run a step, sleep its emulated duration (times k), deliver its tokens.

The emulated GPU's timeline is kept exact: each step starts when the previous one ends on that timeline
(or when work arrives at an idle engine), not when the event loop happened to wake up. A late wake-up
therefore delays the delivery of one step's tokens but never shifts the steps after it. How late
deliveries are (`lateness`) is the emulator's own timing error, shown at /stats and by bench/emulator.py.

Time dilation: with k > 1 every emulated duration takes k times as long, for machines that cannot keep up
at k = 1. Metrics divide by k again; request records taken by a client must be divided by k as well
(`scale_times`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from expert_router.emulate.engine import Engine, TokenEvent
from expert_router.emulate.metrics import EngineMetrics
from expert_router.loadgen.records import RequestRecord

clock = time.monotonic
"""The process-wide clock (the user simulator stamps tokens with it too). Not `loop.time()`: uvloop's is
cached per loop iteration and counts whole milliseconds."""

TIMER_SLACK = 0.0015
"""Event-loop timers fire up to 1 ms or more after their time (epoll and libuv count milliseconds). The
driver sleeps until this much before a step's end, then yields to the loop (other streams keep being
served) until the end itself: a median error of tens of microseconds for a few percent of a core."""


@dataclass
class Stream:
    """One request's tokens as they are produced."""

    request_id: int
    prompt_tokens: int
    submitted: float
    queue: asyncio.Queue[tuple[TokenEvent, float]] = field(default_factory=asyncio.Queue)
    first_token: float | None = None
    tokens: int = 0

    async def events(self) -> AsyncIterator[tuple[TokenEvent, float]]:
        """Each token with the time the emulated GPU produced it (on `clock`)."""
        while True:
            event, at = await self.queue.get()
            yield event, at
            if event.finish_reason is not None:
                return


@dataclass
class Lateness:
    """How far token deliveries were from the emulated timeline (early or late), in seconds."""

    steps: int = 0
    total: float = 0.0
    worst: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def add(self, late: float) -> None:
        self.steps += 1
        self.total += late
        self.worst = max(self.worst, late)
        self.recent.append(late)

    @property
    def mean(self) -> float:
        return self.total / self.steps if self.steps else 0.0

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the last 100,000 steps' errors."""
        if not self.recent:
            return 0.0
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


MAX_BEHIND = 0.5
"""Seconds the driver may fall behind its timeline before it gives up catching up (an overloaded machine)."""


async def sleep_until(deadline: float) -> None:
    """Wake at `deadline` on `clock`, within tens of microseconds when the machine is not overloaded."""
    delay = deadline - clock() - TIMER_SLACK
    if delay > 0:
        await asyncio.sleep(delay)
    while clock() < deadline - 2e-5:
        await asyncio.sleep(0)


class RealtimeDriver:
    def __init__(self, engine: Engine, dilation: float = 1.0, metrics: EngineMetrics | None = None):
        self.engine = engine
        self.dilation = dilation
        self.metrics = metrics
        self.lateness = Lateness()
        self._streams: dict[int, Stream] = {}
        self._ids = itertools.count()
        self._wake = asyncio.Event()

    def submit(self, prompt_tokens: int, max_tokens: int, ignore_eos: bool = False) -> Stream:
        """Queue a request (UserError if it can never fit); it joins the batch at the next step."""
        request_id = next(self._ids)
        self.engine.submit(request_id, prompt_tokens, max_tokens, ignore_eos)
        stream = Stream(request_id, prompt_tokens, clock())
        self._streams[request_id] = stream
        self._wake.set()
        return stream

    def cancel(self, stream: Stream) -> None:
        if self._streams.pop(stream.request_id, None) is not None:
            self.engine.abort(stream.request_id)
            self._wake.set()  # what it held is free: a request waiting for room may run now
            if self.metrics is not None:
                self.metrics.aborted()

    async def run(self) -> None:
        step_end: float | None = None
        while True:
            if not self.engine.has_work:
                self._wake.clear()
                await self._wake.wait()
                step_end = None
            # the timeline continues from the last step's end; more than MAX_BEHIND late, it restarts now
            start = clock() if step_end is None else max(step_end, clock() - MAX_BEHIND)
            result = self.engine.step()
            if result is None:  # nothing schedulable: wait for the next request
                step_end = None
                self._wake.clear()
                await self._wake.wait()
                continue
            step_end = start + result.duration * self.dilation
            await sleep_until(step_end)
            self.lateness.add(abs(clock() - step_end))
            self._deliver(result.events, step_end)
            if self.metrics is not None:
                self.metrics.update(self.engine)

    def _deliver(self, events: list[TokenEvent], at: float) -> None:
        for event in events:
            stream = self._streams.get(event.request_id)
            if stream is None:
                continue
            if stream.first_token is None:
                stream.first_token = at
            stream.tokens += 1
            stream.queue.put_nowait((event, at))
            if event.finish_reason is not None:
                del self._streams[event.request_id]
                self._record(stream, event.finish_reason, at)

    def _record(self, stream: Stream, reason: str, at: float) -> None:
        if self.metrics is None or stream.first_token is None:
            return
        k = self.dilation
        tpot = (at - stream.first_token) / (stream.tokens - 1) / k if stream.tokens > 1 else None
        self.metrics.finished(reason, (stream.first_token - stream.submitted) / k, tpot, (at - stream.submitted) / k)


def scale_times(record: RequestRecord, dilation: float) -> RequestRecord:
    """A request record with every time divided by `dilation` (a run made k times slower, scaled back)."""

    def scaled(value: float | None) -> float | None:
        return None if value is None else value / dilation

    return replace(
        record,
        t_scheduled=record.t_scheduled / dilation,
        t_start=record.t_start / dilation,
        t_first_token=scaled(record.t_first_token),
        t_end=scaled(record.t_end),
        chunk_times=[t / dilation for t in record.chunk_times],
        server_timing={k: v / dilation for k, v in record.server_timing.items()},
    )
