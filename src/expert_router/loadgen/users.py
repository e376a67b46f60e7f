"""Run users against a target: closed loop (N users, each waits for its answer) or open loop (Poisson).

The spine of a run: warm up (requests not recorded) -> measure until the deadline or the request count
-> self-check. Process p of P takes the workload's items p, p+P, p+2P, ...: processes never send the
same prompt at the same time, and request ids stay unique across them.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import resource
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from expert_router.loadgen.client import Target, send
from expert_router.loadgen.records import RecordWriter, RequestRecord
from expert_router.loadgen.selfcheck import PERIOD_S, SelfCheck, self_check
from expert_router.loadgen.workload import WorkItem
from expert_router.wire import ConnectionPool, clock


@dataclass
class RunSettings:
    url: str
    chat: bool = False
    model: str | None = None
    users: int = 1
    mode: Literal["closed", "open"] = "closed"
    rate: float | None = None
    duration_s: float | None = None
    requests: int | None = None
    ignore_eos: bool = False
    warmup: int = 1
    """Requests per user (open loop: in all) sent and answered before measuring; never recorded."""
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 30.0
    process: int = 0
    processes: int = 1

    def target(self) -> Target:
        return Target(self.url.rstrip("/"), self.chat, self.model, self.ignore_eos)


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


class Work:
    """This process's share of the workload in a cycle, up to `limit` requests, each numbered."""

    def __init__(self, items: Sequence[WorkItem], limit: int | None, process: int, processes: int):
        mine = list(items[process::processes]) or list(items)
        self._cycle: Iterator[WorkItem] = itertools.cycle(mine)
        self.remaining = limit
        self._ids = itertools.count(process, processes)

    def next(self, counted: bool = True) -> tuple[int, WorkItem] | None:
        if counted and self.remaining is not None:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
        return next(self._ids), next(self._cycle)


@dataclass
class _Run:
    """What every user of one run shares."""

    settings: RunSettings
    target: Target
    pool: ConnectionPool
    work: Work
    writer: RecordWriter | None
    t0: float
    stats: LiveStats
    stop: asyncio.Event
    deadline: float | None = None


async def run(
    settings: RunSettings,
    items: Sequence[WorkItem],
    writer: RecordWriter,
    t0: float,
    stats: LiveStats,
    on_tick: Callable[[], None] | None = None,
) -> SelfCheck:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool = ConnectionPool(settings.connect_timeout_s)
    shared = _Run(
        settings,
        settings.target(),
        pool,
        Work(items, settings.requests, settings.process, settings.processes),
        writer,
        t0,
        stats,
        stop,
    )
    thresholds = _quiet_gc()
    cpu_start, wall_start = _cpu_seconds(), time.monotonic()
    monitor = asyncio.create_task(_watch_lag(stats, on_tick))
    try:
        await _warm_up(shared)
        stats.lag_ms.clear()
        cpu_start, wall_start = _cpu_seconds(), time.monotonic()
        await _measure(shared)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        monitor.cancel()
        pool.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    run_s = max(time.monotonic() - wall_start, 1e-9)
    return self_check(
        stats.lag_ms,
        (_cpu_seconds() - cpu_start) / run_s,
        run_s,
        stats.failed,
        stats.done + stats.failed,
        interrupted=stop.is_set(),
    )


