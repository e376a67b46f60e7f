"""What the gateway adds, against a direct connection and against nginx, over the same upstream.

One run starts a synthetic expert (known token timing), nginx proxying to it (the paper's load
balancer; `deploy/nginx.conf` with one worker), and one gateway process routing to it. The same
streaming client then runs closed-loop users against each path, at 1 and at each of `--streams`
concurrent streams, and records time to first token (TTFT). Paths are interleaved and the whole set is
repeated `--repeats` times: each repetition's overhead is TTFT through a path minus TTFT direct, per
percentile, measured back to back; the line reports the median over repetitions with its spread
(min, max). CPU per relayed token is read from /proc for the gateway and nginx processes, with
256-token answers (`cpu_us_per_token_*`, a case of its own, repeated as often) and with the short
answers of the latency cases (`_short`); `requests_per_s_per_core_*` is requests answered per
CPU-second of the proxy with the short answers. The CPU case also runs `--tokens`-token answers at
its own load, and the two lengths split each proxy's CPU into a marginal cost per relayed token
(`cpu_us_per_marginal_token_*`) and a cost per request (`cpu_us_per_request_*`): a ratio of CPU per
token mixes the two in proportions set by the answer length. These too are medians over repetitions
with their spread, and each ratio is taken within one repetition.
`--soak-minutes N` also runs N minutes at the first loaded level through the gateway and reports lost
requests and resident-memory and open-file growth after warm-up.

How the load is made, and why (each was a larger effect than the one measured):
- The client is the load generator's own (`loadgen.client`): every chunk is stamped in the socket's
  read callback. A reading task (aiohttp's client, as here before) stamps a token when the task runs,
  behind every other task woken in the same loop pass: at 500 streams that queueing was as large as
  what the proxies add.
- Users start spread evenly over one answer's length and the window opens after two. Started
  together, closed-loop users whose answers have one length stay in step: all 500 sent within a
  millisecond every ~1.3 s, and "added TTFT" measured how long each proxy took to work through a burst
  of 500 requests (its per-request CPU times 500: p99 ~350 ms for the gateway, ~165 ms for nginx),
  not the latency of a steady load (p99 ~5 ms and ~4 ms, same machine).
- Each request of the loaded cases asks for its own answer length, drawn uniformly within `--tokens`
  x (1 ± `--length-spread`), 0.5 by default, each user's draws the same on every path. With one length
  for all, the spread start did not last: any stall (a collection, a process off its core for a few ms)
  lined users up, and users whose answers are all alike stay lined up. At 1,000 streams the sends
  counted in 5 ms bins varied with a coefficient of 0.65-1.53 (a steady, Poisson load: ~0.5), up to 60
  in one bin against ~4 on average, and one path's TTFT median moved 1.7-21.6 ms between repetitions.
  With the lengths spread: 0.51-0.57, at most 10-25 a bin, and the medians within 1.5-2.1 ms (gateway),
  0.8-1.0 (nginx) and 0.8-0.9 ms (direct).

Where the gateway's CPU and latency go, and what was tried, kept or dropped on the way (twelve passes
of profiling and A/B runs, and every whole run of this bench since), is in docs/gateway-performance.md.

The ratios are checked against the goals in the JSON (`overhead_check_*`, `cpu_check*`). Where
nginx's added time is smaller than the noise (how far the direct path's own percentile, or nginx's added
time, moves between repetitions, whichever moved more) its ratio divides noise by noise: the check then
reports no ratio and `met` null, and `within_noise` says whether the gateway's added time is inside that
noise as well.

`--pin` gives the proxy under test (nginx or the gateway, one loaded at a time) the last CPU to itself
and keeps the client and the upstream on the others, so added latency measures the proxy's own
queueing rather than its fight with the client for a core; the JSON says which CPUs each side had.

Prints one JSON line. Run: python bench/gateway.py [--streams 500 1000] [--seconds 8] [--repeats 3] [--pin]
[--length-spread 0.5] [--router python|nginx-lua]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expert_router.classifier import Classifier
from expert_router.corpus import load_corpus
from expert_router.http import install_uvloop
from expert_router.loadgen.client import Target, send
from expert_router.loadgen.records import RequestRecord
from expert_router.loadgen.workload import WorkItem
from expert_router.testing import Nginx, NginxRouter, Server, gateway, synthetic_expert, write_deployment
from expert_router.wire import ConnectionPool, clock

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


@dataclass
class Window:
    """A measured window of one case: what the users saw in it, and the proxy's CPU over it."""

    start: float
    stop: float
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    requests: int = 0
    route_ms: list[float] = field(default_factory=list)
    short_answers: int = 0


