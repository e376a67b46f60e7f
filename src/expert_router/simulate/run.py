"""An experiment in virtual time: every cell (configuration x mix x users x repetition) simulated and
written as a real run writes it — `runs/CONFIG/MIX/uN/rR/` with cell.json, records.jsonl (a meta line,
then one `RequestRecord` per request), workload.jsonl and summary.json — so the same metrics, report
and analysis apply; plus digest.npz, the run reduced to what the report reads (`analysis/digest.py`),
so the report of a full sweep need not read the token times again. Times are seconds of emulated time
from the cell's start (`t0_monotonic` 0).
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from expert_router.analysis import digest
from expert_router.analysis.results import CELL_FILE, DIGEST_FILE, cell_folder
from expert_router.experiment import Configuration, Experiment, load_experiment
from expert_router.loadgen.records import write_records
from expert_router.loadgen.workload import WorkItem, load_workload
from expert_router.simulate.events import EventQueue
from expert_router.simulate.system import GatewayOverhead, System
from expert_router.simulate.users import Load, Users


@dataclass(frozen=True)
class Cell:
    configuration: Configuration
    mix: str
    users: int
    repetition: int


def simulate_cell(
    cell: Cell, base: Path, items: list[WorkItem], routes: list[int], load: Load, overhead: GatewayOverhead, out: Path
) -> dict[str, object]:
    """Simulate one cell into folder `out`; returns its summary document."""
    events = EventQueue()
    system = System(cell.configuration, base, events, seed=cell.repetition)
    started = time.monotonic()
    gc.disable()  # a cell allocates millions of token times and no cycles worth collecting on the way
    try:
        records = Users(system, events, items, routes, overhead, seed=cell.repetition).run(load)
    finally:
        gc.enable()
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "t0_monotonic": 0.0,
        "virtual": True,
        "started_at": time.time(),
        "settings": {
            "users": load.users,
            "mode": load.mode,
            "rate": load.rate,
            "duration_s": load.duration_s,
            "gateway_overhead_ms": [overhead.mean_s * 1000, overhead.std_s * 1000],
        },
        "wall_s": time.monotonic() - started,
    }
    write_records(out / "records.jsonl", records, meta)
    run, summary = digest.summarize(records, load.mode)
    check = {"lag_p99_ms": 0.0, "lag_max_ms": 0.0, "cpu_share": 0.0, "valid": True, "reasons": [], "virtual": True}
    document: dict[str, object] = {
        "meta": meta,
        "summary": summary.as_dict(),
        "self_check": [check],
        "valid": True,
        "reasons": [],
    }
    digest.save(run, out / DIGEST_FILE)
    (out / "summary.json").write_text(json.dumps(document, indent=2))
    (out / CELL_FILE).write_text(
        json.dumps(
            {
                "configuration": cell.configuration.name,
                "mix": cell.mix,
                "users": cell.users,
                "repetition": cell.repetition,
            }
        )
    )
    return document


def classifier_routes(experiment: Experiment, items: list[WorkItem]) -> list[int]:
    """The cluster the gateway would route each prompt to: the same classifier on the same text."""
    from expert_router.classifier import Classifier

    classifier = Classifier.load(experiment.classifier)
    routes: list[int] = classifier.route([item.prompt for item in items]).cluster.tolist()
    return routes


@dataclass(frozen=True)
class Task:
    """One cell to simulate, with everything a worker process needs (picklable)."""

    cell: Cell
    base: Path
    items: list[WorkItem]
    routes: list[int]
    load: Load
    overhead: GatewayOverhead
    folder: Path


def _run_task(task: Task) -> Path:
    if task.folder.exists():
        shutil.rmtree(task.folder)  # half-finished: redo it whole
    simulate_cell(task.cell, task.base, task.items, task.routes, task.load, task.overhead, task.folder)
    return task.folder


def plan(
    path: Path,
    results: Path,
    overhead: GatewayOverhead,
    duration_s: float | None = None,
    workloads: dict[str, list[WorkItem]] | None = None,
) -> list[Task]:
    """Every cell of the experiment file not yet in `results` (resume), the largest loads first so that
    parallel workers finish together."""
    from expert_router.experiment import cell_workload

    experiment, base = load_experiment(path)
    results.mkdir(parents=True, exist_ok=True)
    tasks = []
    for mix in experiment.mixes:
        for users in experiment.users:
            for repetition in range(experiment.repetitions):
                items = (workloads or {}).get(mix) or load_workload(
                    cell_workload(experiment, mix, users, repetition, results)
                )
                routes = classifier_routes(experiment, items)
                load = Load(users=users, duration_s=duration_s or experiment.duration_s)
                for configuration in experiment.configurations:
                    folder = cell_folder(results, configuration.name, mix, users, repetition)
                    if not (folder / "summary.json").is_file():
                        tasks.append(
                            Task(
                                Cell(configuration, mix, users, repetition), base, items, routes, load, overhead, folder
                            )
                        )
    return sorted(tasks, key=lambda t: -t.cell.users)


def simulate_experiment(
    path: Path,
    results: Path,
    overhead: GatewayOverhead,
    workloads: dict[str, list[WorkItem]] | None = None,
    workers: int = 1,
    duration_s: float | None = None,
) -> list[Path]:
    """Every cell of the experiment; cells already in `results` are kept (resume). Cells are independent
    simulations, so `workers` processes run them side by side (one per core)."""
    tasks = plan(path, results, overhead, duration_s, workloads)
    if workers <= 1 or len(tasks) <= 1:
        return [_run_task(task) for task in tasks]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(pool.imap_unordered(_run_task, tasks))
