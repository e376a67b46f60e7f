"""The paper's study in virtual time: how long the full sweep takes, which findings hold, and how closely
virtual time agrees with real time.

Sweep: every cell of deploy/paper/experiment.yaml (A-E x 8 user levels x 2 mixes x 5 repetitions,
answers up to 1,000 tokens) simulated by `expert-router simulate`'s library entry point, `--workers`
processes side by side, into a fresh folder; `sweep_wall_s` is its wall time, `cells` how many.
`--duration` shortens every cell (default: the experiment file's duration_s); the JSON says which.
`sweep_cpu_s` is the CPU time it took (what a quiet machine's wall time x cores would be), and
`load_average` the machine's load before and after: on a shared machine wall time alone misleads.
`--keep DIR` writes the cells there instead; a folder that already holds some resumes, and then
`cells_kept_from_before` counts them and `sweep_whole` is false: the times cover only the cells run now.

Findings: analysis/findings.py on those cells: each claim true/false, and how many hold.

Agreement: one engine of configuration E (Llama 3 8B FP16 on an H100) served for real by
`expert-router emulate` with time dilation k (so a 2-core machine keeps its timeline), loaded by
`expert-router load`, then the same cell simulated; `agreement_max_rel_diff` is the largest relative
difference of the medians of TTFT, TPOT and system throughput (steady windows), scaled back by k.
The real run lasts 200 s by default (40 emulated seconds at k = 5, ~800 answers): over 8 emulated seconds
(~170 answers) the median TTFT is decided by chance, not by the engine — users that start or finish in
the same step come back together and prefill in one longer step, and how many such groups one run
draws moves the virtual median alone between 19.9 and 21.5 ms from seed to seed (40 s: 19.7-19.9 ms).

Prints one JSON line. Needs the demo's classifier at demo-out/classifier (the experiment file's).
Run: python bench/paper.py [--duration S] [--workers 2] [--no-agreement]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from expert_router.analysis import cell_table, findings, metrics
from expert_router.analysis.results import load_cells
from expert_router.experiment_file import load_experiment
from expert_router.loadgen.records import RequestRecord
from expert_router.loadgen.workload import WorkItem
from expert_router.simulate.run import simulate_experiment
from expert_router.simulate.system import DEFAULT_GATEWAY_MS, GatewayOverhead
from expert_router.testing import real_and_virtual

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "deploy" / "paper" / "experiment.yaml"


def sweep(duration: float | None, workers: int, results: Path) -> dict[str, Any]:
    overhead = GatewayOverhead(DEFAULT_GATEWAY_MS[0] / 1000, DEFAULT_GATEWAY_MS[1] / 1000)
    started, cpu, load = time.monotonic(), _cpu_s(), os.getloadavg()[0]
    done = simulate_experiment(EXPERIMENT, results, overhead, workers=workers, duration_s=duration, keep_records=False)
    wall = time.monotonic() - started
    cpu = _cpu_s() - cpu
    experiment, _ = load_experiment(EXPERIMENT)
    cells = load_cells(results)
    table = cell_table.Table.of(cells)
    found = {check.__name__: check(table).holds for check in findings.FINDINGS}
    kept = len(cells) - len(done)
    return {
        "sweep_wall_s": round(wall, 1),
        "sweep_cpu_s": round(cpu, 1),
        "load_average": [load, os.getloadavg()[0]],
        "cells": len(done),
        "cells_kept_from_before": kept,
        "sweep_whole": kept == 0,  # --keep on a folder with cells resumes: the times are of the rest only
        "duration_s": duration or experiment.duration_s,
        "workers": workers,
        "findings": found,
        "findings_hold": sum(v is True for v in found.values()),
        "findings_total": len(found),
        "capacity": {f"{r['configuration']}/{r['mix']}": r["users"] for r in findings.capacity(table)},
    }


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the worker processes): the sweep's cost
    whatever else the shared machine runs; wall time is that divided by the cores it got."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def medians(records: list[RequestRecord], window_s: float) -> dict[str, float]:
    """Each metric's median; a metric with nothing measured is an error, not a NaN (invalid JSON, and
    `max` over the differences would have kept or dropped it by its place in the list)."""
    values = {
        "ttft": metrics.ttft(records),
        "tpot": metrics.tpot(records),
        "system_throughput": metrics.system_throughput(records, window_s).steady(),
    }
    empty = [name for name, v in values.items() if not len(v)]
    if empty:
        raise RuntimeError(f"the agreement run measured no {', '.join(empty)}: {len(records)} records")
    return {name: float(np.median(v)) for name, v in values.items()}


def agreement(tmp: Path, users: int, seconds: float, dilation: float) -> dict[str, Any]:
    """Real (dilated) against virtual on one E engine: medians and their largest relative difference."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 400, 64)
    items = [WorkItem(i, 0, " ".join(["word"] * int(n)), int(n), 100) for i, n in enumerate(lengths)]
    real, virtual = real_and_virtual(tmp, items, users, seconds, dilation)
    window = seconds / dilation / 10
    r, v = medians(real, window), medians(virtual, window)
    diffs = {k: abs(r[k] / v[k] - 1) for k in r}
    return {
        "agreement_users": users,
        "agreement_dilation": dilation,
        "agreement_real": r,
        "agreement_virtual": v,
        "agreement_rel_diff": {k: round(d, 4) for k, d in diffs.items()},
        "agreement_max_rel_diff": round(max(diffs.values()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=None, help="emulated seconds per cell")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--agreement-users", type=int, default=16)
    parser.add_argument("--agreement-seconds", type=float, default=200.0, help="real seconds of the real run")
    parser.add_argument("--dilation", type=float, default=5.0)
    parser.add_argument("--no-agreement", action="store_true")
    parser.add_argument("--keep", type=Path, help="write the sweep's cells here (kept) instead of a temp folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = sweep(args.duration, args.workers, args.keep or Path(tmp) / "sweep")
        if not args.no_agreement:
            result |= agreement(Path(tmp), args.agreement_users, args.agreement_seconds, args.dilation)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