async def user(
    pool: ConnectionPool,
    url: str,
    model: str,
    tokens: int,
    start_at: float,
    window: Window,
    spread: float = 0.0,
    seed: int = 0,
) -> None:
    """One closed-loop user, from `start_at` until the window ends, asking for answers of `tokens`
    tokens, or with `spread`, of a length drawn uniformly within `tokens` x (1 ± spread) (the same
    draws, by `seed`, on every path).

    It runs on the load generator's own client (`loadgen.client.send`): each chunk is stamped inside
    the socket's read callback, so TTFT is not inflated by the client's event-loop queueing, which at
    500+ streams on 2 cores was as large as the differences measured. Only requests sent inside the
    window count for latency; tokens count where they arrive inside it, requests where they end (the
    CPU's window).
    """
    target = Target(url, model=model)
    await asyncio.sleep(max(start_at - clock(), 0.0))
    i = int(start_at * 1e6)
    lengths = random.Random(seed)
    low, high = round(tokens * (1 - spread)), round(tokens * (1 + spread))
    while clock() < window.stop:
        length = lengths.randint(low, high)
        body = target.body(WorkItem(i, 0, PROMPTS[i % len(PROMPTS)], 0, length))
        record = RequestRecord(i, i, 0, 0, 0, length, clock())
        i += 1
        await send(pool, target, body, record, 0.0, 120.0)
        if not record.ok or record.t_first_token is None or record.t_end is None:
            raise RuntimeError(f"{url}: {record.status}: {record.error}")
        if window.start <= record.t_start < window.stop:
            window.ttfts.append((record.t_first_token - record.t_start) * 1000)
            if "route" in record.server_timing:
                window.route_ms.append(record.server_timing["route"] * 1000)
        window.tokens += sum(1 for t in record.chunk_times if window.start <= t < window.stop)
        if window.start <= record.t_end < window.stop:
            window.requests += 1
            window.short_answers += len(record.chunk_times) < length


async def cpu_over(window: Window, pids: list[int]) -> float:
    """CPU seconds `pids` used from the window's start to its stop."""
    await asyncio.sleep(max(window.start - clock(), 0.0))
    before = cpu_seconds(pids) if pids else 0.0
    await asyncio.sleep(max(window.stop - clock(), 0.0))
    return cpu_seconds(pids) - before if pids else 0.0


async def measure(
    url: str,
    model: str,
    streams: int,
    seconds: float,
    tokens: int,
    pids: list[int],
    part_pids: list[int] | None = None,
    interval_ms: float = 40.0,
    spread: float = 0.0,
) -> dict:
    """TTFTs, tokens and CPU seconds of `pids` over the measured window (and of `part_pids`, a subset
    whose share is wanted, as `part_cpu_s`); answer lengths within `tokens` x (1 ± `spread`).

    The users start evenly spread over one answer's length, and the window opens one answer's length
    after the last has started. Started together, closed-loop users with answers of one length stay in
    step: every ~1.3 s all 500 sent at once, and TTFT measured how long a proxy took to work through a
    burst of 500 requests (its per-request CPU times 500), not the latency a steady load sees.
    """
    answer_s = max(tokens * interval_ms / 1000, 0.05)
    now = clock()
    window = Window(start=now + 2 * answer_s + 0.2, stop=now + 2 * answer_s + 0.2 + seconds)
    pool = ConnectionPool(10.0)
    try:
        users = [
            user(pool, url, model, tokens, now + 0.1 + answer_s * i / streams, window, spread, seed=i)
            for i in range(streams)
        ]
        cpu, part_cpu, *_ = await asyncio.gather(cpu_over(window, pids), cpu_over(window, part_pids or []), *users)
    finally:
        pool.close()
    return {
        "ttft": np.array(window.ttfts),
        "tokens": window.tokens,
        "requests": window.requests,
        "elapsed": seconds,
        "cpu_s": cpu,
        "part_cpu_s": part_cpu,
        "route_ms": np.array(window.route_ms),
    }