def _quiet_gc() -> tuple[int, int, int]:
    """The cyclic garbage collector stops the loop for tens of ms once thousands of streams' objects
    exist; token times would carry those pauses. Everything made so far is frozen out of its view,
    and full collections are made rare: a run creates little cyclic garbage."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(50_000, 50, 100)
    return thresholds


async def _warm_up(shared: _Run) -> None:
    """Requests that fill caches and connections first; not recorded, not counted towards --requests."""
    settings = shared.settings
    count = settings.warmup * (settings.users if settings.mode == "closed" else 1)
    warm = _Run(**{**shared.__dict__, "writer": None, "stats": LiveStats()})
    tasks = []
    for user in range(count):
        work = shared.work.next(counted=False)
        assert work is not None
        tasks.append(asyncio.create_task(_one(warm, work, user, clock() - shared.t0)))
    await _until_stopped(shared.stop, tasks)


async def _measure(shared: _Run) -> None:
    settings = shared.settings
    shared.deadline = None if settings.duration_s is None else clock() + settings.duration_s
    if settings.mode == "closed":
        tasks = [
            asyncio.create_task(_closed_user(shared, settings.process + u * settings.processes))
            for u in range(settings.users)
        ]
    else:
        tasks = [asyncio.create_task(_open_loop(shared))]
    await _until_stopped(shared.stop, tasks)


async def _until_stopped(stop: asyncio.Event, tasks: Sequence[asyncio.Task[object]]) -> None:
    if not tasks:
        return
    waiter = asyncio.create_task(stop.wait())
    users: asyncio.Future[list[object]] = asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait([waiter, users], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
    for task in tasks:
        task.cancel()
    results = await users
    waiter.cancel()
    for result in results:
        if isinstance(result, Exception):
            raise result  # a bug in a user, not a failed request (those are recorded)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _watch_lag(stats: LiveStats, on_tick: Callable[[], None] | None) -> None:
    ticks = 0
    while True:
        before = time.monotonic()
        await asyncio.sleep(PERIOD_S)
        stats.lag_ms.append(max(0.0, (time.monotonic() - before - PERIOD_S) * 1000))
        ticks += 1
        if on_tick is not None and ticks % 50 == 0:
            on_tick()


async def _one(shared: _Run, work: tuple[int, WorkItem], user: int, t_scheduled: float) -> RequestRecord:
    request_id, item = work
    stats = shared.stats
    record = RequestRecord(
        request_id=request_id,
        workload_id=item.id,
        user_id=user,
        cluster_drawn=item.cluster,
        prompt_tokens=item.input_tokens,
        max_tokens=item.max_tokens,
        t_scheduled=t_scheduled,
    )
    stats.inflight += 1
    try:
        await send(
            shared.pool, shared.target, shared.target.body(item), record, shared.t0, shared.settings.request_timeout_s
        )
    finally:
        stats.inflight -= 1
        if shared.writer is not None:
            shared.writer.write(record)  # even when cancelled: nothing that was sent is lost
        if record.ok:
            stats.done += 1
        else:
            stats.failed += 1
        stats.tokens += record.output_tokens
        if record.t_first_token is not None:
            stats.last_ttft_ms = (record.t_first_token - record.t_start) * 1000
    return record


BACKOFF_S = (0.05, 1.0)
"""A closed-loop user that cannot reach the target waits this long before its next request, doubling
per failure in a row up to the second figure."""


async def _closed_user(shared: _Run, user: int) -> None:
    """One user: a request, its whole answer, the next. A request that got no answer at all (the target
    unreachable, or closing connections before any response) is followed by a back-off: sent again at
    once, a user against a stopped server made tens of thousands of failed requests a second, each a
    record, and starved the other users of the loop. A server that answers, even with an error, sets
    the pace as before."""
    backoff = 0.0
    while not shared.stop.is_set() and (shared.deadline is None or clock() < shared.deadline):
        work = shared.work.next()
        if work is None:
            return
        record = await _one(shared, work, user, clock() - shared.t0)
        if record.http_status is not None or record.status == "cancelled":
            backoff = 0.0
            continue
        backoff = min(max(backoff * 2, BACKOFF_S[0]), BACKOFF_S[1])
        if shared.deadline is not None:
            backoff = min(backoff, max(shared.deadline - clock(), 0.0))
        await asyncio.sleep(backoff)  # a stop cancels it


async def _open_loop(shared: _Run) -> None:
    """Poisson arrivals on an absolute schedule fixed up front, so a late send shows as late:
    `t_scheduled` is the schedule's time, and latencies can be measured from it (MLPerf LoadGen's way,
    which keeps client slip from hiding as coordinated omission). Every arrival is a user of its own."""
    settings = shared.settings
    rng = np.random.default_rng(settings.process)
    rate = settings.rate or 1.0
    inflight: set[asyncio.Task[RequestRecord]] = set()
    start, t_next = clock(), 0.0
    try:
        while not shared.stop.is_set():
            work = shared.work.next()
            if work is None:
                break
            t_next += float(rng.exponential(1 / rate))
            now = clock()
            if shared.deadline is not None and max(start + t_next, now) >= shared.deadline:
                break  # the schedule's end, or the clock's: a rate the client cannot keep up with ends too
            # Behind schedule, the send is not skipped (it shows as late) but the loop yields, so that
            # what was sent runs: at a rate past what the client can send it never did, and never ended.
            await asyncio.sleep(max(start + t_next - now, 0.0))
            task = asyncio.create_task(_one(shared, work, work[0], start + t_next - shared.t0))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.gather(*inflight)
    finally:
        for task in inflight:
            task.cancel()
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
