"""`expert-router synthetic-expert`: an OpenAI-compatible server that streams on a fixed schedule."""

from __future__ import annotations

import argparse
import sys

from expert_router.arguments import error_status, finite_float, non_negative_int, port, positive_int
from expert_router.commands import HelpFormatter
from expert_router.errors import UserError

EXAMPLES = """examples:
  expert-router synthetic-expert --port 8100 --models expert-0 expert-1 --tokens 128 --interval-ms 20
  expert-router synthetic-expert --port 8101 --fail-status 503          # a broken replica

It runs no model: every answer is --tokens chunks " t0", " t1", ... spaced --interval-ms apart, and
each chunk carries "t", the server's time.monotonic() when it was sent. Use it to measure the gateway,
nginx or the user simulator against an upstream whose timing is known.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "synthetic-expert",
        help="run a model-free streaming server with known token timing",
        description="Run an OpenAI-compatible server that streams tokens on a fixed schedule, for "
        "measuring and testing everything around a model.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=8100)
    parser.add_argument("--models", nargs="+", default=["synthetic"], help="model names to serve")
    parser.add_argument("--tokens", type=positive_int, default=16, help="tokens per answer (fewer if max_tokens asks)")
    parser.add_argument("--interval-ms", type=finite_float, default=10.0, help="gap between tokens")
    parser.add_argument(
        "--tokens-per-chunk",
        type=positive_int,
        default=1,
        help="tokens packed into one SSE chunk (as TensorRT-LLM or vLLM --stream-interval send)",
    )
    parser.add_argument(
        "--usage",
        choices=("asked", "final", "none"),
        default="asked",
        help="usage in streams: as the request asks (vLLM), only at the end, or never",
    )
    parser.add_argument("--first-token-ms", type=finite_float, default=0.0, help="delay before the first token")
    parser.add_argument("--fail-status", type=error_status, help="answer every request with this HTTP status")
    parser.add_argument("--die-after-tokens", type=non_negative_int, help="drop the connection after this many tokens")
    parser.add_argument("--no-done", action="store_true", help="close streams without `data: [DONE]`")
    parser.add_argument(
        "--end-after-tokens",
        type=non_negative_int,
        help="end the stream cleanly after this many tokens, without a finish_reason or [DONE] (cut short)",
    )
    parser.add_argument(
        "--reported-waiting",
        type=non_negative_int,
        default=0,
        help="requests this server claims to queue in /metrics (vllm:num_requests_waiting)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from expert_router.http import run_app
    from expert_router.synthetic import SyntheticSettings, build_app

    if args.tokens < 1 or args.tokens_per_chunk < 1 or args.interval_ms < 0 or args.first_token_ms < 0:
        raise UserError("--tokens and --tokens-per-chunk must be at least 1 and the delays not negative")
    settings = SyntheticSettings(
        tokens=args.tokens,
        interval_ms=args.interval_ms,
        first_token_ms=args.first_token_ms,
        models=tuple(args.models),
        fail_status=args.fail_status,
        die_after_tokens=args.die_after_tokens,
        end_after_tokens=args.end_after_tokens,
        send_done=not args.no_done,
        tokens_per_chunk=args.tokens_per_chunk,
        usage=args.usage,
        reported_waiting=args.reported_waiting,
    )

    def announce() -> None:
        print(f"synthetic expert ready on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)

    try:
        run_app(build_app(settings), args.host, args.port, on_started=announce)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    return 0
