"""A tiny experiment end to end: services started and stopped by the runner, cells, resume, report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from expert_router.analysis import metrics
from expert_router.analysis.results import Cell, load_cells
from expert_router.loadgen.records import RequestRecord, read_records
from expert_router.testing import cli_args, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("experiment")
    subprocess.run(
        cli_args("classifier", "fit", "demo", "--out", str(tmp / "classifier")), check=True, capture_output=True
    )
    experts_port, gateway_port, baseline_port, direct_port = free_port(), free_port(), free_port(), free_port()
    models = " ".join(f"expert-{c}" for c in range(8))
    deployment = {
        "classifier": "classifier",
        "experts": [
            {"cluster": c, "model": f"expert-{c}", "endpoints": [f"http://127.0.0.1:{experts_port}"]} for c in range(8)
        ],
    }
    (tmp / "deploy.yaml").write_text(yaml.safe_dump(deployment))
    document = {
        "name": "tiny",
        "classifier": "classifier",
        "users": [1, 3],
        "mixes": ["uniform", "normal"],
        "duration_s": 2,
        "max_tokens": 12,
        "cooldown_s": 0.1,
        "pool": 50,
        "configurations": [
            {
                "name": "router",
                "url": f"http://127.0.0.1:{gateway_port}",
                "services": [
                    {
                        "name": "experts",
                        "command": f"expert-router synthetic-expert --port {experts_port} --models {models} "
                        "--tokens 12 --interval-ms 15",
                        "ready_url": f"http://127.0.0.1:{experts_port}/health",
                    },
                    {
                        "name": "gateway",
                        "command": f"expert-router serve deploy.yaml --port {gateway_port}",
                        "ready_url": f"http://127.0.0.1:{gateway_port}/health",
                    },
                ],
            },
            {
                "name": "direct",
                "url": f"http://127.0.0.1:{direct_port}",
                "model": "expert-{cluster}",
                "direct_of": "router",
                "services": [
                    {
                        "name": "experts",
                        "command": f"expert-router synthetic-expert --port {direct_port} --models {models} "
                        "--tokens 12 --interval-ms 15",
                        "ready_url": f"http://127.0.0.1:{direct_port}/health",
                    }
                ],
            },
            {
                "name": "baseline",
                "url": f"http://127.0.0.1:{baseline_port}",
                "model": "expert-0",
                "services": [
                    {
                        "name": "model",
                        "command": f"expert-router synthetic-expert --port {baseline_port} --models expert-0 "
                        "--tokens 12 --interval-ms 25",
                        "ready_url": f"http://127.0.0.1:{baseline_port}/health",
                    }
                ],
            },
        ],
    }
    (tmp / "experiment.yaml").write_text(yaml.safe_dump(document))
    result = subprocess.run(
        cli_args("experiment", "run", str(tmp / "experiment.yaml"), "--results", str(tmp / "results")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp


def test_every_cell_and_the_manifest_are_stored(experiment):
    results = experiment / "results"
    manifest = json.loads((results / "manifest.json").read_text())
    assert manifest["versions"]["expert_router"] and manifest["machine"]["cpus"]
    cells = load_cells(results)
    assert len(cells) == 3 * 2 * 2
    assert all(records(cell) and all(r.ok for r in records(cell)) for cell in cells.values())
    router = [r for key, c in cells.items() if key.configuration == "router" for r in records(c)]
    assert all(r.cluster_routed is not None for r in router)


def records(cell: Cell) -> list[RequestRecord]:
    """Every record of a cell's repetitions, read from its files (the report reads digests of them)."""
    return [r for folder in cell.folders for r in read_records(folder / "records.jsonl")]


def test_report_has_all_figures_and_tables_match_the_records(experiment):
    report = experiment / "results" / "report"
    names = {p.name for p in report.glob("*.png")}
    for prefix in ("fig2", "fig3", "fig4", "fig5", "fig6", "fig7"):
        assert any(n.startswith(prefix) for n in names), prefix
    html = (report / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(names)
    rows = json.loads((report / "rows.json").read_text())
    cells = load_cells(experiment / "results")
    for row in rows:
        cell = next(
            c
            for k, c in cells.items()
            if (k.configuration, k.mix, k.users) == (row["configuration"], row["mix"], row["users"])
        )
        kept = records(cell)
        assert row["requests"] == len(kept)
        assert row["ttft_median_ms"] == pytest.approx(np.median(metrics.ttft(kept)) * 1000)
        assert row["tpot_median_ms"] == pytest.approx(np.median(metrics.tpot(kept)) * 1000)
        assert row["error_rate"].startswith("0.0%")
        assert row["response_time_p99_s"] == pytest.approx(np.percentile(metrics.response_time(kept), 99))
    summary = (report / "summary.md").read_text()
    assert f"{rows[0]['requests']}" in summary and "| router |" in summary and "| baseline |" in summary
    assert "## Routing overhead" in summary and "| router | direct | uniform | 1 |" in summary


def test_resume_skips_finished_cells_and_redoes_half_finished(experiment):
    results = experiment / "results"
    victim = results / "runs" / "baseline" / "normal" / "u3" / "r0"
    before = (results / "runs" / "router" / "uniform" / "u1" / "r0" / "records.jsonl").read_bytes()
    (victim / "summary.json").unlink()  # as if the run died in this cell
    result = subprocess.run(
        cli_args("experiment", "run", str(experiment / "experiment.yaml"), "--results", str(results)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "11 already done, 1 to run" in result.stderr.replace("\n", " ")
    assert (victim / "summary.json").is_file()
    assert (results / "runs" / "router" / "uniform" / "u1" / "r0" / "records.jsonl").read_bytes() == before
    # Resumed with another token cap, the old cells were kept and reported as if measured alike.
    changed = yaml.safe_load((experiment / "experiment.yaml").read_text()) | {"max_tokens": 20}
    (experiment / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = subprocess.run(
        cli_args("experiment", "run", str(experiment / "changed.yaml"), "--results", str(results)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2 and "max_tokens" in result.stderr, result.stderr[-3000:]


def test_bad_experiment_files_name_the_key(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({"classifier": "c", "users": [0], "configurations": [], "durations": 3})
    )
    result = subprocess.run(
        cli_args("experiment", "run", str(tmp_path / "bad.yaml"), "--results", str(tmp_path / "r")),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    for key in ("users", "configurations", "durations: unknown key"):
        assert key in result.stderr
    result = subprocess.run(cli_args("report", str(tmp_path / "nothing")), capture_output=True, text=True)
    assert result.returncode == 2 and "not found" in result.stderr
