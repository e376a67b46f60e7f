"""What the gateway adds, against a direct connection and against nginx, over the same upstream.

One run starts a synthetic expert (known token timing), nginx proxying to it (the paper's load
balancer; `deploy/nginx.conf` with one worker), and one gateway process routing to it. The same
streaming client then runs closed-loop users against each path in turn, at 1 and at `--streams`
concurrent streams, and records time to first token (TTFT). Overhead = TTFT through a path minus TTFT
direct, per percentile. CPU per relayed token is read from /proc for the gateway and nginx processes,
with 256-token answers (`cpu_us_per_token_*`) and with the short answers of the latency cases (`_short`).

Prints one JSON line. Run: python bench/gateway.py [--streams 500] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from expert_router.classifier import Classifier
from expert_router.corpus import load_corpus
from expert_router.http import install_uvloop
from expert_router.testing import Nginx, gateway, synthetic_expert, write_deployment

PROMPTS = [d.text for d in load_corpus("demo", limit=400)]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def process_tree(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid] + [p for c in children for p in process_tree(int(c))]


async def user(session: aiohttp.ClientSession, url: str, model: str, tokens: int, stop_at: float,
               ttfts: list[float], counts: list[int], route_ms: list[float], index: int) -> None:
    i = index
    while time.perf_counter() < stop_at:
        body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens, "stream": True}
        i += 1
        started = time.perf_counter()
        first = None
        n = 0
        async with session.post(url + "/v1/completions", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
            timing = response.headers.get("Server-Timing")
            async for line in response.content:
                if line.startswith(b"data: {"):
                    n += 1
                    if first is None:
                        first = time.perf_counter()
        ttfts.append((first - started) * 1000)
        counts.append(n)
        if timing:
            route_ms.append(float(timing.split("route;dur=")[1].split(",")[0]))


async def measure(url: str, model: str, streams: int, seconds: float, tokens: int, pids: list[int],
                  part_pids: list[int] | None = None) -> dict:
    """TTFTs, tokens and CPU seconds of `pids` over the measured window (and of `part_pids`, a subset
    whose share is wanted, as `part_cpu_s`)."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, read_bufsize=2**18) as session:
        # warm-up: connections, caches
        warm_ttfts: list[float] = []
        await asyncio.gather(*(user(session, url, model, 2, time.perf_counter() + 0.5, warm_ttfts, [], [], i)
                               for i in range(min(streams, 50))))
        ttfts: list[float] = []
        counts: list[int] = []
        route_ms: list[float] = []
        cpu_before = cpu_seconds(pids) if pids else 0.0
        part_before = cpu_seconds(part_pids) if part_pids else 0.0
        started = time.perf_counter()
        await asyncio.gather(*(user(session, url, model, tokens, started + seconds, ttfts, counts, route_ms, i)
                               for i in range(streams)))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pids) - cpu_before if pids else 0.0
        part_cpu = cpu_seconds(part_pids) - part_before if part_pids else 0.0
    return {"ttft": np.array(ttfts), "tokens": int(sum(counts)), "elapsed": elapsed, "cpu_s": cpu,
            "part_cpu_s": part_cpu, "route_ms": np.array(route_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=500, help="concurrent streams of the loaded case")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per path and level")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument("--interval-ms", type=float, default=40.0, help="upstream gap between tokens")
    parser.add_argument("--long-tokens", type=int, default=256, help="answer length of the CPU-per-token case")
    parser.add_argument("--long-streams", type=int, default=100, help="concurrent streams of the CPU-per-token case")
    args = parser.parse_args()
    install_uvloop()

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        classifier_dir = tmp / "classifier"
        Classifier.fit([d.text for d in load_corpus("demo")]).save(classifier_dir)
        models = [f"expert-{c}" for c in range(8)]
        with synthetic_expert(tmp, "upstream", "--tokens", str(args.tokens), "--interval-ms", str(args.interval_ms),
                              models=models) as upstream:
            deployment = write_deployment(tmp / "deploy.yaml", classifier_dir, {c: [upstream.url] for c in range(8)},
                                          max_inflight_per_expert=100_000, health_interval_s=5.0)
            with gateway(tmp, deployment) as gw, Nginx(tmp, [upstream.url]) as nginx:
                paths = {
                    "direct": (upstream.url, "expert-0", []),
                    "nginx": (nginx.url, "expert-0", process_tree(nginx.process.pid)),
                    "gateway": (gw.url, "expert-router", process_tree(gw.process.pid)),
                }
                results: dict[str, dict[int, dict]] = {name: {} for name in paths}
                for streams in (1, args.streams):
                    for name, (url, model, pids) in paths.items():
                        # c1 uses 2-token answers: TTFT does not depend on length, and many requests give
                        # stable percentiles.
                        tokens = 2 if streams == 1 else args.tokens
                        results[name][streams] = asyncio.run(measure(url, model, streams, args.seconds, tokens, pids))
            # CPU per relayed token with answers of a realistic length (MLPerf's reference averages ~294
            # output tokens), where per-request work is amortised as it is in real serving.
            with synthetic_expert(tmp, "long", "--tokens", str(args.long_tokens), "--interval-ms", "10",
                                  models=models) as upstream:
                deployment = write_deployment(tmp / "long.yaml", classifier_dir, {c: [upstream.url] for c in range(8)},
                                              max_inflight_per_expert=100_000, health_interval_s=5.0)
                with gateway(tmp, deployment, name="gateway-long") as gw, Nginx(tmp / "long", [upstream.url]) as nginx:
                    long_answers = {
                        name: asyncio.run(measure(url, model, args.long_streams, args.seconds * 2, args.long_tokens,
                                                  process_tree(server.process.pid)))
                        for name, url, model, server in (("nginx", nginx.url, "expert-0", nginx),
                                                         ("gateway", gw.url, "expert-router", gw))
                    }

    out: dict[str, object] = {"bench": "gateway", "streams": args.streams, "tokens_per_answer": args.tokens,
                              "interval_ms": args.interval_ms, "seconds_per_case": args.seconds}
    for streams, suffix in ((1, "c1"), (args.streams, f"c{args.streams}")):
        direct = results["direct"][streams]["ttft"]
        for name in ("gateway", "nginx"):
            ttft = results[name][streams]["ttft"]
            prefix = "route" if name == "gateway" else "nginx"
            out[f"{prefix}_overhead_p50_ms_{suffix}"] = round(float(np.percentile(ttft, 50) - np.percentile(direct, 50)), 3)
            out[f"{prefix}_overhead_p99_ms_{suffix}"] = round(float(np.percentile(ttft, 99) - np.percentile(direct, 99)), 3)
        for name in paths:
            r = results[name][streams]
            out[f"ttft_p50_ms_{name}_{suffix}"] = round(float(np.percentile(r["ttft"], 50)), 3)
            out[f"tokens_per_s_{name}_{suffix}"] = round(r["tokens"] / r["elapsed"], 1)
        route = results["gateway"][streams]["route_ms"]
        out[f"server_timing_route_p50_ms_{suffix}"] = round(float(np.percentile(route, 50)), 3)
        out[f"server_timing_route_p99_ms_{suffix}"] = round(float(np.percentile(route, 99)), 3)
    loaded = args.streams
    for name in ("gateway", "nginx"):
        r = results[name][loaded]
        out[f"cpu_us_per_token_{name}_short"] = round(r["cpu_s"] / max(r["tokens"], 1) * 1e6, 2)
        r = long_answers[name]
        out[f"cpu_us_per_token_{name}"] = round(r["cpu_s"] / max(r["tokens"], 1) * 1e6, 2)
    out["long_answer_tokens"] = args.long_tokens
    out["cpu_ratio_gateway_vs_nginx"] = round(out["cpu_us_per_token_gateway"] / max(out["cpu_us_per_token_nginx"], 1e-9), 2)
    out["cpu_ratio_gateway_vs_nginx_short"] = round(
        out["cpu_us_per_token_gateway_short"] / max(out["cpu_us_per_token_nginx_short"], 1e-9), 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
