"""`expert-router serve`'s command line: the command adds these options, and the simulator reads an
experiment's `serve` service with them (it had taken the word after "serve" for the deployment, and
read `serve --port 8004 deploy.yaml` as a deployment file named "--port")."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from expert_router.arguments import finite_float
from expert_router.errors import UserError

OVERRIDES = (
    "max_inflight_per_expert",
    "queue_timeout_s",
    "first_token_timeout_s",
    "idle_timeout_s",
    "fallback",
    "drain_timeout_s",
)
"""The flags that override the deployment's `gateway` settings (each named as its setting)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("deployment", metavar="DEPLOYMENT", type=Path, help="deployment YAML file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--workers", type=int, default=1, help="gateway processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--max-inflight-per-expert", type=int, help="override gateway.max_inflight_per_expert")
    parser.add_argument("--queue-timeout-s", type=finite_float, help="override gateway.queue_timeout_s")
    parser.add_argument("--first-token-timeout-s", type=finite_float, help="override gateway.first_token_timeout_s")
    parser.add_argument("--idle-timeout-s", type=finite_float, help="override gateway.idle_timeout_s")
    parser.add_argument("--fallback", choices=("nearest", "none"), help="override gateway.fallback")
    parser.add_argument(
        "--drain-timeout-s",
        type=finite_float,
        help="override gateway.drain_timeout_s (SIGTERM: streams "
        "in flight run on this long; new connections are refused at once)",
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"serve command line: {message}")


def serve_arguments(argv: Sequence[str]) -> argparse.Namespace | None:
    """The options of an `expert-router serve ...` command line (`expert-router`, a path ending in it, or
    `-m expert_router`), or None when `argv` runs another program or command (`vllm serve MODEL`)."""
    for i, word in enumerate(argv):
        ours = word == "expert-router" or word.endswith("/expert-router")
        ours = ours or (word == "expert_router" and i > 0 and argv[i - 1] == "-m")
        if ours:
            if argv[i + 1 : i + 2] != ["serve"]:
                return None
            parser = _Parser(prog="expert-router serve", add_help=False)
            add_arguments(parser)
            return parser.parse_args(list(argv[i + 2 :]))
    return None
