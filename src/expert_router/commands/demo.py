"""`expert-router demo`: the project's main job on the embedded default, offline, on a laptop."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.table import Table

from expert_router.classify import Clusterer, ClustererSettings
from expert_router.commands import HelpFormatter
from expert_router.commands.cluster import cluster_table
from expert_router.corpus import load_corpus
from expert_router.progress import Stages, console, output

SAMPLE_PROMPTS = (
    "My program crashes with a segmentation fault when I free the same pointer twice.",
    "Which vegetables go well with a slow-cooked beef stew?",
    "Captain, the warp core is failing and the Klingons are hailing us.",
    "Can a landlord keep my deposit if the lease says nothing about cleaning?",
    "Write a short poem about the sea at night.",
    "How do I recompile the Linux kernel with a new module?",
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the whole pipeline offline on the demo corpus",
        description="Fit the prompt classifier on the offline demo corpus (Debian's fortunes) and route "
        "sample prompts with it. Later stages (experts, gateway, load, report) join as they land.",
        epilog="example:\n  expert-router demo --out demo-out",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for everything the demo writes")
    parser.add_argument("--k", type=int, default=8, help="number of clusters (experts)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    documents = load_corpus("demo")
    settings = ClustererSettings(k=args.k)
    stages = Stages(f"fitting the classifier on {len(documents):,} demo documents")
    with stages.running():
        clusterer = Clusterer.fit([d.text for d in documents], settings, on_stage=stages)
        clusterer.save(args.out / "clusterer")

    output.print(cluster_table(clusterer, "Clusters of the demo corpus (one expert each)", 8))

    routes = clusterer.route(list(SAMPLE_PROMPTS))
    prompts = Table(title="Sample prompts routed")
    prompts.add_column("prompt")
    prompts.add_column("cluster", justify="right")
    prompts.add_column("next nearest", justify="right")
    for row, prompt in enumerate(SAMPLE_PROMPTS):
        ranked = routes.ranked(row)
        prompts.add_row(prompt, str(ranked[0]), str(ranked[1]) if len(ranked) > 1 else "-")
    output.print(prompts)
    console.print(f"demo finished in {time.perf_counter() - started:.1f} s; classifier saved to {args.out / 'clusterer'}")
    return 0
