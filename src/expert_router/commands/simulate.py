"""`expert-router simulate EXPERIMENT.yaml`: the experiment in virtual time, with emulated engines."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from expert_router.commands import HelpFormatter
from expert_router.errors import UserError
from expert_router.progress import console

EXAMPLES = """examples:
  expert-router simulate deploy/paper/experiment.yaml --results results/paper-virtual
  expert-router simulate deploy/paper/experiment.yaml --results results/paper-virtual --gateway-ms 442 302

Reads the same experiment file as `experiment run`: its `expert-router emulate` services become the
simulated engines, an `expert-router serve` service makes a configuration a router (its deployment maps
clusters to engines). Cells are written as a real run writes them, then the same report. Times are
emulated seconds; the gateway's overhead per request is drawn from a normal distribution (--gateway-ms
MEAN STD, clipped at 0; default none).
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "simulate",
        help="run an experiment in virtual time on emulated engines",
        description="Simulate every cell of an experiment file in virtual time (a "
        "discrete-event simulation of the emulated engines, the gateway's overhead and "
        "the users), write the records as a real run does, and the report.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("experiment", metavar="EXPERIMENT", type=Path, help="experiment YAML file")
    parser.add_argument("--results", type=Path, required=True, help="results folder (resumed if it exists)")
    parser.add_argument(
        "--gateway-ms",
        type=float,
        nargs=2,
        metavar=("MEAN", "STD"),
        default=(0.0, 0.0),
        help="gateway overhead per routed request, milliseconds",
    )
    parser.add_argument("--no-report", action="store_true", help="only write the cells")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from expert_router.simulate.run import simulate_experiment
    from expert_router.simulate.system import GatewayOverhead

    mean, std = args.gateway_ms
    if mean < 0 or std < 0:
        raise UserError("--gateway-ms MEAN STD must not be negative")
    started = time.monotonic()
    cells = simulate_experiment(args.experiment, args.results, GatewayOverhead(mean / 1000, std / 1000))
    console.print(f"{len(cells)} cells simulated in {time.monotonic() - started:.1f} s into {args.results}")
    if not args.no_report:
        from expert_router.analysis.report import write_report

        report = write_report(args.results, None, None)
        console.print(f"report: {report.html}")
    return 0
