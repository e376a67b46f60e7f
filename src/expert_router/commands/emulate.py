"""`expert-router emulate`: OpenAI-compatible servers that behave like GPU inference engines."""

from __future__ import annotations

import argparse
import sys

from expert_router.commands import HelpFormatter

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


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "emulate", help="run emulated GPU inference engines (OpenAI-compatible, streaming)",
        description="Serve one or more emulated inference engines: continuous batching, a paged KV cache and "
        "iteration times from a performance model of the GPU, model and weight format. No model runs; "
        "timing is the product.",
        epilog=EXAMPLES, formatter_class=HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100, help="port of the first instance; the others follow")
    parser.add_argument("--served-model-name", nargs="+", default=None,
                        help="model names to answer to ({i}: instance index); default: the model key")
    parser.add_argument("--preset", help="named engine settings, e.g. paper-e; flags override it")
    parser.add_argument("--instances", type=int, help="independent engines in this process (default 1)")
    parser.add_argument("--time-dilation", type=float, default=1.0, help="k: every emulated duration takes k x longer")
    engine = parser.add_argument_group("engine (defaults: llama-3-8b fp16 on h100-sxm, TP1)")
    engine.add_argument("--gpu", help="h100-sxm, a100-sxm, h200-sxm, l40s")
    engine.add_argument("--model", help="llama-3-8b, llama-3-70b")
    engine.add_argument("--dtype", help="weight format: fp16, fp8, int4-awq")
    engine.add_argument("--tp", type=int, help="tensor-parallel GPUs per instance")
    engine.add_argument("--kv-dtype", help="KV-cache precision: fp16, fp8 (default fp16)")
    engine.add_argument("--kv-cache-gb", type=float, help="KV memory per instance (default: 90%% of GPU memory "
                        "minus weights)")
    engine.add_argument("--max-batch-size", type=int, help="most sequences in a batch (default 256)")
    engine.add_argument("--max-num-tokens", type=int, help="most tokens per iteration (default 8192)")
    engine.add_argument("--no-chunked-prefill", dest="chunked_prefill", action="store_const", const=False,
                        help="prefill whole prompts only")
    engine.add_argument("--policy", help="guaranteed_no_evict (default) or max_utilization (preempts)")
    engine.add_argument("--block-size", type=int, help="tokens per KV block (default 64)")
    engine.add_argument("--output-lengths", help="end-of-sequence draw: exponential:MEAN (default exponential:294), "
                        "fixed:N, normal:MEAN,STD, lognormal:MEDIAN,SIGMA, file:PATH")
    engine.add_argument("--seed", type=int, help="seed of the answer-length draws")
    parser.add_argument("--validate", action="store_true", help="print the validation table and exit")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from expert_router.emulate import build_config, plan, serve, validation

    if args.validate:
        print(validation.markdown(validation.run()))
        return 0
    config, instances = build_config(
        args.preset, model=args.model, dtype=args.dtype, gpu=args.gpu, tp=args.tp, kv_dtype=args.kv_dtype,
        kv_cache_gb=args.kv_cache_gb, max_batch_size=args.max_batch_size, max_num_tokens=args.max_num_tokens,
        chunked_prefill=args.chunked_prefill, policy=args.policy, block_size=args.block_size,
        output_lengths=args.output_lengths, seed=args.seed, instances=args.instances,
    )
    names = args.served_model_name or [config.model.key + ("-{i}" if instances > 1 else "")]
    planned = plan(config, instances, args.port, names)

    def announce() -> None:
        for instance in planned:
            print(f"emulated {config.describe()} ready on http://{args.host}:{instance.port}/v1 "
                  f"as {', '.join(instance.names)} (time dilation {args.time_dilation:g})", file=sys.stderr, flush=True)

    serve(planned, args.host, args.time_dilation, on_started=announce)
    return 0
