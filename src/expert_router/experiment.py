"""Sweeps: configurations x mixes x user counts x repetitions, into one results folder, then a report.

A configuration is the URL the user simulator targets plus the services that make it (expert
servers, a gateway), each a command the runner starts, waits for and stops. On a laptop those are
`expert-router` commands; on GPUs the same file lists `vllm serve ...` or points at running servers.
A run can be interrupted and resumed: finished cells are kept, half-finished ones are redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from expert_router import __version__
from expert_router.analysis.results import CELL_FILE, RESUME_FILE, cell_folder
from expert_router.config import Strict, describe_validation_error
from expert_router.errors import UserError
from expert_router.loadgen.client import url_problem
from expert_router.loadgen.workload import WorkloadSpec, draw_workload, save_workload
from expert_router.processes import http_ok, stop_groups, wait_until
from expert_router.progress import console


class Service(Strict):
    name: str = Field(min_length=1)
    command: list[str] | str = Field(description="command line; run from the experiment file's folder")
    ready_url: str | list[str] | None = Field(
        None,
        description="GET that answers 200 once the service is up; a list for a service that starts "
        "several servers (every one must answer)",
    )
    ready_timeout_s: float = Field(600.0, gt=0)

    def ready_urls(self) -> list[str]:
        return [self.ready_url] if isinstance(self.ready_url, str) else list(self.ready_url or [])

    def argv(self) -> list[str]:
        argv = shlex.split(self.command) if isinstance(self.command, str) else list(self.command)
        if argv and argv[0] == "expert-router":  # the same installation as the runner
            argv = [sys.executable, "-m", "expert_router", *argv[1:]]
        return argv


class Configuration(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str = Field(description="base URL the user simulator sends to")
    model: str | None = Field(None, description="model name to send (none: the gateway routes)")
    direct_of: str | None = Field(
        None,
        description="this configuration reaches the experts of the named one "
        "without its gateway: the report shows the gateway's overhead as the difference",
    )
    services: list[Service] = []

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        problem = url_problem(url)
        if problem is not None:  # said when the file is read, not after the services have started
            raise ValueError(problem)
        return url


class Experiment(Strict):
    name: str = "experiment"
    corpus: str = "demo"
    classifier: Path
    configurations: list[Configuration] = Field(min_length=1)
    users: list[int] = Field(min_length=1)
    mixes: list[Literal["uniform", "normal"]] = ["uniform"]
    repetitions: int = Field(1, ge=1)
    duration_s: float = Field(60.0, gt=0)
    max_tokens: int = Field(1000, ge=1)
    input_lengths: str = "mlperf"
    input_mean: float = 335.0
    input_std: float = 30.0
    endpoint: Literal["completions", "chat"] = "completions"
    tokenizer: Path | None = Field(None, description="tokenizer.json of the served model: lengths in its tokens")
    pool: int = Field(1000, ge=1)
    seed: int = 0
    fresh_prompts: bool = Field(
        True,
        description="a new prompt draw per cell (the same for every configuration "
        "of that cell), so prefix caches of long-lived servers do not carry over",
    )
    warmup: int = Field(1, ge=0, description="requests per user answered before each cell is measured")
    processes: int = Field(1, ge=1, description="user-simulator processes per cell")
    cooldown_s: float = Field(1.0, ge=0, description="pause between cells")

    def workload(self, mix: str, users: int, repetition: int) -> WorkloadSpec:
        """The draw of one cell: every configuration of the cell gets the same prompts."""
        seed = self.seed
        if self.fresh_prompts:
            digest = hashlib.sha256(f"{self.seed}/{mix}/{users}/{repetition}".encode()).digest()
            seed = int.from_bytes(digest[:4], "little")
        return WorkloadSpec(
            classifier=self.classifier,
            corpus=self.corpus,
            tokenizer=self.tokenizer,
            mix=mix,
            input_lengths=self.input_lengths,
            input_mean=self.input_mean,
            input_std=self.input_std,
            max_tokens=self.max_tokens,
            pool=self.pool,
            seed=seed,
        )

    @field_validator("users")
    @classmethod
    def _positive(cls, users: list[int]) -> list[int]:
        if any(u < 1 for u in users):
            raise ValueError("user counts must be at least 1")
        return sorted(set(users))


def load_experiment(path: Path) -> tuple[Experiment, Path]:
    if not path.is_file():
        raise UserError(f"experiment file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a valid experiment: expected a mapping")
    try:
        experiment = Experiment.model_validate(data)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, str(path), "experiment")) from None
    base = path.parent.resolve()
    if not experiment.classifier.is_absolute():
        experiment.classifier = (base / experiment.classifier).resolve()
    if experiment.tokenizer is not None and not experiment.tokenizer.is_absolute():
        experiment.tokenizer = (base / experiment.tokenizer).resolve()
    names = [c.name for c in experiment.configurations]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: configuration names must be unique, got {names}")
    return experiment, base


EXTENDABLE = ("name", "users", "repetitions", "mixes", "cooldown_s", "configurations")
"""Experiment keys a resume may change: more users, repetitions, mixes or configurations add cells."""


def check_resume(results: Path, experiment: Experiment, **extra: Any) -> None:
    """Refuse to resume `results` with settings other than its cells were made with (`extra`: a runner's
    own, such as the simulator's duration). Resumed with another duration or token cap, say, the old
    cells were kept as done and reported beside new ones as if measured alike. A configuration keeps its
    name's meaning; new names, users, mixes and repetitions only add cells."""
    stamp = experiment.model_dump(mode="json", exclude=set(EXTENDABLE)) | extra
    stamp["configurations"] = {c.name: c.model_dump(mode="json") for c in experiment.configurations}
    path = results / RESUME_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except ValueError as exc:
            raise UserError(f"{path} is damaged ({exc}): choose a new results folder") from None
        changed = [key for key in stamp if key != "configurations" and key in stored and stored[key] != stamp[key]]
        old, new = stored.get("configurations", {}), stamp["configurations"]
        changed += [f"configurations.{name}" for name in new if name in old and old[name] != new[name]]
        if changed:
            raise UserError(
                f"{results} holds cells made with other settings ({', '.join(changed)} changed): "
                "choose a new results folder, or run with the settings it was made with"
            )
        stamp["configurations"] = old | new
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp, indent=1))


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
    services = Services(base, results / "logs")
    try:
        _run_cells(experiment, cell_order(experiment, todo), services, results)
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
