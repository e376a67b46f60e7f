"""`expert-router load TARGET_URL`: the user simulator."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import time
from dataclasses import asdict
from pathlib import Path

from rich.live import Live
from rich.table import Table

from expert_router.commands import HelpFormatter
from expert_router.errors import UserError
from expert_router.progress import console, output

EXAMPLES = """examples:
  # 100 closed-loop users for 60 s against the gateway, prompts from the demo corpus, uniform mix
  expert-router load http://127.0.0.1:8000 --classifier demo-out/classifier --users 100 --duration 60 --out runs/u100
  # the paper's normal scenario, inputs 335 +- 30 words, answers up to 200 tokens, against one expert server
  expert-router load http://127.0.0.1:8100 --model expert-0 --classifier demo-out/classifier --mix normal \\
      --input-lengths fixed --max-tokens 200 --users 300 --duration 120 --out runs/baseline-u300
  # open loop: Poisson arrivals at 20 requests/s, replaying a saved workload, over 2 processes
  expert-router load http://127.0.0.1:8000 --mode open --rate 20 --workload runs/u100/workload.jsonl \\
      --duration 60 --processes 2 --out runs/open20

Writes OUT/records.jsonl (one line per finished request, flushed as it ends), OUT/workload.jsonl
(replay it with --workload) and OUT/summary.json (metrics and the simulator's self-check).
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "load", help="simulate N streaming users against an OpenAI-compatible endpoint",
        description="The user simulator: closed-loop users (or open-loop Poisson arrivals) sending streaming "
        "prompts drawn per cluster; every token's arrival time is recorded.",
        epilog=EXAMPLES, formatter_class=HelpFormatter,
    )
    parser.add_argument("url", metavar="TARGET_URL", help="base URL of the gateway or an expert server")
    parser.add_argument("--out", type=Path, required=True, help="folder for records, workload and summary")
    parser.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    parser.add_argument("--model", help="model name to send (default: none; the gateway routes)")
    parser.add_argument("--users", type=int, default=10, help="concurrent closed-loop users")
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument("--rate", type=float, help="open loop: mean requests per second (Poisson)")
    parser.add_argument("--duration", type=float, help="seconds to run (default: until --requests are done)")
    parser.add_argument("--requests", type=int, help="total requests to send")
    parser.add_argument("--processes", type=int, default=1, help="spread users over this many processes")
    group = parser.add_argument_group("workload")
    group.add_argument("--workload", type=Path, help="replay a saved workload.jsonl instead of drawing one")
    group.add_argument("--corpus", default="demo", help="where prompts come from (as for `classifier fit`)")
    group.add_argument("--classifier", type=Path, help="saved classifier that tags prompts with clusters")
    group.add_argument("--mix", choices=("uniform", "normal"), default="uniform", help="share of requests per cluster")
    group.add_argument("--mix-mean", type=float, help="normal mix: mean cluster index (default (k-1)/2)")
    group.add_argument("--mix-std", type=float, help="normal mix: spread in clusters (default k/6)")
    group.add_argument("--input-lengths", default="mlperf", help="mlperf, fixed (--input-mean/--input-std) or file:PATH")
    group.add_argument("--input-mean", type=float, default=335.0)
    group.add_argument("--input-std", type=float, default=30.0)
    group.add_argument("--tokenizer", help="tokenizer.json file to count prompt tokens (default: words)")
    group.add_argument("--max-tokens", type=int, default=1000, help="answer length cap; generation also ends at EOS")
    group.add_argument("--ignore-eos", action="store_true", help="ask the server to always generate --max-tokens")
    group.add_argument("--pool", type=int, default=1000, help="distinct prompts drawn for the workload")
    group.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run)