NO_LIMIT = 65_535
"""Requests in flight per expert: more than any case here sends, so no request waits for a slot, while
the nginx router still counts every one in its shared dict, as deployed."""

LONG_INTERVAL_MS = 10.0
"""Upstream gap between tokens in the CPU-per-token case."""


def measure_long(
    args: argparse.Namespace, url: str, model: str, pids: list[int], tokens: int, part_pids: list[int] | None = None
) -> dict:
    """The CPU-per-token case: `--long-streams` users, `tokens`-token answers, twice `--seconds`."""
    return asyncio.run(
        measure(
            url,
            model,
            args.long_streams,
            args.seconds * 2,
            tokens,
            pids,
            part_pids,
            interval_ms=LONG_INTERVAL_MS,
        )
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[500, 1000], help="concurrent streams, loaded cases")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per path, level and repetition")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of every path and level")
    parser.add_argument(
        "--tokens", type=int, default=32, help="tokens per answer (and the short length of the CPU split)"
    )
    parser.add_argument("--interval-ms", type=float, default=40.0, help="upstream gap between tokens")
    add_length_spread(parser)
    parser.add_argument("--long-tokens", type=int, default=256, help="answer length of the CPU-per-token case")
    parser.add_argument("--long-streams", type=int, default=100, help="concurrent streams of the CPU-per-token case")
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="also soak the gateway this long (not in CI)")
    parser.add_argument(
        "--pin", action="store_true", help="the proxies on the last CPU, client and upstream on the rest"
    )
    parser.add_argument(
        "--router",
        choices=("python", "nginx-lua"),
        default="python",
        help="the gateway measured: the Python gateway (expert-router serve) or nginx routing with Lua "
        "(expert-router nginx-router)",
    )
    return parser.parse_args()


def length_spread(text: str) -> float:
    """--length-spread's value: a fraction of --tokens, from 0 up to (not including) 1."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, not {text}")
    return value


def add_length_spread(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--length-spread",
        type=length_spread,
        default=0.5,
        help="loaded latency cases: answer lengths drawn uniformly within --tokens x (1 ± this); 0: all alike",
    )


def answers(args: argparse.Namespace, streams: int) -> tuple[int, float]:
    """(tokens, spread) of the answers at a level: 2 alike at one stream (TTFT does not depend on
    length; many short requests), `--tokens` with `--length-spread` under load."""
    return (2, 0.0) if streams == 1 else (args.tokens, args.length_spread)


def longest(args: argparse.Namespace) -> int:
    """The upstream's answer length in the latency cases: each request asks for its own, up to this."""
    return math.ceil(args.tokens * (1 + args.length_spread))


def pin(args: argparse.Namespace, proxies: list[int], others: list[int]) -> dict[str, list[int]] | None:
    """With --pin: every thread of the proxies' processes on the last CPU, the client and upstream elsewhere."""
    cpus = sorted(os.sched_getaffinity(0))
    if not args.pin or len(cpus) < 2:
        return None
    sides = {"proxy_cpus": cpus[-1:], "client_and_upstream_cpus": cpus[:-1]}
    for pids, side in ((proxies, sides["proxy_cpus"]), ([os.getpid(), *others], sides["client_and_upstream_cpus"])):
        for pid in pids:
            for task in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(task), side)
    return sides


def start_router(args: argparse.Namespace, tmp: Path, deployment: Path, name: str) -> Server | NginxRouter:
    """The gateway under test: the Python gateway (`--router python`), or nginx routing with Lua
    (`--router nginx-lua`, `expert-router nginx-router`), which the JSON's "gateway" keys then mean."""
    if args.router == "nginx-lua":
        return NginxRouter(tmp, deployment, name=name)
    return gateway(tmp, deployment, name=name)


