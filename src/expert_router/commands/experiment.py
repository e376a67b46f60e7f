"""`expert-router experiment run EXPERIMENT.yaml`: a sweep, then its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from expert_router.commands import HelpFormatter
from expert_router.progress import console

RUN_EXAMPLES = """examples:
  expert-router experiment run demo-out/experiment.yaml --results demo-out/results
  expert-router experiment run gpu-study.yaml --results results/gpu     # run again to resume

The file lists configurations (the URL to load and the services to start for it: expert servers,
gateway), user counts, mixes, repetitions, duration and max tokens; see the README. Every cell is
stored under RESULTS/runs/CONFIG/MIX/uUSERS/rREP; the report is written to RESULTS/report.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "experiment",
        help="run a sweep of configurations x users x mixes",
        description="Run an experiment file end to end and write its report.",
    )
    sub = parser.add_subparsers(dest="experiment_command", metavar="SUBCOMMAND", required=True)
    run = sub.add_parser(
        "run",
        help="run (or resume) an experiment",
        description="Start each configuration's "
        "services, run the user simulator for every cell, stop them, write the report.",
        epilog=RUN_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    run.add_argument("experiment", metavar="EXPERIMENT", type=Path, help="experiment YAML file")
    run.add_argument("--results", type=Path, required=True, help="results folder (resumed if it exists)")
    run.set_defaults(handler=run_experiment)


def run_experiment(args: argparse.Namespace) -> int:
    from expert_router.analysis.report import write_report
    from expert_router.experiment import run_experiment as run

    results = run(args.experiment, args.results)
    report = write_report(results)
    console.print(f"report: {report.html} ({len(report.figures)} figures; summary {report.markdown})")
    return 0