def prepare_workload(args: argparse.Namespace):
    from expert_router.loadgen.workload import load_workload

    if args.workload is not None:
        return load_workload(args.workload)
    if args.classifier is None:
        raise UserError("give --classifier DIR (to tag prompts with clusters) or --workload FILE")
    from expert_router.classifier import Classifier
    from expert_router.corpus import load_corpus
    from expert_router.loadgen.lengths import parse_lengths
    from expert_router.loadgen.workload import (
        build_workload,
        mix_probabilities,
        word_count,
    )

    classifier = Classifier.load(args.classifier)
    documents = load_corpus(args.corpus)
    texts = [d.text for d in documents]
    by_cluster: dict[int, list[str]] = {}
    for text, cluster in zip(texts, classifier.route(texts).cluster.tolist()):
        by_cluster.setdefault(cluster, []).append(text)
    count = word_count
    if args.tokenizer:
        count = _tokenizer_counter(args.tokenizer)
    probabilities = mix_probabilities(classifier.k, args.mix, args.mix_mean, args.mix_std)
    lengths = parse_lengths(args.input_lengths, args.input_mean, args.input_std)
    return build_workload(by_cluster, args.pool, probabilities, lengths, args.max_tokens, args.seed, count)


def _tokenizer_counter(path: str):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError("--tokenizer needs the `tokenizers` package: pip install tokenizers") from None
    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
        raise UserError(f"cannot read tokenizer {path}: {exc}") from None
    return lambda text: len(tokenizer.encode(text).ids)


def check(args: argparse.Namespace) -> None:
    if not args.url.startswith(("http://", "https://")):
        raise UserError(f"TARGET_URL must start with http:// or https://, got {args.url!r}")
    if args.users < 1 or args.processes < 1 or args.pool < 1 or args.max_tokens < 1:
        raise UserError("--users, --processes, --pool and --max-tokens must be at least 1")
    if args.mode == "open" and (args.rate is None or args.rate <= 0):
        raise UserError("--mode open needs --rate (requests per second, > 0)")
    if args.duration is None and args.requests is None:
        raise UserError("say how long to run: --duration SECONDS and/or --requests N")
    if (args.duration is not None and args.duration <= 0) or (args.requests is not None and args.requests < 1):
        raise UserError("--duration and --requests must be positive")
    if args.processes > args.users and args.mode == "closed":
        raise UserError("--processes cannot exceed --users")


def run(args: argparse.Namespace) -> int:
    from expert_router.loadgen.client import clock
    from expert_router.loadgen.records import RecordWriter, read_records
    from expert_router.loadgen.users import RunSettings
    from expert_router.loadgen.workload import save_workload

    check(args)
    items = prepare_workload(args)
    args.out.mkdir(parents=True, exist_ok=True)
    records_path = args.out / "records.jsonl"
    if records_path.exists():
        raise UserError(f"{records_path} exists: choose a new --out folder (records are never overwritten)")
    save_workload(items, args.out / "workload.jsonl")
    settings = RunSettings(url=args.url, chat=args.endpoint == "chat", model=args.model, users=args.users,
                           mode=args.mode, rate=args.rate, duration_s=args.duration, requests=args.requests,
                           ignore_eos=args.ignore_eos)
    t0 = clock()
    meta = {"meta": True, "t0_monotonic": t0, "started_at": time.time(), "settings": asdict(settings),
            "host": platform.node(), "processes": args.processes}
    writer = RecordWriter(records_path)
    writer.write_raw(meta)
    writer.close()
    if args.processes == 1:
        checks = [_run_here(settings, items, records_path, t0)]
    else:
        checks = _run_processes(settings, items, records_path, t0, args.processes)
    records = read_records(records_path)
    return _finish(args, records, checks, meta)


def _run_here(settings, items, records_path: Path, t0: float) -> dict:
    from expert_router.http import install_uvloop
    from expert_router.loadgen.records import RecordWriter
    from expert_router.loadgen.users import LiveStats, run

    install_uvloop()
    stats = LiveStats()
    writer = RecordWriter(records_path)
    live = Live(_progress(stats, settings), console=console, refresh_per_second=2, transient=True,
                auto_refresh=False) if console.is_terminal else None
    tick = (lambda: live.update(_progress(stats, settings), refresh=True)) if live else None
    try:
        if live:
            live.start()
        result = asyncio.run(run(settings, items, writer, t0, stats, on_tick=tick))
    finally:
        if live:
            live.stop()
        writer.close()
    return asdict(result)


