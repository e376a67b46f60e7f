"""Resuming a results folder: more cells may be added, but cells made with other settings are not mixed in."""

from __future__ import annotations

from pathlib import Path

import pytest

from expert_router.errors import UserError
from expert_router.experiment_file import Experiment, check_resume


def experiment(**changes: object) -> Experiment:
    data: dict[str, object] = {
        "classifier": "c",
        "configurations": [{"name": "A", "url": "http://127.0.0.1:8000"}],
        "users": [1, 8],
        "duration_s": 60,
    }
    return Experiment.model_validate(data | changes)


def test_a_resume_with_other_settings_is_refused_and_more_cells_are_not(tmp_path: Path):
    check_resume(tmp_path, experiment())
    check_resume(tmp_path, experiment())  # the same again: a resume
    # More users, repetitions and another configuration only add cells.
    more = [{"name": "A", "url": "http://127.0.0.1:8000"}, {"name": "B", "url": "http://127.0.0.1:9000"}]
    check_resume(tmp_path, experiment(users=[1, 8, 32], repetitions=2, configurations=more))
    with pytest.raises(UserError, match="duration_s"):
        check_resume(tmp_path, experiment(duration_s=30))
    with pytest.raises(UserError, match="max_tokens"):
        check_resume(tmp_path, experiment(max_tokens=200))
    # A configuration keeps its name's meaning, the one added last included.
    with pytest.raises(UserError, match="configurations.B"):
        check_resume(tmp_path, experiment(configurations=[{"name": "B", "url": "http://127.0.0.1:9001"}]))
    # A runner's own settings count too (the simulator's duration and gateway time).
    check_resume(tmp_path / "sim", experiment(), duration_s=20)
    with pytest.raises(UserError, match="duration_s"):
        check_resume(tmp_path / "sim", experiment(), duration_s=10)
