"""The simulator spread over processes: whatever happens to a worker, the run ends and its records are kept."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from expert_router.loadgen.runner import run_processes
from expert_router.loadgen.users import RunSettings
from expert_router.wire import clock


def test_a_worker_that_fails_before_reporting_does_not_hang_the_run(tmp_path: Path):
    """Workers with no work to draw from fail at once: the parent waited for their reports for good, and
    the records of the run were never merged."""
    records = tmp_path / "records.jsonl"
    settings = RunSettings(url="http://127.0.0.1:9", users=2, requests=2)
    result: dict[str, Any] = {}

    def run() -> None:
        result["checks"] = run_processes(settings, [], records, clock(), 2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the run waited for workers that had ended"
    assert result["checks"] == [] and records.exists()
    assert not list(tmp_path.glob("records.part*.jsonl"))  # merged
