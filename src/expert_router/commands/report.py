"""`expert-router report RESULTS_DIR`: the figures and tables of a results folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from expert_router.commands import HelpFormatter
from expert_router.progress import console

REPORT_EXAMPLES = """examples:
  expert-router report demo-out/results
  expert-router report results/gpu --out /tmp/report --fig7-users 100 500 1000
  expert-router report demo-out/results --quality demo-out/experts/quality   # with answer quality
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "report",
        help="write the figures and report of a results folder",
        description="Compute the metrics of every cell and write the paper's figures, "
        "a Markdown summary and a self-contained HTML report.",
        epilog=REPORT_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("results", metavar="RESULTS_DIR", type=Path, help="folder written by `experiment run`")
    parser.add_argument("--out", type=Path, help="where to write the report (default RESULTS_DIR/report)")
    parser.add_argument("--fig7-users", type=int, nargs="+", help="user counts shown in Fig. 7")
    parser.add_argument("--quality", type=Path, help="folder written by `expert-router evaluate`: adds answer quality")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from expert_router.analysis.report import write_report

    report = write_report(args.results, args.out, args.fig7_users, args.quality)
    console.print(f"report: {report.html} ({len(report.figures)} figures; summary {report.markdown})")
    return 0
