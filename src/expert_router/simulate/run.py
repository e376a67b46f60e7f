"""An experiment in virtual time: every cell (configuration x mix x users x repetition) simulated and
written as a real run writes it — `runs/CONFIG/MIX/uN/rR/` with cell.json, records.jsonl (a meta line,
then one `RequestRecord` per request), workload.jsonl and summary.json — so the same metrics, report
and analysis apply. Times are seconds of emulated time from the cell's start (`t0_monotonic` 0).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from expert_router.analysis.metrics import summarize
from expert_router.analysis.results import CELL_FILE, cell_folder
from expert_router.experiment import Configuration, Experiment, load_experiment
from expert_router.loadgen.records import RecordWriter
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


def simulate_cell(cell: Cell, base: Path, items: list[WorkItem], routes: list[int], load: Load,
                  overhead: GatewayOverhead, out: Path) -> dict[str, object]:
    """Simulate one cell into folder `out`; returns its summary document."""
    events = EventQueue()
    system = System(cell.configuration, base, events, seed=cell.repetition)
    started = time.monotonic()
    records = Users(system, events, items, routes, overhead, seed=cell.repetition).run(load)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"t0_monotonic": 0.0, "virtual": True, "started_at": time.time(),
            "settings": {"users": load.users, "mode": load.mode, "rate": load.rate, "duration_s": load.duration_s,
                         "gateway_overhead_ms": [overhead.mean_s * 1000, overhead.std_s * 1000]},
            "wall_s": time.monotonic() - started}
    writer = RecordWriter(out / "records.jsonl")
    writer.write_meta(meta)
    for record in records:
        writer.write(record)
    writer.close()
    check = {"lag_p99_ms": 0.0, "lag_max_ms": 0.0, "cpu_share": 0.0, "valid": True, "reasons": [], "virtual": True}
    document: dict[str, object] = {"meta": meta, "summary": summarize(records, mode=load.mode).as_dict(), "self_check": [check],
                                   "valid": True, "reasons": []}
    (out / "summary.json").write_text(json.dumps(document, indent=2))
    (out / CELL_FILE).write_text(json.dumps({"configuration": cell.configuration.name, "mix": cell.mix,
                                             "users": cell.users, "repetition": cell.repetition}))
    return document


def classifier_routes(experiment: Experiment, items: list[WorkItem]) -> list[int]:
    """The cluster the gateway would route each prompt to: the same classifier on the same text."""
    from expert_router.classifier import Classifier

    classifier = Classifier.load(experiment.classifier)
    routes: list[int] = classifier.route([item.prompt for item in items]).cluster.tolist()
    return routes


def simulate_experiment(path: Path, results: Path, overhead: GatewayOverhead,
                        workloads: dict[str, list[WorkItem]] | None = None) -> list[Path]:
    """Every cell of the experiment file; cells already in `results` are kept (resume)."""
    from expert_router.experiment import cell_workload

    experiment, base = load_experiment(path)
    results.mkdir(parents=True, exist_ok=True)
    done = []
    for mix in experiment.mixes:
        for users in experiment.users:
            for repetition in range(experiment.repetitions):
                items = (workloads or {}).get(mix) or load_workload(cell_workload(experiment, mix, users, repetition,
                                                                                  results))
                routes = classifier_routes(experiment, items)
                for configuration in experiment.configurations:
                    folder = cell_folder(results, configuration.name, mix, users, repetition)
                    if (folder / "summary.json").is_file():
                        continue
                    if folder.exists():
                        shutil.rmtree(folder)
                    load = Load(users=users, duration_s=experiment.duration_s)
                    simulate_cell(Cell(configuration, mix, users, repetition), base, items, routes, load, overhead,
                                  folder)
                    done.append(folder)
    return done
