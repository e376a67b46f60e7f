"""`expert-router nginx-router DEPLOYMENT --out DIR`: an nginx configuration that routes with Lua."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from expert_router.arguments import host, listen_port
from expert_router.commands import HelpFormatter
from expert_router.errors import UserError

EXAMPLES = """examples:
  expert-router nginx-router deploy.yaml --out nginx-router              # listens on 127.0.0.1:8080
  nginx -p "$PWD/nginx-router" -c nginx.conf -g 'daemon off;'             # clients use :8080 as the gateway
  expert-router nginx-router deploy.yaml --out /srv/router --host 0.0.0.0 --port 80 --workers 4

nginx relays every answer itself; route.lua (lua-nginx-module) classifies each prompt with the
deployment's classifier, names the expert's model in the body and picks the expert's replica (the
least busy by its /metrics load report and this nginx's requests in flight, among those that pass
their health checks; on a failure before the first byte another replica, then the next-nearest
expert), queues a request past max_inflight_per_expert for queue_timeout_s before its 429 (with
limit_scope: shared, one count in Redis with every router and gateway in front of the same experts),
decodes compressed bodies (gzip, deflate, br, zstd), and serves Prometheus counts at /metrics. It does
not time requests (Server-Timing): the Python gateway (`expert-router serve`) does. Needs nginx with
libnginx-mod-http-lua and lua-cjson, and lua-nginx-redis for shared limits.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "nginx-router",
        help="write an nginx configuration that routes prompts itself (Lua)",
        description="Route inside nginx: write an nginx configuration, the Lua router and the "
        "classifier's arrays for DEPLOYMENT, so that nginx classifies each prompt and relays the "
        "expert's stream without the Python gateway in the path.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("deployment", metavar="DEPLOYMENT", type=Path, help="deployment YAML file")
    parser.add_argument("--out", type=Path, required=True, help="folder to write nginx.conf and router/ into")
    parser.add_argument("--host", type=host, default="127.0.0.1", help="address nginx listens on")
    parser.add_argument("--port", type=listen_port, default=8080, help="port nginx listens on")
    parser.add_argument("--workers", type=_workers, default="auto", help="nginx worker processes: a number or auto")
    parser.set_defaults(handler=run)


def _workers(text: str) -> str:
    if text != "auto" and not re.fullmatch(r"[1-9][0-9]*", text):
        raise argparse.ArgumentTypeError(f"expected a positive number or auto, got {text!r}")
    return text


def run(args: argparse.Namespace) -> int:
    from expert_router.classifier import Classifier
    from expert_router.config import load_deployment
    from expert_router.nginx.conf import Listen
    from expert_router.nginx.render import write

    deployment = load_deployment(args.deployment)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out: {args.out} is a file, not a folder")
    config = write(
        deployment, Classifier.load(deployment.classifier), args.out, Listen(args.host, args.port, args.workers)
    )
    folder = config.parent.resolve()
    print(f"wrote {config} and {folder / 'router'}/")
    print(
        f"run:  nginx -p {folder} -c nginx.conf -g 'daemon off;'    # then send requests to http://{args.host}:{args.port}"
    )
    return 0
