"""`expert-router emulate`: OpenAI-compatible servers that behave like GPU inference engines."""

from __future__ import annotations

import argparse
import sys

from expert_router.commands import HelpFormatter
from expert_router.emulate.options import add_arguments

EXAMPLES = """examples:
  # one Llama 3 8B FP16 engine on an H100, serving the name expert-0
  expert-router emulate --gpu h100-sxm --model llama-3-8b --dtype fp16 --port 8100 --served-model-name expert-0
  # the paper's configuration E: eight 8B engines (one per GPU) on ports 8100..8107, names expert-0..7
  expert-router emulate --preset paper-e --port 8100 --served-model-name 'expert-{i}'
  # configuration B (70B FP8 on TP8), twice as slow as real time because this machine cannot keep up
  expert-router emulate --preset paper-b --port 8200 --served-model-name llama-3-70b --time-dilation 2
  # the validation table: the emulator against published single-server throughput
  expert-router emulate --validate

Presets: paper-a .. paper-e (Table I of the paper). GPUs, models and formats are data files in
expert_router/emulate/profiles/; docs/emulator.md explains the performance model and its sources.
With --time-dilation k every emulated duration takes k times as long; divide client-side times by k
(the server says k in the X-Emulator-Time-Dilation header and the emulator_time_dilation metric).
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "emulate",
        help="run emulated GPU inference engines (OpenAI-compatible, streaming)",
        description="Serve one or more emulated inference engines: continuous batching, a paged KV cache and "
        "iteration times from a performance model of the GPU, model and weight format. No model runs; "
        "timing is the product.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument("--validate", action="store_true", help="print the validation table and exit")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from expert_router.emulate import serve, validation
    from expert_router.emulate.options import instances_from

    if args.validate:
        print(validation.markdown(validation.run()))
        return 0
    planned = instances_from(args)

    def announce() -> None:
        for instance in planned:
            print(
                f"emulated {instance.config.describe()} ready on http://{args.host}:{instance.port}/v1 "
                f"as {', '.join(instance.names)} (time dilation {args.time_dilation:g})",
                file=sys.stderr,
                flush=True,
            )

    serve(planned, args.host, args.time_dilation, on_started=announce)
    return 0
