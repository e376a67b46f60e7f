"""`expert-router experts build | serve`: make small expert LMs offline and serve them with a real engine."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from expert_router.arguments import port
from expert_router.commands import HelpFormatter, add_corpus_options, corpus_options
from expert_router.config import describe_flag_error
from expert_router.errors import UserError
from expert_router.progress import console, output

BUILD_EXAMPLES = """examples:
  expert-router classifier fit demo --out artifacts/classifier
  expert-router experts build demo --classifier artifacts/classifier --out artifacts/experts
  expert-router experts build corpus.jsonl --classifier artifacts/classifier --out artifacts/experts \\
      --hidden-size 256 --layers 4 --heads 4 --base-steps 2000 --merge

Writes OUT/base (tokenizer + tiny Llama model), OUT/adapters/expert-C (one LoRA adapter per cluster),
OUT/classifier and OUT/deployment.yaml (one vLLM server, multi-LoRA); with --merge also OUT/experts/
expert-C (full models) and OUT/deployment-per-expert.yaml (one server per expert, the paper's layout).
A build into a folder an earlier build wrote replaces what that build wrote there.
"""

SERVE_EXAMPLES = """examples:
  expert-router experts serve artifacts/experts/deployment.yaml
  expert-router experts serve artifacts/experts/deployment-per-expert.yaml --logs /tmp/expert-logs

Starts what the deployment's `engine` section names (vllm-lora, vllm, or nothing for external servers),
waits until every expert answers, prints the endpoints and runs until Ctrl-C or SIGTERM, then stops
every child process. Run `expert-router serve` on the same file for the gateway.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "experts",
        help="build expert LMs offline and serve them",
        description="The expert backends: build tiny expert LMs, serve them with vLLM.",
    )
    sub = parser.add_subparsers(dest="experts_command", metavar="SUBCOMMAND", required=True)
    build = sub.add_parser(
        "build",
        help="train a tokenizer, a tiny base model and one LoRA adapter per cluster",
        description="Build one expert per cluster from CORPUS and a fitted classifier.",
        epilog=BUILD_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    build.add_argument("corpus", metavar="CORPUS", help="corpus (as for `classifier fit`)")
    build.add_argument("--classifier", type=Path, required=True, help="classifier that assigns documents to experts")
    build.add_argument("--out", type=Path, required=True, help="output folder")
    build.add_argument("--port", type=port, default=8100, help="port written into the deployment file")
    build.add_argument("--merge", action="store_true", help="also write merged full models, one per expert")
    build.add_argument("--limit", type=int, help="read at most this many documents")
    add_corpus_options(build)  # the labels give held-out text its topics (evaluate's routing accuracy)
    from expert_router.engine.build import BuildSettings

    for name, field in BuildSettings.model_fields.items():
        build.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(field.default),
            default=field.default,
            help=field.description or name.replace("_", " "),
        )
    build.set_defaults(handler=run_build)

    serve = sub.add_parser(
        "serve",
        help="start the expert servers of a deployment",
        description="Start and supervise the expert servers a deployment file names.",
        epilog=SERVE_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    serve.add_argument("deployment", metavar="DEPLOYMENT", type=Path, help="deployment YAML file")
    serve.add_argument("--logs", type=Path, help="folder for server logs (default: logs/ beside the file)")
    serve.set_defaults(handler=run_serve)


def run_build(args: argparse.Namespace) -> int:
    from expert_router.classifier import Classifier
    from expert_router.corpus import load_corpus
    from expert_router.engine.build import BuildSettings, clear_previous_build, write_deployments
    from expert_router.quality.heldout import split_documents, write_held_out

    try:
        settings = BuildSettings(**{name: getattr(args, name) for name in BuildSettings.model_fields})
    except ValidationError as exc:
        raise UserError(describe_flag_error(exc)) from None
    classifier = Classifier.load(args.classifier)
    args.out.mkdir(parents=True, exist_ok=True)  # before training: a bad --out is said at once, not minutes later
    documents = load_corpus(args.corpus, corpus_options(args), args.limit, show_progress=True)
    texts = [d.text for d in documents]
    by_cluster, held_out = split_documents(
        texts, [d.label for d in documents], classifier.route(texts).cluster.tolist(), classifier.k, settings.held_out
    )
    empty = [c for c, t in by_cluster.items() if not t]
    if empty:
        raise UserError(f"clusters {empty} hold no documents of {args.corpus!r}: use a larger corpus")
    clear_previous_build(args.out)  # only once every input has been read: a refused build leaves the last one whole
    started = time.perf_counter()
    info = _build_with_progress(by_cluster, args, settings)
    paths = write_deployments(args.out, args.classifier, sorted(by_cluster), args.port, args.merge, settings.lora_rank)
    write_held_out(args.out, held_out, settings.held_out)
    output.print(
        _built_table(
            f"{classifier.k} experts built in {time.perf_counter() - started:.0f} s", by_cluster, info["final_loss"]
        )
    )
    console.print("deployment files: " + ", ".join(str(p) for p in paths))
    return 0


def _build_with_progress(by_cluster: dict[int, list[str]], args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from expert_router.engine.build import build_experts

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        try:
            info: dict[str, Any] = build_experts(by_cluster, args.out, settings, progress, merge=args.merge)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return info


def _built_table(title: str, by_cluster: dict[int, list[str]], losses: dict[str, float]) -> Table:
    table = Table(title=title)
    for column in ("expert", "documents", "final loss"):
        table.add_column(column, justify="right")
    table.add_row("base", f"{sum(len(t) for t in by_cluster.values()):,}", f"{losses['base']:.2f}")
    for cluster in sorted(by_cluster):
        table.add_row(f"expert-{cluster}", f"{len(by_cluster[cluster]):,}", f"{losses[f'expert-{cluster}']:.2f}")
    return table


def run_serve(args: argparse.Namespace) -> int:
    from expert_router.config import load_deployment
    from expert_router.engine import serve
    from expert_router.engine.kinds import check_engine, kind_of

    deployment = load_deployment(args.deployment)
    check_engine(deployment, str(args.deployment))
    if deployment.engine.kind != "external":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UserError(
                "the embedded engine is vLLM's CPU build, which is not installed: run `make setup` "
                "(or see the README's 'Expert backends')"
            ) from None
    logs = args.logs or args.deployment.parent / "logs"
    servers = kind_of(deployment).servers(deployment, logs)
    signals = StopSignals()
    ready = False
    try:
        serve.start(servers, deployment.engine.nice)
        # A line, not only the spinner, which a log or a pipe never shows: a wait of minutes said nothing.
        console.print(
            f"starting {len(servers)} server(s) for {len(deployment.experts)} experts; logs in {logs}; "
            f"waiting up to {deployment.engine.ready_timeout_s:g} s for them to answer",
            highlight=False,
        )
        with console.status("waiting for the expert servers"):
            serve.wait_ready(servers, deployment.engine.ready_timeout_s)
        ready = True
        table = Table(title="experts ready")
        for column in ("expert", "cluster", "endpoint"):
            table.add_column(column)
        for expert in deployment.experts:
            table.add_row(expert.model, str(expert.cluster), ", ".join(expert.base_urls()))
        output.print(table)
        console.print("serving; Ctrl-C stops every server", highlight=False)
        while True:
            for server in servers:
                if server.process is not None and server.process.poll() is not None:
                    raise UserError(f"{server.name} exited with code {server.process.returncode}; see {server.log}")
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping expert servers" if ready else "stopped before the expert servers were ready")
        return 0 if ready else 130  # never served: a script waiting on it must not read success
    finally:
        signals.stopping = True
        serve.stop(servers)
        signals.restore()


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP stop `experts serve` (as Ctrl-C does), once: a second signal lets the
    stop under way finish, SIGKILL pass included. SIGHUP too: the servers run in sessions of their
    own, so a closed terminal (an ssh session that dropped) reached only this process, which died
    without stopping them."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.stopping = False
        self.previous = {signum: signal.signal(signum, self._on_signal) for signum in self.SIGNALS}

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
