"""Running the user simulator in this process or spread over several, records always kept."""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from multiprocessing.queues import Queue
from pathlib import Path
from queue import Empty
from typing import Any

from expert_router.http import install_uvloop
from expert_router.loadgen.records import RecordWriter
from expert_router.loadgen.users import LiveStats, RunSettings, run
from expert_router.loadgen.workload import WorkItem

REPORT_POLL_S = 1.0
"""How often the parent, waiting for the workers' self-checks, looks whether any worker is still alive."""


def run_here(
    settings: RunSettings,
    items: Sequence[WorkItem],
    records_path: Path,
    t0: float,
    stats: LiveStats | None = None,
    on_tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One process's users; returns its self-check as a dict. Records are appended to `records_path`."""
    install_uvloop()
    writer = RecordWriter(records_path)
    try:
        result = asyncio.run(run(settings, items, writer, t0, stats or LiveStats(), on_tick=on_tick))
    finally:
        writer.close()
    return asdict(result)


def _worker(
    settings: RunSettings, items: Sequence[WorkItem], path: Path, t0: float, offset: int, queue: Queue[dict[str, Any]]
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent tells the workers to stop (SIGTERM)
    queue.put(run_here(settings, items, path, t0) | {"worker": offset})


def run_processes(
    settings: RunSettings, items: Sequence[WorkItem], records_path: Path, t0: float, processes: int
) -> list[dict[str, Any]]:
    """Users spread over `processes` processes, each with a disjoint stride of the workload; their
    records merged into `records_path` whatever happens. Returns the self-checks that came back."""
    context = multiprocessing.get_context("spawn")
    queue: Queue[dict[str, Any]] = context.Queue()
    workers = []
    for p in range(processes):
        share = settings.users // processes + (1 if p < settings.users % processes else 0)
        part = replace(
            settings,
            users=max(share, 1),
            process=p,
            processes=processes,
            rate=None if settings.rate is None else settings.rate / processes,
            requests=None
            if settings.requests is None
            else settings.requests // processes + (1 if p < settings.requests % processes else 0),
        )
        path = records_path.with_name(f"records.part{p}.jsonl")
        workers.append((context.Process(target=_worker, args=(part, items, path, t0, p, queue)), path))
    for process, _ in workers:
        process.start()
    checks: list[dict[str, Any]] = []
    try:
        while len(checks) < len(workers):
            try:
                checks.append(queue.get(timeout=REPORT_POLL_S))
            except Empty:
                if not any(process.is_alive() for process, _ in workers):
                    break  # one ended without reporting (an error, a kill): waiting for it would never end
    except KeyboardInterrupt:
        for process, _ in workers:
            process.terminate()  # SIGTERM: each worker stops its users and writes what it has
    finally:
        for process, _ in workers:
            process.join()
        while len(checks) < len(workers):  # a report that came in as the last worker ended
            try:
                checks.append(queue.get_nowait())
            except Empty:
                break
        with open(records_path, "ab") as merged:  # one file, whatever happened
            for _, path in workers:
                if path.exists():
                    merged.write(path.read_bytes())
                    path.unlink()
    return checks
