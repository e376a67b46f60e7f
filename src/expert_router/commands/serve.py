"""`expert-router serve DEPLOYMENT`: the routing gateway, one process or several on one port."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile

from expert_router.commands import HelpFormatter
from expert_router.config import Deployment, check_against_classifier, describe_flag_error, load_deployment
from expert_router.errors import UserError
from expert_router.gateway.options import OVERRIDES, add_arguments
from expert_router.progress import console

EXAMPLES = """examples:
  expert-router serve demo-out/experts/deployment.yaml      # http://127.0.0.1:8000/v1
  expert-router serve demo-out/experts/deployment.yaml --port 9000 --workers 2
  expert-router serve deploy/gpu-vllm-per-expert.yaml --host 0.0.0.0 --max-inflight-per-expert 512

Clients ask for model "expert-router" (or leave it out) to be routed, or name an expert's model to
reach that expert directly. Responses carry X-Expert-Cluster, X-Expert-Model, X-Expert-Fallback
(when the request went elsewhere) and Server-Timing (route;dur= milliseconds spent before the
request went upstream).

On SIGTERM the gateway drains, as a rolling update needs: it refuses new connections (so /health
probes fail and nginx or a Kubernetes Service move on), answers 503 to requests on connections still
open, lets streams in flight finish for up to --drain-timeout-s, then exits. A second signal ends it.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the routing gateway for a deployment",
        description="Run the OpenAI-compatible routing gateway: classify each prompt, forward it to its "
        "cluster's expert, stream the answer back.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def prepare(args: argparse.Namespace) -> Deployment:
    """Load and check everything before any process starts, so errors surface once and clearly."""
    from pydantic import ValidationError

    from expert_router.classifier import Classifier

    deployment = load_deployment(args.deployment)
    overrides = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    if overrides:
        try:
            gateway = deployment.gateway.model_validate({**deployment.gateway.model_dump(), **overrides})
        except ValidationError as exc:
            raise UserError(describe_flag_error(exc)) from None
        deployment = deployment.model_copy(update={"gateway": gateway})
    classifier = Classifier.load(deployment.classifier)
    check_against_classifier(deployment, classifier.k, str(args.deployment))
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if not 0 <= args.port < 65536:
        raise UserError("--port must be between 0 and 65535")
    return deployment


def run(args: argparse.Namespace) -> int:
    deployment = prepare(args)
    if args.workers == 1:
        _serve(deployment, args.host, args.port, reuse_port=False)
        return 0
    if args.port == 0:
        raise UserError("--workers needs a fixed --port: the workers share it")
    # Workers share the port, so a scrape of /metrics reaches any one of them: they keep their
    # metrics in a shared folder and each reports the sum (prometheus_client's multiprocess mode).
    from expert_router.gateway.metrics import MULTIPROC_ENV

    metrics_dir = tempfile.mkdtemp(prefix="expert-router-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_serve, args=(deployment, args.host, args.port, True), name=f"gateway-{i}", daemon=False)
        for i in range(args.workers)
    ]

    def stop(*_: object) -> None:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()

    signal.signal(signal.SIGTERM, stop)
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        stop()  # the workers got SIGINT too; make sure they are gone
        for worker in workers:
            worker.join(5)
        return 0
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    # A worker that could not listen said why and exited 2; stopped by a signal they exit 0 (or by it).
    return 2 if any(worker.exitcode not in (0, -signal.SIGTERM) for worker in workers) else 0


def _serve(deployment: Deployment, host: str, port: int, reuse_port: bool) -> None:
    from expert_router.classifier import Classifier
    from expert_router.collector import settle_after_start_up
    from expert_router.gateway import build_app, listen
    from expert_router.http import run_server

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build_app(deployment, Classifier.load(deployment.classifier))
    settle_after_start_up()  # the collector's defaults were the gateway's p99 (see expert_router.collector)
    experts = len(deployment.experts)

    def announce(bound: int) -> None:
        print(f"gateway ready on http://{host}:{bound}/v1 ({experts} experts)", file=sys.stderr, flush=True)

    try:
        run_server(
            listen.serve_until_stopped(
                app, host, port, reuse_port, on_started=announce, drain_timeout_s=deployment.gateway.drain_timeout_s
            )
        )
    except OSError as exc:
        console.print(f"error: cannot listen on {host}:{port}: {exc.strerror}")
        sys.exit(2)
