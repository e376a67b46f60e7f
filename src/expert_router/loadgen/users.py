"""Run users against a target: closed loop (N users, each waits for its answer) or open loop (Poisson).

The simulator watches itself: event-loop lag (how late a 10 ms timer fires) and its own CPU. When
either shows that it, not the target, limited the measurement, the run is marked not valid.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import resource
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from expert_router.loadgen.client import clock, request_body, send, stamping_connector
from expert_router.loadgen.records import RecordWriter, RequestRecord
from expert_router.loadgen.workload import WorkItem

LAG_LIMIT_MS = 5.0
CPU_LIMIT = 0.90


@dataclass
class RunSettings:
    url: str
    chat: bool = False
    model: str | None = None
    users: int = 1
    mode: str = "closed"
    rate: float | None = None
    duration_s: float | None = None
    requests: int | None = None
    ignore_eos: bool = False
    request_timeout_s: float = 600.0
    process: int = 0
    processes: int = 1


@dataclass
class LiveStats:
    """What the progress display shows; updated by the users, read twice a second."""

    done: int = 0
    failed: int = 0
    inflight: int = 0
    tokens: int = 0
    last_ttft_ms: float | None = None
    started: float = field(default_factory=time.monotonic)
    lag_ms: list[float] = field(default_factory=list)


@dataclass
class SelfCheck:
    lag_p99_ms: float
    lag_max_ms: float
    cpu_share: float
    valid: bool
    reasons: list[str]


async def run(settings: RunSettings, items: Sequence[WorkItem], writer: RecordWriter, t0: float,
              stats: LiveStats, on_tick: Callable[[], None] | None = None) -> SelfCheck:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    connector = stamping_connector()  # no hidden connection cap; arrivals stamped off the socket
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
    # The cyclic garbage collector stops the loop for tens of ms once thousands of streams' objects
    # exist; token times would carry those pauses. Everything made so far is frozen out of its view,
    # and full collections are made rare: a run creates little cyclic garbage.
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)
    cpu_start, wall_start = _cpu_seconds(), time.monotonic()
    monitor = asyncio.create_task(_watch_lag(stats, on_tick))
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=2**20,
                                         auto_decompress=False) as session:
            work = _Work(items, settings.requests, settings.process, settings.processes)
            deadline = None if settings.duration_s is None else t0 + settings.duration_s
            if settings.mode == "closed":
                tasks = [asyncio.create_task(_closed_user(session, settings, work, writer, t0, stats, deadline, stop,
                                                          settings.process + u * settings.processes))
                         for u in range(settings.users)]
            else:
                tasks = [asyncio.create_task(_open_loop(session, settings, work, writer, t0, stats, deadline, stop))]
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, asyncio.gather(*tasks)], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            waiter.cancel()
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        monitor.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    cpu_share = (_cpu_seconds() - cpu_start) / max(time.monotonic() - wall_start, 1e-9)
    return self_check(stats.lag_ms, cpu_share, interrupted=stop.is_set())


def self_check(lag_ms: list[float], cpu_share: float, interrupted: bool = False) -> SelfCheck:
    lag = np.asarray(lag_ms or [0.0])
    p99, worst = float(np.percentile(lag, 99)), float(lag.max())
    reasons = []
    if p99 > LAG_LIMIT_MS:
        reasons.append(f"event-loop lag p99 {p99:.1f} ms > {LAG_LIMIT_MS:g} ms: the simulator was too busy to read "
                       "tokens on time; use --processes or fewer users")
    if cpu_share > CPU_LIMIT:
        reasons.append(f"the simulator used {cpu_share:.0%} of a core: it may have been the bottleneck")
    if interrupted:
        reasons.append("the run was interrupted")
    return SelfCheck(p99, worst, cpu_share, not reasons, reasons)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _watch_lag(stats: LiveStats, on_tick: Callable[[], None] | None, period: float = 0.01) -> None:
    ticks = 0
    while True:
        before = time.monotonic()
        await asyncio.sleep(period)
        stats.lag_ms.append(max(0.0, (time.monotonic() - before - period) * 1000))
        ticks += 1
        if on_tick is not None and ticks % 50 == 0:
            on_tick()


class _Work:
    """The workload in a cycle, up to `limit` requests; numbers each request it hands out.

    Request ids are unique across processes: process p of P numbers its requests p, p + P, p + 2P...
    """

    def __init__(self, items: Sequence[WorkItem], limit: int | None, process: int, processes: int):
        self._cycle = itertools.cycle(items)
        self.remaining = limit
        self._ids = itertools.count(process, processes)

    def next(self) -> tuple[int, WorkItem] | None:
        if self.remaining is not None:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
        return next(self._ids), next(self._cycle)


def _endpoint(settings: RunSettings) -> str:
    return settings.url.rstrip("/") + ("/v1/chat/completions" if settings.chat else "/v1/completions")


async def _one(session, settings: RunSettings, work: tuple[int, WorkItem], writer: RecordWriter, t0: float,
               stats: LiveStats, user: int, t_scheduled: float) -> None:
    request_id, item = work
    record = RequestRecord(request_id=request_id, workload_id=item.id, user_id=user, cluster_drawn=item.cluster,
                           prompt_tokens=item.input_tokens, max_tokens=item.max_tokens,
                           t_scheduled=t_scheduled, t_start=0.0)
    body = request_body(item, settings.chat, settings.model, settings.ignore_eos)
    stats.inflight += 1
    try:
        await send(session, _endpoint(settings), body, record, t0, settings.chat)
    finally:
        stats.inflight -= 1
        writer.write(record)  # even when cancelled: nothing that was sent is lost
        if record.status == "ok":
            stats.done += 1
        else:
            stats.failed += 1
        stats.tokens += record.output_tokens
        if record.t_first_token is not None:
            stats.last_ttft_ms = (record.t_first_token - record.t_start) * 1000


async def _closed_user(session, settings: RunSettings, work: _Work, writer: RecordWriter, t0: float,
                       stats: LiveStats, deadline: float | None, stop: asyncio.Event, user: int) -> None:
    while not stop.is_set() and (deadline is None or clock() < deadline):
        next_work = work.next()
        if next_work is None:
            return
        await _one(session, settings, next_work, writer, t0, stats, user, clock() - t0)


async def _open_loop(session, settings: RunSettings, work: _Work, writer: RecordWriter, t0: float,
                     stats: LiveStats, deadline: float | None, stop: asyncio.Event) -> None:
    """Poisson arrivals on an absolute schedule fixed up front, so a late send shows as late.

    Every arrival is a user of its own: its user id is its request id.
    """
    rng = np.random.default_rng(settings.process)
    rate = settings.rate or 1.0
    inflight: set[asyncio.Task] = set()
    t_next = 0.0
    try:
        while not stop.is_set():
            next_work = work.next()
            if next_work is None:
                break
            t_next += float(rng.exponential(1 / rate))
            if deadline is not None and t0 + t_next >= deadline:
                break
            delay = t0 + t_next - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(session, settings, next_work, writer, t0, stats, next_work[0], t_next))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.gather(*inflight)
    finally:
        for task in inflight:
            task.cancel()
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
