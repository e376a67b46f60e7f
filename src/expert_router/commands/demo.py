"""`expert-router demo`: the paper's study in small, offline, on a laptop, ending in a report.

offline corpus -> classifier -> expert LMs (LoRA) -> vLLM CPU + gateway ("router") and one vLLM
server with the base model ("baseline") -> user simulator sweep -> report. Every step is a real
`expert-router` command; the experiment file it writes runs unchanged with `experiment run`, and a
user with GPUs swaps the services for their own (see the README).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from expert_router.arguments import positive_float, positive_int
from expert_router.classifier import Classifier, ClassifierSettings
from expert_router.commands import HelpFormatter
from expert_router.config import Deployment
from expert_router.corpus import load_corpus
from expert_router.errors import UserError
from expert_router.progress import Stages, cluster_table, console, output
from expert_router.quality.heldout import majority_labels

ROUTER_PORT, GATEWAY_PORT, BASELINE_PORT = 8100, 8000, 8200


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the whole study offline: classifier, experts, router vs baseline, report",
        description="Fit the classifier on the offline demo corpus, build one LoRA expert per cluster, measure "
        "each expert's perplexity on every cluster's held-out text, serve "
        "them with vLLM's CPU build behind the gateway, compare against one base-model server under a small "
        "sweep of users and both workload mixes, and write the report.",
        epilog="examples:\n  expert-router demo --out demo-out\n  expert-router demo --out demo-out --users 1 4 16 "
        "--duration 30\n  expert-router demo --out demo-out --classifier-only   # no engine needed",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for everything the demo writes")
    parser.add_argument("--k", type=positive_int, default=8, help="number of clusters (experts)")
    # Checked here, not minutes later by the experiment file the demo writes after fitting and building.
    parser.add_argument(
        "--users", type=positive_int, nargs="+", default=[1, 8, 32], help="concurrency levels of the sweep"
    )
    parser.add_argument("--duration", type=positive_float, default=15.0, help="seconds per measured cell")
    parser.add_argument("--max-tokens", type=positive_int, default=128, help="answer cap (experts also stop at EOS)")
    parser.add_argument("--classifier-only", action="store_true", help="stop after fitting and routing samples")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper's A-E study in virtual time")
    parser.set_defaults(handler=run)


SAMPLE_PROMPTS = (
    ("computing", "My program crashes with a segmentation fault when I free the same pointer twice."),
    ("food", "Which vegetables go well with a slow-cooked beef stew?"),
    ("startrek", "Captain, the warp core is failing and the Klingons are hailing us."),
    ("law", "Can a landlord keep my deposit if the lease says nothing about cleaning?"),
    ("astronomy", "Tell me about the stars and the planets."),
    ("python", "How do I sort a list of dictionaries by a key in Python?"),
)
"""(topic, prompt): each should reach the expert of the cluster whose documents are mostly that topic."""


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out: Path = args.out.resolve()
    classifier_dir = out / "classifier"
    documents = load_corpus("demo")
    if (classifier_dir / "classifier.json").is_file():
        classifier = Classifier.load(classifier_dir)
        if classifier.k != args.k:  # the experts and results there were made for it: not mixed with another k
            raise UserError(
                f"{out} holds a demo with {classifier.k} clusters (and its experts): "
                f"run with --k {classifier.k}, or choose another --out for --k {args.k}"
            )
        console.print(f"classifier: reusing {classifier_dir}")
    else:
        stages = Stages(f"fitting the classifier on {len(documents):,} demo documents")
        with stages.running():
            # Balanced, as c-BTM trains it: one expert per topic rather than one for everything.
            settings = ClassifierSettings(k=args.k, balanced=True)
            classifier = Classifier.fit([d.text for d in documents], settings, on_stage=stages)
            classifier.save(classifier_dir)
    output.print(cluster_table(classifier, "Clusters of the demo corpus (one expert each)", 8))
    topics = majority_labels(
        classifier.route([d.text for d in documents]).cluster.tolist(), [d.label for d in documents]
    )
    routes = classifier.route([prompt for _, prompt in SAMPLE_PROMPTS])
    for row, (topic, prompt) in enumerate(SAMPLE_PROMPTS):
        cluster = int(routes.cluster[row])
        mark = "" if topics.get(cluster) == topic else f"  (a {topic} prompt)"
        console.print(f"  cluster {cluster} ({topics.get(cluster, '?')}) <- {prompt}{mark}", highlight=False)
    if args.classifier_only:
        return 0

    from expert_router.analysis.report import write_report
    from expert_router.experiment import run_experiment

    experts = build_and_evaluate(out, classifier_dir)
    experiment = write_experiment(out, args)
    console.print(f"experiment file: {experiment}")
    results = run_experiment(experiment, out / "results")
    report = write_report(results, quality=experts / "quality")
    console.print(f"report: {report.html} ({len(report.figures)} figures)")  # before the next step, should it fail
    paper = paper_in_virtual_time(out, args, classifier.k)
    console.print(
        f"demo finished in {(time.perf_counter() - started) / 60:.1f} min; open {results / 'report' / 'report.html'}"
    )
    if paper is not None:
        console.print(f"the paper's A-E in virtual time: {paper / 'report' / 'report.html'}")
    return 0


def build_and_evaluate(out: Path, classifier_dir: Path) -> Path:
    """The experts (built once) and their answer quality on held-out text (measured once)."""
    import subprocess
    import sys

    experts = out / "experts"
    if not (experts / "deployment.yaml").is_file():
        console.print("building the experts (tokenizer, base model, one LoRA adapter per cluster)")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "expert_router",
                "experts",
                "build",
                "demo",
                "--classifier",
                str(classifier_dir),
                "--out",
                str(experts),
                "--port",
                str(ROUTER_PORT),
            ],
            check=False,
        )
        if result.returncode != 0:
            raise UserError("building the experts failed (see above)")
    if not (experts / "held-out.json").is_file():
        console.print(
            "the experts were built without a held-out split: not measuring their answer quality "
            f"(delete {experts} to build them again)"
        )
    elif not (experts / "quality" / "quality.json").is_file():
        console.print("measuring the experts' answer quality on held-out text")
        result = subprocess.run([sys.executable, "-m", "expert_router", "evaluate", str(experts)], check=False)
        if result.returncode != 0:
            raise UserError("evaluating the experts failed (see above)")
    return experts


PAPER_USERS = [1, 50, 200, 600, 1000]
PAPER_SECONDS = 20.0


def paper_in_virtual_time(out: Path, args: argparse.Namespace, k: int) -> Path | None:
    """The paper's configurations A-E (deploy/paper) on emulated H100s, simulated in virtual time at
    1 to 1,000 users: a cut of the full sweep (one repetition, 20-s cells) that fits the demo's time.
    Its routers have the paper's eight experts, so it runs on an 8-cluster classifier only (with more
    clusters a prompt had no expert; with fewer, experts idled under the paper's name)."""
    import subprocess
    import sys

    source = Path(__file__).resolve().parents[3] / "deploy" / "paper"
    if args.no_paper or not (source / "experiment.yaml").is_file():
        return None
    if k != 8:
        console.print(f"not running the paper's A-E: its routers have 8 experts, this demo's classifier {k} clusters")
        return None
    folder = out / "paper"
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.suffix in (".yaml", ".conf"):  # the demo's classifier, seen from out/paper
            (folder / path.name).write_text(path.read_text().replace("../../demo-out/classifier", "../classifier"))
    experiment = yaml.safe_load((folder / "experiment.yaml").read_text())
    experiment.update(users=PAPER_USERS, repetitions=1)
    (folder / "experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    results = out / "paper-results"
    console.print(f"the paper's configurations A-E in virtual time: {len(PAPER_USERS)} user levels, 2 mixes")
    command = [sys.executable, "-m", "expert_router", "simulate", str(folder / "experiment.yaml"),
               "--results", str(results), "--duration", str(PAPER_SECONDS)]  # fmt: skip
    if subprocess.run(command, check=False).returncode != 0:
        raise UserError("the virtual-time study failed (see above)")
    return results


def _service(name: str, command: str, port: int) -> dict[str, str]:
    return {"name": name, "command": command, "ready_url": f"http://127.0.0.1:{port}/health"}


def configurations() -> list[dict[str, object]]:
    """Router (8 LoRA experts behind the gateway), the same experts reached directly (the gateway's
    overhead), and the base model alone (the baseline). Router and direct share the expert server."""
    experts = _service("experts", "expert-router experts serve experts/deployment.yaml", ROUTER_PORT)
    gateway = _service("gateway", f"expert-router serve experts/deployment.yaml --port {GATEWAY_PORT}", GATEWAY_PORT)
    return [
        {"name": "router", "url": f"http://127.0.0.1:{GATEWAY_PORT}", "services": [experts, gateway]},
        {"name": "direct", "url": f"http://127.0.0.1:{ROUTER_PORT}", "model": "expert-{cluster}",
         "direct_of": "router", "services": [experts]},
        {"name": "baseline", "url": f"http://127.0.0.1:{BASELINE_PORT}", "model": "base",
         "services": [_service("base-model", "expert-router experts serve baseline.yaml", BASELINE_PORT)]},
    ]  # fmt: skip


def write_experiment(out: Path, args: argparse.Namespace) -> Path:
    """The demo's experiment file (and the baseline's deployment file it names)."""
    Deployment.model_validate({
        "classifier": "classifier",
        "engine": {"kind": "vllm"},
        "experts": [{"cluster": 0, "model": "base", "model_path": "experts/base",
                     "endpoints": [f"http://127.0.0.1:{BASELINE_PORT}"]}],
    }).write(out / "baseline.yaml", "The single-model baseline: one vLLM server, no routing.")  # fmt: skip
    experiment = {
        "name": "demo", "corpus": "demo", "classifier": "classifier", "tokenizer": "experts/base/tokenizer.json",
        "users": args.users, "mixes": ["uniform", "normal"], "repetitions": 1, "duration_s": args.duration,
        "max_tokens": args.max_tokens, "input_lengths": "mlperf", "configurations": configurations(),
    }  # fmt: skip
    path = out / "experiment.yaml"
    path.write_text(
        "# Written by `expert-router demo`; run again with:\n"
        "#   expert-router experiment run experiment.yaml --results results\n"
        + yaml.safe_dump(experiment, sort_keys=False)
    )
    return path
