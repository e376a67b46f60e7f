"""Sweeps: configurations x mixes x user counts x repetitions, into one results folder, then a report.

A configuration is the URL the user simulator targets plus the services that make it (expert
servers, a gateway), each a command the runner starts, waits for and stops. On a laptop those are
`expert-router` commands; on GPUs the same file lists `vllm serve ...` or points at running servers.
A run can be interrupted and resumed: finished cells are kept, half-finished ones are redone.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expert_router import __version__
from expert_router.analysis.results import CELL_FILE, cell_folder
from expert_router.errors import UserError
from expert_router.experiment_file import (
    Configuration,
    Experiment,
    Service,
    check_resume,
    check_workload,
    load_experiment,
)
from expert_router.loadgen.workload import draw_workload, save_workload
from expert_router.processes import http_ok, stop_groups, wait_until
from expert_router.progress import console


def _manifest(experiment: Experiment, path: Path) -> dict[str, Any]:
    import aiohttp
    import numpy
    import sklearn

    return {
        "experiment": experiment.model_dump(mode="json"),
        "experiment_file": str(path),
        "versions": {
            "expert_router": __version__,
            "python": platform.python_version(),
            "numpy": numpy.__version__,
            "scikit_learn": sklearn.__version__,
            "aiohttp": aiohttp.__version__,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "host": platform.node(),
        },
    }


def run_experiment(path: Path, results: Path) -> Path:
    experiment, base = load_experiment(path)
    if not (experiment.classifier / "classifier.json").is_file():  # before any service starts
        raise UserError(f"{path}: classifier {experiment.classifier} is not a saved classifier (classifier fit --out)")
    check_workload(experiment)
    check_resume(results, experiment)
    manifest_path = results / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else _manifest(experiment, path)
    manifest.setdefault("runs", []).append({"started_at": time.time()})
    manifest_path.write_text(json.dumps(manifest, indent=2))

    cells = [
        (c, mix, u, r)
        for c in experiment.configurations
        for mix in experiment.mixes
        for u in experiment.users
        for r in range(experiment.repetitions)
    ]
    todo = [cell for cell in cells if not _done(results, *cell)]
    console.print(
        f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run "
        f"(about {len(todo) * (experiment.duration_s + experiment.cooldown_s) / 60:.0f} min)"
    )
    order = cell_order(experiment, todo)
    services = Services(base, results / "logs")
    try:
        _run_cells(experiment, order, services, results)
    finally:
        services.close()
    manifest["runs"][-1]["finished_at"] = time.time()
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return results


CellPlan = tuple[Configuration, str, int, int]
"""One cell to run: configuration, mix, users, repetition."""


def cell_order(experiment: Experiment, todo: Sequence[CellPlan]) -> list[CellPlan]:
    """The order the cells run in. A configuration and those that are `direct_of` it take turns cell by
    cell, and which goes first rotates (A B, B A, ...): an engine that warms up over minutes (vLLM on
    CPU answers faster run after run as it meets new batch shapes) would otherwise favour whichever ran
    later, and the overhead the report shows is their difference. Other configurations run in turn."""
    names = {c.name for c in experiment.configurations}
    groups: dict[str, list[str]] = {}
    for c in experiment.configurations:
        root = c.direct_of if c.direct_of in names and c.direct_of != c.name else c.name
        groups.setdefault(root, []).append(c.name)
    keys = [(m, u, r) for m in experiment.mixes for u in experiment.users for r in range(experiment.repetitions)]
    order: list[CellPlan] = []
    for group in groups.values():
        for i, key in enumerate(keys):
            turn = group[i % len(group) :] + group[: i % len(group)]
            order += [cell for name in turn for cell in todo if cell[0].name == name and cell[1:] == key]
    return order


def _run_cells(experiment: Experiment, cells: Sequence[CellPlan], services: Services, results: Path) -> None:
    for number, (configuration, mix, users, repetition) in enumerate(cells, 1):
        services.switch_to(configuration)  # nothing to do while the configuration stays the same
        console.print(
            f"[bold]{configuration.name}[/] {mix} mix, {users} users, repetition {repetition + 1}"
            f" ({number}/{len(cells)})"
        )
        workload = cell_workload(experiment, mix, users, repetition, results)
        _run_cell(experiment, configuration, mix, users, repetition, workload, results)
        time.sleep(experiment.cooldown_s)


def cell_workload(experiment: Experiment, mix: str, users: int, repetition: int, results: Path) -> Path:
    """The prompts of one cell, drawn once and shared by its configurations: they differ only in serving."""
    spec = experiment.workload(mix, users, repetition)
    path = results / "workloads" / f"{mix}-seed{spec.seed}.jsonl"
    if not path.is_file():  # drawn whole, then renamed: parallel simulations may draw the same one
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_workload(draw_workload(spec), partial)
        os.replace(partial, path)
    return path


def _done(results: Path, configuration: Configuration, mix: str, users: int, repetition: int) -> bool:
    return (cell_folder(results, configuration.name, mix, users, repetition) / "summary.json").is_file()


def _run_cell(
    experiment: Experiment,
    configuration: Configuration,
    mix: str,
    users: int,
    repetition: int,
    workload: Path,
    results: Path,
) -> None:
    folder = cell_folder(results, configuration.name, mix, users, repetition)
    if folder.exists():
        shutil.rmtree(folder)  # half-finished: redo it whole
    out = folder.parent / (folder.name + ".tmp")
    if out.exists():
        shutil.rmtree(out)
    args = [
        sys.executable,
        "-m",
        "expert_router",
        "load",
        configuration.url,
        "--workload",
        str(workload),
        "--users",
        str(users),
        "--duration",
        str(experiment.duration_s),
        "--endpoint",
        experiment.endpoint,
        "--warmup",
        str(experiment.warmup),
        "--processes",
        str(min(experiment.processes, users)),
        "--out",
        str(out),
    ]
    if configuration.model:
        args += ["--model", configuration.model]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"the user simulator failed for {configuration.name}/{mix}/u{users}:\n{result.stderr[-2000:]}")
    (out / CELL_FILE).write_text(
        json.dumps({"configuration": configuration.name, "mix": mix, "users": users, "repetition": repetition})
    )
    out.rename(folder)  # a cell appears only when complete


class Services:
    """The services of the configuration being measured. A service that the next configuration lists
    too (same name, command and ready URL) keeps running: a router and its direct path share the
    expert servers, which then need not start twice."""

    def __init__(self, base: Path, logs: Path):
        self.base = base
        self.logs = logs
        self.running: dict[tuple[str, str, str | None], subprocess.Popen[bytes]] = {}

    @staticmethod
    def key(service: Service) -> tuple[str, str, str | None]:
        return service.name, " ".join(service.argv()), " ".join(service.ready_urls()) or None

    def switch_to(self, configuration: Configuration) -> None:
        wanted = {self.key(s) for s in configuration.services}
        leaving = [key for key, process in self.running.items() if key not in wanted or process.poll() is not None]
        stop_groups([self.running.pop(key) for key in reversed(leaving)], grace_s=20.0)
        for service in configuration.services:
            if self.key(service) not in self.running:
                self.running[self.key(service)] = self._start(configuration, service)

    def _start(self, configuration: Configuration, service: Service) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{configuration.name}-{service.name}.log", "ab") as log:
            try:
                process = subprocess.Popen(
                    service.argv(), cwd=self.base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            except OSError as exc:
                raise UserError(f"cannot start {configuration.name}/{service.name}: {exc}") from None
        console.print(f"started {configuration.name}/{service.name} (pid {process.pid})")
        try:
            _wait_ready(configuration, service, process, self.logs)
        except BaseException:
            stop_groups([process], grace_s=20.0)  # `experts serve` gives its engines 15 s to stop
            raise
        return process

    def close(self) -> None:
        stop_groups(list(reversed(self.running.values())), grace_s=20.0)
        self.running.clear()


def _wait_ready(configuration: Configuration, service: Service, process: subprocess.Popen[bytes], logs: Path) -> None:
    urls = service.ready_urls()
    if urls:
        wait_until(
            lambda: all(http_ok(url) for url in urls),
            f"{configuration.name}/{service.name}",
            service.ready_timeout_s,
            process,
            logs / f"{configuration.name}-{service.name}.log",
            interval_s=0.2,
        )
