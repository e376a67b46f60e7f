"""`expert-router classifier fit | inspect | route`: the prompt classifier from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from expert_router.classifier import Classifier, ClassifierSettings
from expert_router.commands import HelpFormatter, add_corpus_options, corpus_options
from expert_router.corpus import load_corpus
from expert_router.errors import UserError
from expert_router.progress import Stages, cluster_table, console, output

FIT_EXAMPLES = """examples:
  expert-router classifier fit demo --out artifacts/classifier
  expert-router classifier fit corpus.jsonl --k 16 --balanced --out artifacts/classifier
  expert-router classifier fit hf:allenai/c4:en --limit 200000 --out artifacts/c4-k8   (online)
  expert-router classifier fit my-texts/ --scaling standard --dims 50 --out artifacts/my-texts   (.txt files)

CORPUS is `demo` (offline: 8 topics from Debian packages), `fortunes` (the older fortunes-only corpus),
`hf:NAME[:CONFIG]` (a Hugging Face dataset, streamed), a .jsonl/.jsonl.gz/.parquet/.txt file, or a folder
of .txt files (sub-folder names become labels).
"""

ROUTE_EXAMPLES = """examples:
  expert-router classifier route artifacts/classifier "How do I mount a USB disk?" "Who won the cup?"
  cat prompts.txt | expert-router classifier route artifacts/classifier

Prints one JSON object per prompt: {"cluster": c, "distances": [squared distance to each centroid]}.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "classifier",
        aliases=["cluster"],  # its name before the concept had one name everywhere
        help="fit, inspect and use the c-BTM prompt classifier",
        description="The c-BTM prompt classifier: TF-IDF, truncated SVD, scaling, k-means; one cluster per expert.",
    )
    sub = parser.add_subparsers(dest="classifier_command", metavar="SUBCOMMAND", required=True)
    _add_fit(sub)
    _add_inspect_and_route(sub)


def _add_fit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fit = sub.add_parser(
        "fit",
        help="fit a classifier on a corpus and save it",
        description="Fit the classifier on CORPUS and save it as plain arrays and JSON in --out.",
        epilog=FIT_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    fit.add_argument("corpus", metavar="CORPUS", help="the corpus to fit on (see below)")
    fit.add_argument("--out", required=True, type=Path, help="folder to write the classifier into")
    fit.add_argument("--k", type=int, default=8, help="number of clusters (experts)")
    fit.add_argument("--dims", type=int, default=100, help="truncated SVD dimensions")
    fit.add_argument(
        "--scaling",
        choices=("l2", "standard"),
        default="l2",
        help="l2: unit-length rows, as c-BTM's code (and so the paper's router) does; "
        "standard: zero mean, unit variance per dimension, as the paper's text describes",
    )
    fit.add_argument("--balanced", action="store_true", help="balanced k-means: about N/k documents per cluster")
    fit.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same classifier")
    fit.add_argument("--limit", type=int, default=None, help="read at most this many documents")
    fit.add_argument("--max-features", type=int, default=None, help="cap on the vocabulary size")
    fit.add_argument("--min-df", type=int, default=1, help="minimum number of documents a term appears in")
    add_corpus_options(fit)
    fit.set_defaults(handler=run_fit)


def _add_inspect_and_route(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inspect = sub.add_parser(
        "inspect",
        help="show each cluster's size and top terms",
        description="Show each cluster's training size and the terms that weigh most in its centroid.",
        epilog="example:\n  expert-router classifier inspect artifacts/classifier --terms 15",
        formatter_class=HelpFormatter,
    )
    inspect.add_argument("artifact", metavar="DIR", type=Path, help="a folder written by `classifier fit`")
    inspect.add_argument("--terms", type=int, default=10, help="top terms to show per cluster")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(handler=run_inspect)

    route = sub.add_parser(
        "route",
        help="route prompts: cluster and distances as JSON lines",
        description="Route each TEXT (or each line of standard input when none is given) to its cluster.",
        epilog=ROUTE_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    route.add_argument("artifact", metavar="DIR", type=Path, help="a folder written by `classifier fit`")
    route.add_argument("texts", metavar="TEXT", nargs="*", help="prompts to route")
    route.set_defaults(handler=run_route)


def run_fit(args: argparse.Namespace) -> int:
    try:
        settings = ClassifierSettings(
            k=args.k,
            dims=args.dims,
            scaling=args.scaling,
            balanced=args.balanced,
            seed=args.seed,
            max_features=args.max_features,
            min_df=args.min_df,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        raise UserError(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}") from None
    started = time.perf_counter()
    documents = load_corpus(args.corpus, corpus_options(args), args.limit, show_progress=True)
    stages = Stages(f"fitting k={settings.k} on {len(documents):,} documents")
    with stages.running():
        classifier = Classifier.fit([d.text for d in documents], settings, on_stage=stages)
        stages("saving")
        classifier.save(args.out)
    elapsed = time.perf_counter() - started

    labels = [d.label for d in documents]
    console.print(
        cluster_table(classifier, f"{settings.k} clusters from {len(documents):,} documents in {elapsed:.1f} s", 6)
    )
    if all(label is not None for label in labels):
        from sklearn.metrics import normalized_mutual_info_score

        routed = classifier.route([d.text for d in documents]).cluster
        score = normalized_mutual_info_score(labels, routed)
        console.print(f"agreement with the corpus labels: NMI = {score:.3f} ({len(set(labels))} labels)")
    console.print("stages: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.durations.items()))
    console.print(f"saved to {args.out}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    classifier = Classifier.load(args.artifact)
    if args.terms < 1:
        raise UserError("--terms must be at least 1")
    sizes: list[int | None] = [*classifier.train_sizes] if classifier.train_sizes else [None] * classifier.k
    rows = [
        {"cluster": c, "documents": size, "top_terms": terms}
        for c, (size, terms) in enumerate(zip(sizes, classifier.top_terms(args.terms)))
    ]
    if args.json:
        print(json.dumps({"settings": classifier.settings.model_dump(), "clusters": rows}))
        return 0
    s = classifier.settings
    title = (
        f"{args.artifact}: k={s.k}, {s.dims} dims, {s.scaling} scaling, "
        f"{'balanced' if s.balanced else 'plain'} k-means, {len(classifier.vocabulary):,} terms"
    )
    output.print(cluster_table(classifier, title, args.terms))
    return 0


def run_route(args: argparse.Namespace) -> int:
    classifier = Classifier.load(args.artifact)
    texts = args.texts
    if not texts:
        if sys.stdin.isatty():
            console.print("reading prompts from standard input, one per line (Ctrl-D ends)")
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise UserError("no prompts to route: give TEXT arguments or lines on standard input")
    if any(not text.strip() for text in texts):
        raise UserError("a prompt to route is empty (as blank lines on standard input are skipped)")
    routes = classifier.route(texts)
    out = sys.stdout
    for cluster, distances in zip(routes.cluster, routes.distance):
        out.write(json.dumps({"cluster": int(cluster), "distances": np.round(distances.astype(float), 6).tolist()}))
        out.write("\n")
    return 0
