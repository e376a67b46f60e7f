"""An experiment file: its settings (configurations and the services that make them, the sweep, the
workload), read and checked before anything runs, and the stamp that a resumed results folder must match.
`expert_router.experiment` runs it on real servers; `expert_router.simulate` in virtual time.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from expert_router.analysis.results import RESUME_FILE
from expert_router.config import Strict, describe_validation_error
from expert_router.errors import UserError
from expert_router.loadgen.client import url_problem
from expert_router.loadgen.workload import WorkloadSpec, draw_workload


class Service(Strict):
    name: str = Field(min_length=1)
    command: list[str] | str = Field(description="command line; run from the experiment file's folder")
    ready_url: str | list[str] | None = Field(
        None,
        description="GET that answers 200 once the service is up; a list for a service that starts "
        "several servers (every one must answer)",
    )
    ready_timeout_s: float = Field(600.0, gt=0)

    @field_validator("command")
    @classmethod
    def _a_command_line(cls, command: list[str] | str) -> list[str] | str:
        try:  # said when the file is read, not once the services before it have started
            argv = shlex.split(command) if isinstance(command, str) else command
        except ValueError as exc:  # shlex: "No closing quotation"
            raise ValueError(f"not a command line: {exc}") from None
        if not argv:
            raise ValueError("is empty")
        return command

    @field_validator("ready_url")
    @classmethod
    def _valid_urls(cls, ready_url: str | list[str] | None) -> str | list[str] | None:
        for url in [ready_url] if isinstance(ready_url, str) else ready_url or []:
            problem = url_problem(url)
            if problem is not None:
                raise ValueError(problem)
        return ready_url

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


def check_workload(experiment: Experiment) -> None:
    """Draw the first cell's prompts (not kept) before a results folder is stamped with the experiment's
    settings and anything runs: a corpus or length setting that cannot be drawn from is said now, not
    once services have started, and the corrected run is not refused as a resume with other settings.
    The corpus, read and classified, stays in memory for the cells (`clustered_corpus`)."""
    draw_workload(experiment.workload(experiment.mixes[0], experiment.users[0], 0))


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
