"""`expert-router evaluate`: answer quality of built experts (perplexity on held-out text, routing accuracy)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from expert_router.commands import HelpFormatter
from expert_router.errors import UserError
from expert_router.progress import console, output

EXAMPLES = """examples:
  expert-router experts build demo --classifier artifacts/classifier --out artifacts/experts
  expert-router evaluate artifacts/experts
  expert-router evaluate artifacts/experts --out artifacts/quality --max-documents 50

Reads the held-out documents the build kept out of training (EXPERTS/held-out.json), measures the
perplexity of every expert and of the base model on every cluster's held-out text, and the share of
labelled held-out documents the classifier routes to the cluster of their topic. Writes
OUT/quality.json and OUT/quality_perplexity.png (a heat map) and prints the table.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="answer quality of built experts: perplexity matrix, routed vs base, routing accuracy",
        description="Does routing help? Each expert and the base model on each cluster's held-out text.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("experts", metavar="EXPERTS", type=Path, help="folder written by `experts build`")
    parser.add_argument("--out", type=Path, help="output folder; when left out, EXPERTS/quality")
    parser.add_argument("--max-documents", type=int, help="held-out documents per cluster at most; when left out, all")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line on stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from expert_router.quality import answer_quality_section, evaluate_experts

    if args.max_documents is not None and args.max_documents < 1:
        raise UserError("--max-documents must be at least 1")
    with console.status("measuring perplexities") as status:
        evaluation = evaluate_experts(args.experts, args.max_documents, lambda what: status.update(what))
    section = answer_quality_section(evaluation, args.out or args.experts / "quality")
    if args.json:
        print(json.dumps(section.summary))
        return 0
    table = Table(title="Perplexity on each cluster's held-out text")
    for header, _ in section.columns:
        table.add_column(header, justify="right")
    for row in section.rows:
        table.add_row(*(_format(row[key]) for _, key in section.columns))
    output.print(table)
    s = section.summary
    accuracy = "-" if s["routing_accuracy"] is None else f"{s['routing_accuracy']:.1%}"
    console.print(
        f"own expert lowest in {s['diagonal_lowest_rows']} of {s['rows_with_held_out']} rows; "
        f"routed/base {s['routed_vs_base']:.3f}; routed/random other {s['routed_vs_random']:.3f}; "
        f"routing accuracy {accuracy}; figure {section.figures[0]}"
    )
    return 0


def _format(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)