def latency_cases(
    args: argparse.Namespace, tmp: Path, classifier_dir: Path
) -> tuple[list[dict], dict | None, dict | None]:
    """Every repetition of every level and path, interleaved; plus the soak when asked, and the pinning."""
    models = [f"expert-{c}" for c in range(8)]
    repeats: list[dict] = []
    soak, pinned = None, None
    with synthetic_expert(
        tmp, "upstream", "--tokens", str(longest(args)), "--interval-ms", str(args.interval_ms), models=models
    ) as upstream:
        deployment = write_deployment(
            tmp / "deploy.yaml",
            classifier_dir,
            {c: [upstream.url] for c in range(8)},
            max_inflight_per_expert=NO_LIMIT,
            health_interval_s=5.0,
        )
        with start_router(args, tmp, deployment, "gateway") as gw, Nginx(tmp, [upstream.url]) as nginx:
            paths = {
                "direct": (upstream.url, "expert-0", []),
                "nginx": (nginx.url, "expert-0", process_tree(nginx.process.pid)),
                "gateway": (gw.url, "expert-router", process_tree(gw.process.pid)),
            }
            pinned = pin(args, paths["nginx"][2] + paths["gateway"][2], process_tree(upstream.process.pid))
            for repeat in range(args.repeats):
                results: dict = {name: {} for name in paths}
                for streams in (1, *args.streams):
                    order = list(paths)[repeat % 3 :] + list(paths)[: repeat % 3]  # no path always first
                    for name in order:
                        url, model, pids = paths[name]
                        tokens, spread = answers(args, streams)
                        results[name][streams] = asyncio.run(
                            measure(url, model, streams, args.seconds, tokens, pids, None, args.interval_ms, spread)
                        )
                repeats.append(results)
            if args.soak_minutes > 0:
                soak = asyncio.run(run_soak(gw, args, args.soak_minutes * 60))
    return repeats, soak, pinned


def cpu_cases(args: argparse.Namespace, tmp: Path, classifier_dir: Path) -> list[dict]:
    """CPU per relayed token with answers of a realistic length (MLPerf's reference averages ~294 output
    tokens), where per-request work is amortised as it is in real serving. Repeated `--repeats` times,
    nginx and the gateway taking turns at going first: one pair of runs moved by ±15% from one
    repetition to the next on the 2-core machine, nginx's as much as the gateway's.

    Each proxy also runs `--tokens`-token answers under the same streams and token gap, so that its CPU,
    a x tokens + b x requests, splits into a, the marginal CPU of one relayed token, and b, that of one
    request (`split_cost`): which of the two makes a ratio is then read off, not guessed."""
    models = [f"expert-{c}" for c in range(8)]
    with synthetic_expert(
        tmp, "long", "--tokens", str(args.long_tokens), "--interval-ms", str(LONG_INTERVAL_MS), models=models
    ) as upstream:
        deployment = write_deployment(
            tmp / "long.yaml",
            classifier_dir,
            {c: [upstream.url] for c in range(8)},
            max_inflight_per_expert=NO_LIMIT,
            health_interval_s=5.0,
        )
        with start_router(args, tmp, deployment, "gateway-long") as gw, Nginx(tmp / "long", [upstream.url]) as nginx:
            pin(
                args, process_tree(gw.process.pid) + process_tree(nginx.process.pid), process_tree(upstream.process.pid)
            )
            paths = [("nginx", nginx.url, "expert-0", nginx), ("gateway", gw.url, "expert-router", gw)]
            return [
                {
                    name: {
                        length: measure_long(args, url, model, process_tree(server.process.pid), length)
                        for length in (args.long_tokens, args.tokens)
                    }
                    for name, url, model, server in (paths if repeat % 2 == 0 else paths[::-1])
                }
                for repeat in range(args.repeats)
            ]