def _worker(settings, items, path: Path, t0: float, offset: int, queue) -> None:
    queue.put(_run_here(settings, items, path, t0) | {"worker": offset})


def _run_processes(settings, items, records_path: Path, t0: float, processes: int) -> list[dict]:
    import dataclasses

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = []
    for p in range(processes):
        share = settings.users // processes + (1 if p < settings.users % processes else 0)
        part = dataclasses.replace(
            settings, users=max(share, 1), process=p, processes=processes,
            rate=None if settings.rate is None else settings.rate / processes,
            requests=None if settings.requests is None else settings.requests // processes
            + (1 if p < settings.requests % processes else 0))
        path = records_path.with_name(f"records.part{p}.jsonl")
        workers.append((context.Process(target=_worker, args=(part, items, path, t0, p, queue)),
                        path))
    for process, _ in workers:
        process.start()
    checks = []
    try:
        for _ in workers:
            checks.append(queue.get())
    except KeyboardInterrupt:
        console.print("interrupted: waiting for the workers to record their requests")
    for process, _ in workers:
        process.join()
    with open(records_path, "ab") as merged:  # one file, whatever happened
        for _, path in workers:
            if path.exists():
                merged.write(path.read_bytes())
                path.unlink()
    return checks


def _progress(stats, settings) -> Table:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    table = Table.grid(padding=(0, 2))
    table.add_row("done", f"{stats.done:,}", "failed", f"{stats.failed:,}", "in flight", f"{stats.inflight:,}",
                  "tokens/s", f"{stats.tokens / elapsed:,.0f}",
                  "last TTFT", "-" if stats.last_ttft_ms is None else f"{stats.last_ttft_ms:,.0f} ms",
                  "elapsed", f"{elapsed:,.0f} s" + (f" / {settings.duration_s:g} s" if settings.duration_s else ""))
    return table


def _finish(args, records: list[dict], checks: list[dict], meta: dict) -> int:
    from expert_router.analysis.metrics import summarize

    summary = summarize(records)
    valid = all(c["valid"] for c in checks)
    reasons = [r for c in checks for r in c["reasons"]]
    document = {"meta": meta, "summary": summary.as_dict(), "self_check": checks, "valid": valid, "reasons": reasons}
    (args.out / "summary.json").write_text(json.dumps(document, indent=2))

    def ms(value):
        return "-" if value is None else f"{value * 1000:,.1f} ms"

    table = Table(title=f"{args.url}: {summary.requests:,} requests")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("ok / failed", f"{summary.ok:,} / {summary.failed:,}"),
        ("output tokens", f"{summary.output_tokens:,}"),
        ("system throughput (mean, 2 s windows)",
         "-" if summary.system_throughput_mean is None else f"{summary.system_throughput_mean:,.1f} tokens/s"),
        ("TTFT median / p99", f"{ms(summary.ttft_median_s)} / {ms(summary.ttft_p99_s)}"),
        ("TPOT mean", ms(summary.tpot_mean_s)),
        ("user throughput mean ± std", "-" if summary.user_throughput_mean is None
         else f"{summary.user_throughput_mean:,.1f} ± {summary.user_throughput_std:,.1f} tokens/s"),
        ("response time p50 / p99", f"{ms(summary.response_time_p50_s)} / {ms(summary.response_time_p99_s)}"),
        ("simulator event-loop lag p99", " / ".join(f"{c['lag_p99_ms']:.1f} ms" for c in checks)),
        ("simulator CPU", " / ".join(f"{c['cpu_share']:.0%}" for c in checks)),
        ("valid measurement", "yes" if valid else "NO"),
    ]
    for row in rows:
        table.add_row(*row)
    output.print(table)
    for reason in dict.fromkeys(reasons):
        console.print(f"[yellow]note:[/] {reason}")
    console.print(f"records: {args.out / 'records.jsonl'}")
    interrupted = any("interrupted" in r for r in reasons)
    return 130 if interrupted else 0
