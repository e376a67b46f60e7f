"""An experiment in virtual time: every cell (configuration x mix x users x repetition) simulated and
written as a real run writes it — `runs/CONFIG/MIX/uN/rR/` with cell.json, records.jsonl (a meta line,
then one `RequestRecord` per request; left out with `keep_records=False`), workload.jsonl and
summary.json — so the same metrics, report and analysis apply; plus digest.npz, the run reduced to
what the report reads (`analysis/digest.py`), so the report of a full sweep need not read the token
times again. Times are seconds of emulated time from the cell's start (`t0_monotonic` 0).
"""

from __future__ import annotations

import functools
import gc
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from expert_router.analysis import digest
from expert_router.analysis.results import CELL_FILE, DIGEST_FILE, cell_folder
from expert_router.experiment_file import Configuration, Experiment, check_resume, check_workload, load_experiment
from expert_router.loadgen.records import write_records
from expert_router.loadgen.workload import WorkItem, clustered_corpus, load_workload
from expert_router.simulate.events import EventQueue
from expert_router.simulate.system import GatewayOverhead, System
from expert_router.simulate.users import Load, Users

if TYPE_CHECKING:
    from expert_router.classifier import Classifier


@dataclass(frozen=True)
class Cell:
    configuration: Configuration
    mix: str
    users: int
    repetition: int

    def labels(self) -> dict[str, object]:
        """What cell.json says of it (the report groups repetitions by these)."""
        return {
            "configuration": self.configuration.name,
            "mix": self.mix,
            "users": self.users,
            "repetition": self.repetition,
        }


def simulate_cell(
    cell: Cell,
    base: Path,
    items: list[WorkItem],
    routes: list[int],
    load: Load,
    overhead: GatewayOverhead,
    out: Path,
    keep_records: bool = True,
) -> dict[str, object]:
    """Simulate one cell into folder `out`; returns its summary document. Without `keep_records` the
    cell keeps its digest and summary (all the report reads) but no records.jsonl: a full paper sweep's
    records are about 25 GB."""
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
        "settings": settings_meta(load, overhead),
        "wall_s": time.monotonic() - started,
    }
    if keep_records:
        write_records(out / "records.jsonl", records, meta)
    run = digest.digest(records, load.mode)
    summary = digest.summary_of(run, records)
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
    (out / CELL_FILE).write_text(json.dumps(cell.labels()))
    return document


def settings_meta(load: Load, overhead: GatewayOverhead) -> dict[str, object]:
    """The run's settings as its meta line keeps them (`mode` tells the report closed from open loop)."""
    return {
        "users": load.users,
        "mode": load.mode,
        "rate": load.rate,
        "duration_s": load.duration_s,
        "gateway_overhead_ms": [overhead.mean_s * 1000, overhead.std_s * 1000],
    }


def classifier_routes(experiment: Experiment, items: list[WorkItem]) -> list[int]:
    """The cluster the gateway would route each prompt to: the same classifier on the same text."""
    routes: list[int] = _classifier(experiment.classifier).route([item.prompt for item in items]).cluster.tolist()
    return routes


@functools.lru_cache(maxsize=2)
def _classifier(path: Path) -> Classifier:
    """Loaded once per process (every cell's workload is routed by the same one)."""
    from expert_router.classifier import Classifier

    return Classifier.load(path)


@dataclass(frozen=True)
class Task:
    """One cell to simulate, with everything a worker process needs (picklable). Its workload is drawn
    (or read) and routed by the worker, so that planning costs nothing and the draws run in parallel."""

    cell: Cell
    base: Path
    experiment: Experiment
    results: Path
    load: Load
    overhead: GatewayOverhead
    folder: Path
    items: list[WorkItem] | None = None
    """A workload given in place of the experiment's draw (tests)."""
    keep_records: bool = True


def _run_task(task: Task) -> Path:
    if task.folder.exists():
        shutil.rmtree(task.folder)  # half-finished: redo it whole
    items, routes = _workload(task)
    simulate_cell(task.cell, task.base, items, routes, task.load, task.overhead, task.folder, task.keep_records)
    return task.folder


def _workload(task: Task) -> tuple[list[WorkItem], list[int]]:
    """The cell's prompts and their routes: one draw per mix, users and repetition, shared by the
    configurations (tasks of one cell come one after another, so a worker usually has it at hand)."""
    if task.items is not None:
        return task.items, classifier_routes(task.experiment, task.items)
    from expert_router.experiment import cell_workload

    cell = task.cell
    path = cell_workload(task.experiment, cell.mix, cell.users, cell.repetition, task.results)
    return _routed(task.experiment.classifier, path)


@functools.lru_cache(maxsize=4)
def _routed(classifier: Path, path: Path) -> tuple[list[WorkItem], list[int]]:
    items = load_workload(path)
    return items, _classifier(classifier).route([item.prompt for item in items]).cluster.tolist()


def plan(
    path: Path,
    results: Path,
    overhead: GatewayOverhead,
    duration_s: float | None = None,
    workloads: dict[str, list[WorkItem]] | None = None,
    keep_records: bool = True,
) -> list[Task]:
    """Every cell of the experiment file not yet in `results` (resume), the largest loads first so that
    parallel workers finish together."""
    experiment, base = load_experiment(path)
    if workloads is None:
        check_workload(experiment)
    check_resume(
        results,
        experiment,
        duration_s=experiment.duration_s if duration_s is None else duration_s,  # what the cells ran
        gateway_overhead_s=[overhead.mean_s, overhead.std_s, len(overhead.samples)],
    )
    tasks = []
    for mix in experiment.mixes:
        for users in experiment.users:
            for repetition in range(experiment.repetitions):
                load = Load(users=users, duration_s=experiment.duration_s if duration_s is None else duration_s)
                for configuration in experiment.configurations:
                    folder = cell_folder(results, configuration.name, mix, users, repetition)
                    if not (folder / "summary.json").is_file():
                        cell = Cell(configuration, mix, users, repetition)
                        items = (workloads or {}).get(mix)
                        tasks.append(Task(cell, base, experiment, results, load, overhead, folder, items, keep_records))
    return sorted(tasks, key=lambda t: -t.cell.users)


def simulate_experiment(
    path: Path,
    results: Path,
    overhead: GatewayOverhead,
    workloads: dict[str, list[WorkItem]] | None = None,
    workers: int = 1,
    duration_s: float | None = None,
    keep_records: bool = True,
) -> list[Path]:
    """Every cell of the experiment; cells already in `results` are kept (resume). Cells are independent
    simulations, so `workers` processes run them side by side (one per core)."""
    tasks = plan(path, results, overhead, duration_s, workloads, keep_records)
    if tasks and workloads is None:  # read and classify the corpus once, before the workers fork
        experiment = tasks[0].experiment
        clustered_corpus(experiment.classifier, experiment.corpus)
    if workers <= 1 or len(tasks) <= 1:
        return [_run_task(task) for task in tasks]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(pool.imap_unordered(_run_task, tasks))
