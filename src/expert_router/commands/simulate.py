"""`expert-router simulate EXPERIMENT.yaml`: the experiment in virtual time, with emulated engines."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from expert_router.arguments import finite_float, positive_int
from expert_router.commands import HelpFormatter
from expert_router.errors import UserError
from expert_router.progress import console

EXAMPLES = """examples:
  expert-router simulate deploy/paper/experiment.yaml --results results/paper-virtual
  expert-router simulate deploy/paper/experiment.yaml --results results/paper-virtual --gateway-ms 442 302
  expert-router simulate deploy/paper/experiment.yaml --results results/paper-virtual --no-records

Reads the same experiment file as `experiment run`: its `expert-router emulate` services become the
simulated engines, an `expert-router serve` service makes a configuration a router (its deployment maps
clusters to engines). Cells are written as a real run writes them, then the same report. Times are
emulated seconds; the gateway's overhead per request is drawn from a normal distribution (--gateway-ms
MEAN STD, clipped at 0; default 0.8 0.2, measured on a 2-core machine), or from a real run's
Server-Timing route values (--gateway-from RECORDS).
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
        type=finite_float,
        nargs=2,
        metavar=("MEAN", "STD"),
        default=None,
        help="gateway overhead per routed request, milliseconds (default: 0.8 0.2, measured "
        "on a 2-core machine by bench/gateway.py)",
    )
    parser.add_argument(
        "--gateway-from",
        type=Path,
        metavar="RECORDS",
        help="draw the gateway overhead from the Server-Timing route values of a real run's records.jsonl instead",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="cells simulated side by side, one process each (default: one per core)",
    )
    parser.add_argument(
        "--duration",
        type=finite_float,
        default=None,
        help="emulated seconds per cell (default: the experiment file's duration_s)",
    )
    parser.add_argument(
        "--no-records",
        action="store_true",
        help="keep each cell's digest and summary (all the report reads) but not its records.jsonl, "
        "one line per request with every token's time: about 25 GB for the full paper sweep",
    )
    parser.add_argument("--no-report", action="store_true", help="only write the cells")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from expert_router.simulate.run import simulate_experiment
    from expert_router.simulate.system import DEFAULT_GATEWAY_MS, GatewayOverhead

    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be more than 0 seconds")
    mean, std = args.gateway_ms or DEFAULT_GATEWAY_MS
    if mean < 0 or std < 0:
        raise UserError("--gateway-ms MEAN STD must not be negative")
    overhead = GatewayOverhead(mean / 1000, std / 1000)
    if args.gateway_from is not None:
        from expert_router.loadgen.records import read_records

        overhead = GatewayOverhead.measured(read_records(args.gateway_from))
    started = time.monotonic()
    import os

    workers = args.workers or os.cpu_count() or 1
    cells = simulate_experiment(
        args.experiment,
        args.results,
        overhead,
        workers=workers,
        duration_s=args.duration,
        keep_records=not args.no_records,
    )
    console.print(f"{len(cells)} cells simulated in {time.monotonic() - started:.1f} s into {args.results}")
    if not args.no_report:
        from expert_router.analysis.report import write_report

        report = write_report(args.results, None, None)
        console.print(f"report: {report.html}")
    return 0
