"""Envoy + our external processor, against our gateway and nginx, over the same upstream, in one run.

One synthetic expert (known token timing) is the upstream of every path: direct, nginx
(`deploy/nginx.conf`, one worker), our gateway (one process) and Envoy (`deploy/envoy/envoy.yaml`,
`--concurrency 1`) with `expert-router extproc` classifying each request. The same closed-loop streaming
client as bench/gateway.py runs at 1 and at `--streams` concurrent streams against each path in turn.
Added TTFT = TTFT through a path minus TTFT direct, per percentile. CPU per relayed token is read from
/proc for each path's processes (Envoy's includes the processor's, also shown on its own), with
`--long-tokens` answers (`cpu_us_per_token_*`) and with the short answers of the latency cases (`_short`).

Prints one JSON line. Run: python bench/envoy.py [--streams 500] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from expert_router.classifier import Classifier
from expert_router.corpus import load_corpus
from expert_router.http import install_uvloop
from expert_router.testing import Envoy, ExtProc, Nginx, gateway, synthetic_expert, write_deployment
from gateway import (
    LONG_INTERVAL_MS,
    add_length_spread,
    answers,
    longest,
    measure,
    measure_long,
    process_tree,
)  # bench/gateway.py: the client and the /proc CPU reading

PATHS = ("nginx", "gateway", "envoy")


def start_paths(
    stack: ExitStack, tmp: Path, classifier: Path, upstream_url: str
) -> dict[str, tuple[str, str, list[int], list[int]]]:
    """Every path over `upstream_url`: name -> (url, model to ask for, all its pids, the processor's pids)."""
    deployment = write_deployment(
        tmp / "deploy.yaml",
        classifier,
        {c: [upstream_url] for c in range(8)},
        max_inflight_per_expert=100_000,
        health_interval_s=5.0,
    )
    gw = stack.enter_context(gateway(tmp, deployment))
    nginx = stack.enter_context(Nginx(tmp, [upstream_url]))
    extproc = stack.enter_context(ExtProc(tmp, deployment))
    envoy = stack.enter_context(Envoy(tmp, deployment, extproc.grpc_port))
    extproc_pids = process_tree(extproc.process.pid)
    return {
        "nginx": (nginx.url, "expert-0", process_tree(nginx.process.pid), []),
        "gateway": (gw.url, "expert-router", process_tree(gw.process.pid), []),
        "envoy": (envoy.url, "expert-router", process_tree(envoy.process.pid) + extproc_pids, extproc_pids),
    }


def latency_cases(args: argparse.Namespace, tmp: Path, classifier: Path) -> dict[str, dict[int, dict[str, Any]]]:
    models = [f"expert-{c}" for c in range(8)]
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in ("direct", *PATHS)}
    with ExitStack() as stack:
        upstream = stack.enter_context(
            synthetic_expert(
                tmp, "upstream", "--tokens", str(longest(args)), "--interval-ms", str(args.interval_ms), models=models
            )
        )
        paths = {"direct": (upstream.url, "expert-0", [], []), **start_paths(stack, tmp, classifier, upstream.url)}
        for streams in (1, args.streams):
            tokens, spread = answers(args, streams)
            for name, (url, model, pids, _extproc_pids) in paths.items():
                results[name][streams] = asyncio.run(
                    measure(url, model, streams, args.seconds, tokens, pids, None, args.interval_ms, spread)
                )
    return results


def cpu_cases(args: argparse.Namespace, tmp: Path, classifier: Path) -> dict[str, dict[str, Any]]:
    """CPU per token with realistic answer lengths, where per-request work is amortised as in real serving."""
    tmp.mkdir()
    models = [f"expert-{c}" for c in range(8)]
    results: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        upstream = stack.enter_context(
            synthetic_expert(
                tmp, "long", "--tokens", str(args.long_tokens), "--interval-ms", str(LONG_INTERVAL_MS), models=models
            )
        )
        for name, (url, model, pids, extproc_pids) in start_paths(stack, tmp, classifier, upstream.url).items():
            results[name] = measure_long(args, url, model, pids, args.long_tokens, extproc_pids)
    return results


def per_token_us(result: dict[str, Any]) -> float:
    return round(result["cpu_s"] / max(result["tokens"], 1) * 1e6, 2)


def summarise(
    args: argparse.Namespace, latency: dict[str, dict[int, dict[str, Any]]], cpu: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bench": "envoy",
        "streams": args.streams,
        "tokens_per_answer": args.tokens,
        "length_spread": args.length_spread,
        "interval_ms": args.interval_ms,
        "seconds_per_case": args.seconds,
        "long_answer_tokens": args.long_tokens,
    }
    for streams in (1, args.streams):
        suffix = f"c{streams}"
        direct = latency["direct"][streams]["ttft"]
        out[f"ttft_p50_ms_direct_{suffix}"] = round(float(np.percentile(direct, 50)), 3)
        for name in PATHS:
            ttft = latency[name][streams]["ttft"]
            for q in (50, 99):
                added = float(np.percentile(ttft, q) - np.percentile(direct, q))
                out[f"added_ttft_p{q}_ms_{name}_{suffix}"] = round(added, 3)
            out[f"tokens_per_s_{name}_{suffix}"] = round(
                latency[name][streams]["tokens"] / latency[name][streams]["elapsed"], 1
            )
    for name in PATHS:
        out[f"cpu_us_per_token_{name}"] = per_token_us(cpu[name])
        out[f"cpu_us_per_token_{name}_short"] = per_token_us(latency[name][args.streams])
    share = cpu["envoy"]["part_cpu_s"] / max(cpu["envoy"]["tokens"], 1) * 1e6
    out["cpu_us_per_token_envoy_extproc_share"] = round(share, 2)
    for name in ("envoy", "gateway"):
        out[f"cpu_ratio_{name}_vs_nginx"] = round(
            out[f"cpu_us_per_token_{name}"] / max(out["cpu_us_per_token_nginx"], 1e-9), 2
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=500, help="concurrent streams of the loaded case")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per path and level")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer (the mean, with --length-spread)")
    add_length_spread(parser)
    parser.add_argument("--interval-ms", type=float, default=40.0, help="upstream gap between tokens")
    parser.add_argument("--long-tokens", type=int, default=256, help="answer length of the CPU-per-token case")
    parser.add_argument("--long-streams", type=int, default=100, help="concurrent streams of the CPU-per-token case")
    args = parser.parse_args()
    install_uvloop()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        classifier = tmp / "classifier"
        Classifier.fit([d.text for d in load_corpus("demo")]).save(classifier)
        latency = latency_cases(args, tmp, classifier)
        cpu = cpu_cases(args, tmp / "long", classifier)
    print(json.dumps(summarise(args, latency, cpu)))


if __name__ == "__main__":
    main()