def split_cost(cases: list[dict]) -> tuple[float, float]:
    """(us per token, us per request): the least-squares a and b of CPU = a x tokens + b x requests."""
    counts = np.array([[case["tokens"], case["requests"]] for case in cases], dtype=float)
    cpu_us = np.array([case["cpu_s"] * 1e6 for case in cases])
    (per_token, per_request), *_ = np.linalg.lstsq(counts, cpu_us, rcond=None)
    return float(per_token), float(per_request)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(float(np.median(values)), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


GOALS = {50: 1.5, 99: 2.0}
"""Added time to first token at the loaded levels: at most this many times nginx's, by percentile."""
CPU_GOALS = {"": 1.2, "_short": 1.5}
"""CPU per relayed token: at most this many times nginx's, with long answers ("") and short ones."""


def summarize_latency(repeats: list[dict], levels: list[int]) -> dict[str, object]:
    """Added TTFT per path, level and percentile (median over repetitions, with spread), the ratio of
    the gateway's to nginx's, and at the loaded levels a check against `GOALS` that says when it
    cannot be read: where nginx's added time is smaller than the noise (how far the direct path's own
    percentile, or nginx's added time, moved between repetitions: an nginx p99 that ranged 0.07-0.67
    ms had been divided into the gateway's as if it were 0.5), a ratio divides noise by noise, and is
    not reported (the ratio's key is null then, at every level: it had been reported beside a check
    that said it was unreadable)."""
    out: dict[str, object] = {}
    for streams in (1, *levels):
        suffix = f"c{streams}"
        added: dict[tuple[str, int], float] = {}
        moved: dict[tuple[str, int], float] = {}
        for name, prefix in (("gateway", "route"), ("nginx", "nginx")):
            for q in (50, 99):
                diffs = [
                    float(np.percentile(r[name][streams]["ttft"], q) - np.percentile(r["direct"][streams]["ttft"], q))
                    for r in repeats
                ]
                out[f"{prefix}_overhead_p{q}_ms_{suffix}"] = spread(diffs)
                added[name, q] = float(np.median(diffs))
                moved[name, q] = max(diffs) - min(diffs)
        for q in (50, 99):
            direct = [float(np.percentile(r["direct"][streams]["ttft"], q)) for r in repeats]
            noise = max(max(direct) - min(direct), moved["nginx", q])
            verdict = check(added["gateway", q], added["nginx", q], noise, GOALS[q])
            out[f"overhead_ratio_p{q}_gateway_vs_nginx_{suffix}"] = verdict["ratio"]
            if streams in levels:
                out[f"overhead_check_p{q}_{suffix}"] = verdict
        route = np.concatenate([r["gateway"][streams]["route_ms"] for r in repeats])
        for q in (50, 99):  # none from the nginx router, which sends no Server-Timing
            out[f"server_timing_route_p{q}_ms_{suffix}"] = (
                round(float(np.percentile(route, q)), 3) if len(route) else None
            )
    return out


def check(gateway_ms: float, nginx_ms: float, noise_ms: float, goal: float) -> dict[str, object]:
    """The gateway's added time against `goal` x nginx's; `met` is None where nginx's is within the noise
    (then `within_noise` says whether the gateway's is too). With one repetition the noise is unknown (0)."""
    verdict: dict[str, object] = {"goal": goal, "noise_ms": round(noise_ms, 3)}
    if nginx_ms > noise_ms:
        ratio = gateway_ms / nginx_ms
        return verdict | {"ratio": round(ratio, 2), "met": ratio <= goal}
    return verdict | {"ratio": None, "met": None, "within_noise": gateway_ms <= noise_ms}


def summarize_cpu(repeats: list[dict], loaded: int, long_runs: list[dict], long_tokens: int) -> dict[str, object]:
    """CPU per token and requests per CPU-second of each proxy, the split of its CPU into a marginal
    cost per token and a cost per request, and the ratios: the median over repetitions with its
    spread, each repetition's ratio taken within the repetition."""

    def per_token(case: dict) -> float:
        return float(case["cpu_s"] / max(case["tokens"], 1) * 1e6)

    out: dict[str, object] = {}
    for suffix, runs in (
        ("", [{n: r[n][long_tokens] for n in ("gateway", "nginx")} for r in long_runs]),
        ("_short", [{n: r[n][loaded] for n in ("gateway", "nginx")} for r in repeats]),
    ):
        for name in ("gateway", "nginx"):
            out[f"cpu_us_per_token_{name}{suffix}"] = spread([per_token(r[name]) for r in runs])
        ratios = spread([per_token(r["gateway"]) / max(per_token(r["nginx"]), 1e-9) for r in runs])
        out[f"cpu_ratio_gateway_vs_nginx{suffix}"] = ratios
        goal = CPU_GOALS[suffix]
        met = {"met": ratios["median"] <= goal, "every_repetition": ratios["max"] <= goal}
        out[f"cpu_check{suffix}"] = {"goal": goal} | met
    for name in ("gateway", "nginx"):
        out[f"requests_per_s_per_core_{name}"] = spread(
            [r[name][loaded]["requests"] / max(r[name][loaded]["cpu_s"], 1e-9) for r in repeats]
        )
    if any(len(r[name]) < 2 for r in long_runs for name in ("gateway", "nginx")):
        return out  # --tokens equal to --long-tokens: one length, nothing to split
    splits = [{name: split_cost(list(r[name].values())) for name in ("gateway", "nginx")} for r in long_runs]
    for i, part in enumerate(("marginal_token", "request")):
        for name in ("gateway", "nginx"):
            out[f"cpu_us_per_{part}_{name}"] = spread([s[name][i] for s in splits])
        # nginx's cost per request is small enough that the fit can put it at or below zero: no ratio then
        readable = [s["gateway"][i] / s["nginx"][i] for s in splits if s["nginx"][i] > 0]
        out[f"cpu_ratio_per_{part}_gateway_vs_nginx"] = spread(readable) if readable else None
    return out


async def run_soak(gw: object, args: argparse.Namespace, seconds: float) -> dict[str, object]:
    """`streams` users for `seconds` through the gateway; memory and descriptors sampled every 5 s."""
    pid = gw.process.pid  # type: ignore[attr-defined]
    samples: list[tuple[int, int]] = []
    now = clock()
    window = Window(start=now, stop=now + seconds)
    streams, tokens, spread = args.streams[0], args.tokens, args.length_spread
    answer_s = tokens * args.interval_ms / 1000

    async def sample() -> None:
        while clock() < window.stop:
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            samples.append((rss, len(os.listdir(f"/proc/{pid}/fd"))))
            await asyncio.sleep(5)

    pool = ConnectionPool(10.0)
    try:
        sampler = asyncio.create_task(sample())
        url: str = gw.url  # type: ignore[attr-defined]
        users = [
            user(pool, url, "expert-router", tokens, now + answer_s * i / streams, window, spread, seed=i)
            for i in range(streams)
        ]
        results = await asyncio.gather(*users, return_exceptions=True)
        sampler.cancel()
    finally:
        pool.close()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    warm = samples[len(samples) // 5 :] or samples
    return {
        "soak_seconds": seconds,
        "soak_requests": window.requests,
        "soak_lost_or_hung": len(errors),
        "soak_short_answers": window.short_answers,
        "soak_rss_growth_after_warmup": round(warm[-1][0] / warm[0][0] - 1, 3) if warm else None,
        "soak_fd_growth_after_warmup": warm[-1][1] - warm[0][1] if warm else None,
    }


def main() -> None:
    args = parse_args()
    install_uvloop()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        classifier_dir = tmp / "classifier"
        Classifier.fit([d.text for d in load_corpus("demo")]).save(classifier_dir)
        repeats, soak, pinned = latency_cases(args, tmp, classifier_dir)
        long_runs = cpu_cases(args, tmp, classifier_dir)
    out: dict[str, object] = {
        "bench": "gateway",
        "router": args.router,
        "streams": args.streams,
        "tokens_per_answer": args.tokens,
        "length_spread": args.length_spread,
        "interval_ms": args.interval_ms,
        "seconds_per_case": args.seconds,
        "repeats": args.repeats,
        "long_answer_tokens": args.long_tokens,
    }
    out["pinned"] = pinned
    out.update(summarize_latency(repeats, args.streams))
    out.update(summarize_cpu(repeats, args.streams[0], long_runs, args.long_tokens))
    if soak is not None:
        out.update(soak)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
