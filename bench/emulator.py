"""How many emulated tokens per second one core serves in real time, and how close the emulator is to GPUs.

Real time: one emulated engine (Llama 3 8B FP16 on an H100, answers of 200 tokens) in its own process,
pinned to one core; the user simulator on the other core runs closed-loop users at rising concurrency.
For each level the server reports its timing error: how far each step's token delivery was from the
emulated timeline (`/stats` lateness, early or late). `max_tokens_per_s_1ms` is the highest delivered
token rate whose mean error stays under 1 ms (`..._p50_1ms`: median error). Every chunk also carries the
time its token was produced (`t`); `client_error_*` is the user simulator's read time minus it, the
error as a client sees it (transport included). The machine's load average is printed beside it: on a
shared machine, descheduling shows up as error.

Validation: the emulator against the published single-server table (profiles/published.yaml), in virtual
time; `validation_mean_error` is the mean absolute relative error over its rows (`--scale` sends that
share of the published request counts; 1.0 is the full table of docs/emulator.md).

Prints one JSON line. Run: python bench/emulator.py [--levels 16 32 64 128 256] [--seconds 10] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from expert_router.emulate import validation
from expert_router.loadgen.records import read_records
from expert_router.loadgen.workload import WorkItem, save_workload
from expert_router.testing import Server, cli_args, free_port

ANSWER = 200


def pinned(args: list[str], core: int | None) -> list[str]:
    return ["taskset", "-c", str(core), *args] if core is not None and shutil.which("taskset") else args


def server_stats(url: str, reset: bool = False) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats" + ("?reset=lateness" if reset else ""), timeout=10) as response:
        stats: dict[str, Any] = json.loads(response.read())
        return stats


def measure(url: str, workload: Path, users: int, seconds: float, out: Path, core: int | None) -> dict[str, Any]:
    server_stats(url, reset=True)  # the lateness counts start here
    args = cli_args(
        "load",
        url,
        "--model",
        "expert-0",
        "--workload",
        str(workload),
        "--users",
        str(users),
        "--duration",
        str(seconds),
        "--out",
        str(out),
    )
    result = subprocess.run(pinned(args, core), capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    after = server_stats(url)
    late = after["lateness_ms"]
    t0 = json.loads((out / "records.jsonl").read_text().splitlines()[0])["t0_monotonic"]
    records = [r for r in read_records(out / "records.jsonl") if r.status == "ok"]
    client = [np.array(r.chunk_times) + t0 - np.array(r.server_stamps) for r in records if r.server_stamps]
    if not client:
        raise RuntimeError(f"no answer at {users} users carried the engine's stamps")
    seen = np.concatenate(client) * 1000
    # Tokens over the requests' own span: the load command's wall time (its start-up, warm-up and
    # drain, when few tokens flow) had diluted the rate.
    span = max(r.t_end or r.t_start for r in records) - min(r.t_start for r in records)
    return {
        "users": users,
        "tokens_per_s": round(sum(r.output_tokens for r in records) / span, 1),
        "steps": late["steps"],
        "timing_error_mean_ms": round(late["mean"], 3),
        "timing_error_p50_ms": round(late["p50"], 3),
        "timing_error_p99_ms": round(late["p99"], 3),
        "timing_error_max_ms": round(late["max"], 3),
        "client_error_mean_ms": round(float(np.mean(np.abs(seen))), 3),
        "client_error_p50_ms": round(float(np.median(seen)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--scale", type=float, default=1.0, help="share of the published request counts")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    client_core = cores[0] if len(cores) > 1 else None
    server_core = cores[1] if len(cores) > 1 else None

    levels = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        workload = tmp / "workload.jsonl"
        prompt = " ".join(["word"] * 100)
        save_workload([WorkItem(i, 0, prompt, 100, ANSWER) for i in range(100)], workload)
        port = free_port()
        server_args = cli_args(
            "emulate",
            "--port",
            str(port),
            "--served-model-name",
            "expert-0",
            "--max-batch-size",
            "1024",
            "--output-lengths",
            f"fixed:{ANSWER}",
        )
        with Server(pinned(server_args, server_core), port, tmp / "emulate.log") as server:
            for users in args.levels:
                levels.append(measure(server.url, workload, users, args.seconds, tmp / f"u{users}", client_core))
    within = [lv for lv in levels if lv["timing_error_mean_ms"] < 1.0]
    best = max(within, key=lambda lv: lv["tokens_per_s"]) if within else None
    within_p50 = [lv for lv in levels if lv["timing_error_p50_ms"] < 1.0]
    best_p50 = max(within_p50, key=lambda lv: lv["tokens_per_s"]) if within_p50 else None
    rows = validation.run(scale=args.scale)
    print(
        json.dumps(
            {
                "bench": "emulator",
                "server_cores": 1 if server_core is not None else len(cores),
                "max_tokens_per_s_1ms": best["tokens_per_s"] if best else 0,
                "timing_error_mean_ms_at_max": best["timing_error_mean_ms"] if best else None,
                "max_tokens_per_s_p50_1ms": best_p50["tokens_per_s"] if best_p50 else 0,
                "load_average_1min": round(os.getloadavg()[0], 2),
                "levels": levels,
                "validation_rows": len(rows),
                "validation_scale": args.scale,
                "validation_mean_error": round(validation.mean_abs_error(rows), 4),
                "validation_mean_error_held_out": round(
                    validation.mean_abs_error(
                        [r for r in rows if not (r.gpu == "h100-sxm" and r.model == "llama-3-8b")]
                    ),
                    4,
                ),
                "validation_mean_error_single_gpu": round(validation.mean_abs_error([r for r in rows if r.tp == 1]), 4),
                "validation_mean_error_tp8": round(validation.mean_abs_error([r for r in rows if r.tp > 1]), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
