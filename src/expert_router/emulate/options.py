"""The emulator's command-line options, in the library: the `emulate` command parses them to serve, and a
virtual-time simulation parses the same `expert-router emulate ...` lines of an experiment file to know
which engines a configuration runs. One parser, so both read a command line the same way.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from expert_router.arguments import finite_float, non_negative_int, port, positive_int
from expert_router.emulate.config import build_config
from expert_router.emulate.launch import Instance, plan
from expert_router.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port, default=8100, help="port of the first instance; the others follow")
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="model names to answer to ({i}: instance index); default: the model key",
    )
    parser.add_argument("--preset", help="named engine settings, e.g. paper-e; flags override it")
    parser.add_argument("--instances", type=int, help="independent engines in this process (default 1)")
    parser.add_argument(
        "--time-dilation", type=finite_float, default=1.0, help="k: every emulated duration takes k x longer"
    )
    engine = parser.add_argument_group("engine (defaults: llama-3-8b fp16 on h100-sxm, TP1)")
    engine.add_argument("--gpu", help="h100-sxm, a100-sxm, h200-sxm, l40s")
    engine.add_argument("--model", help="llama-3-8b, llama-3-70b")
    engine.add_argument("--dtype", help="weight format: fp16, fp8, int4-awq")
    engine.add_argument("--tp", type=positive_int, help="tensor-parallel GPUs per instance")
    engine.add_argument("--kv-dtype", help="KV-cache precision: fp16, fp8 (default fp16)")
    engine.add_argument(
        "--kv-cache-gb", type=finite_float, help="KV memory per instance (default: 90%% of GPU memory minus weights)"
    )
    engine.add_argument("--max-batch-size", type=int, help="most sequences in a batch (default 256)")
    engine.add_argument("--max-num-tokens", type=int, help="most tokens per iteration (default 8192)")
    engine.add_argument(
        "--no-chunked-prefill",
        dest="chunked_prefill",
        action="store_const",
        const=False,
        help="prefill whole prompts only",
    )
    engine.add_argument("--policy", help="guaranteed_no_evict (default) or max_utilization (preempts)")
    engine.add_argument("--block-size", type=positive_int, help="tokens per KV block (default 64)")
    engine.add_argument(
        "--output-lengths",
        help="end-of-sequence draw: exponential:MEAN (default exponential:294), "
        "fixed:N, normal:MEAN,STD, lognormal:MEDIAN,SIGMA, file:PATH",
    )
    engine.add_argument("--seed", type=non_negative_int, help="seed of the answer-length draws")


def instances_from(args: argparse.Namespace) -> list[Instance]:
    """The engines a parsed command line asks for."""
    config, instances = build_config(
        args.preset,
        model=args.model,
        dtype=args.dtype,
        gpu=args.gpu,
        tp=args.tp,
        kv_dtype=args.kv_dtype,
        kv_cache_gb=args.kv_cache_gb,
        max_batch_size=args.max_batch_size,
        max_num_tokens=args.max_num_tokens,
        chunked_prefill=args.chunked_prefill,
        policy=args.policy,
        block_size=args.block_size,
        output_lengths=args.output_lengths,
        seed=args.seed,
        instances=args.instances,
    )
    if args.port and args.port + instances - 1 > 65535:
        raise UserError(f"--port {args.port} with {instances} instances runs past port 65535")
    names = args.served_model_name or [config.model.key + ("-{i}" if instances > 1 else "")]
    return plan(config, instances, args.port, names)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"emulate command line: {message}")


def parse_command(command: str | Sequence[str]) -> tuple[list[Instance], float]:
    """Instances and time dilation of an `expert-router emulate ...` command line (string or argv)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if "emulate" not in argv:
        raise UserError(f"not an emulate command: {' '.join(argv)}")
    parser = _Parser(prog="expert-router emulate", add_help=False)
    add_arguments(parser)
    parser.add_argument("--validate", action="store_true")
    args = parser.parse_args(argv[argv.index("emulate") + 1 :])
    return instances_from(args), float(args.time_dilation)
