"""`expert-router load TARGET_URL`: the user simulator."""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.live import Live
from rich.table import Table

from expert_router.arguments import finite_float
from expert_router.commands import HelpFormatter
from expert_router.errors import UserError
from expert_router.loadgen.workload import WorkloadSpec
from expert_router.progress import console, output

if TYPE_CHECKING:
    from expert_router.analysis.metrics import Summary
    from expert_router.loadgen.records import RequestRecord
    from expert_router.loadgen.users import LiveStats, RunSettings
    from expert_router.loadgen.workload import WorkItem

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
        "load",
        help="simulate N streaming users against an OpenAI-compatible endpoint",
        description="The user simulator: closed-loop users (or open-loop Poisson arrivals) sending streaming "
        "prompts drawn per cluster; every token's arrival time is recorded.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("url", metavar="TARGET_URL", help="base URL of the gateway or an expert server")
    parser.add_argument("--out", type=Path, required=True, help="folder for records, workload and summary")
    parser.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    parser.add_argument(
        "--model",
        help="model name to send (default: none; the gateway routes); "
        "'expert-{cluster}' names each prompt's drawn cluster (a direct path to the experts)",
    )
    parser.add_argument("--users", type=int, default=10, help="concurrent closed-loop users")
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument("--rate", type=finite_float, help="open loop: mean requests per second (Poisson)")
    parser.add_argument("--duration", type=finite_float, help="seconds to run (default: until --requests are done)")
    parser.add_argument("--requests", type=int, help="total requests to send")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="spread users over this many processes (each takes a disjoint stride of the workload)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="requests per user (open loop: in all) answered before measuring, not recorded",
    )
    _add_workload_options(parser.add_argument_group("workload"))
    parser.set_defaults(handler=run)


def _add_workload_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--workload", type=Path, help="replay a saved workload.jsonl instead of drawing one")
    group.add_argument("--corpus", default="demo", help="where prompts come from (as for `classifier fit`)")
    group.add_argument("--classifier", type=Path, help="saved classifier that tags prompts with clusters")
    group.add_argument("--mix", choices=("uniform", "normal"), default="uniform", help="share of requests per cluster")
    group.add_argument("--mix-mean", type=finite_float, help="normal mix: mean cluster index (default (k-1)/2)")
    group.add_argument("--mix-std", type=finite_float, help="normal mix: spread in clusters (default k/6)")
    group.add_argument(
        "--input-lengths", default="mlperf", help="mlperf, fixed (--input-mean/--input-std) or file:PATH"
    )
    group.add_argument("--input-mean", type=finite_float, default=335.0)
    group.add_argument("--input-std", type=finite_float, default=30.0)
    group.add_argument("--tokenizer", type=Path, help="tokenizer.json file to count prompt tokens (default: words)")
    group.add_argument("--max-tokens", type=int, default=1000, help="answer length cap; generation also ends at EOS")
    group.add_argument("--ignore-eos", action="store_true", help="ask the server to always generate --max-tokens")
    group.add_argument("--pool", type=int, default=1000, help="distinct prompts drawn for the workload")
    group.add_argument("--seed", type=int, default=0)


def workload_spec(args: argparse.Namespace) -> WorkloadSpec:
    if args.classifier is None:
        raise UserError("give --classifier DIR (to tag prompts with clusters) or --workload FILE")
    return WorkloadSpec(
        classifier=args.classifier,
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        mix=args.mix,
        mix_mean=args.mix_mean,
        mix_std=args.mix_std,
        input_lengths=args.input_lengths,
        input_mean=args.input_mean,
        input_std=args.input_std,
        max_tokens=args.max_tokens,
        pool=args.pool,
        seed=args.seed,
    )


def check(args: argparse.Namespace) -> None:
    from expert_router.loadgen.client import url_problem

    problem = url_problem(args.url)
    if problem is not None:
        raise UserError(f"TARGET_URL {problem}")
    if args.users < 1 or args.processes < 1 or args.pool < 1 or args.max_tokens < 1:
        raise UserError("--users, --processes, --pool and --max-tokens must be at least 1")
    if args.warmup < 0:
        raise UserError("--warmup must be 0 or more")
    if args.mode == "open" and (args.rate is None or args.rate <= 0):
        raise UserError("--mode open needs --rate (requests per second, > 0)")
    if args.duration is None and args.requests is None:
        raise UserError("say how long to run: --duration SECONDS and/or --requests N")
    if (args.duration is not None and args.duration <= 0) or (args.requests is not None and args.requests < 1):
        raise UserError("--duration and --requests must be positive")
    if args.processes > args.users and args.mode == "closed":
        raise UserError("--processes cannot exceed --users")


def run(args: argparse.Namespace) -> int:
    from expert_router.loadgen.records import RecordWriter, read_records
    from expert_router.loadgen.runner import run_processes
    from expert_router.loadgen.users import RunSettings
    from expert_router.loadgen.workload import draw_workload, load_workload, save_workload
    from expert_router.wire import clock

    check(args)
    items = load_workload(args.workload) if args.workload is not None else draw_workload(workload_spec(args))
    args.out.mkdir(parents=True, exist_ok=True)
    records_path = args.out / "records.jsonl"
    if records_path.exists():
        raise UserError(f"{records_path} exists: choose a new --out folder (records are never overwritten)")
    save_workload(items, args.out / "workload.jsonl")
    settings = RunSettings(
        url=args.url,
        chat=args.endpoint == "chat",
        model=args.model,
        users=args.users,
        mode=args.mode,
        rate=args.rate,
        duration_s=args.duration,
        requests=args.requests,
        ignore_eos=args.ignore_eos,
        warmup=args.warmup,
    )
    t0 = clock()
    meta = {
        "t0_monotonic": t0,
        "started_at": time.time(),
        "settings": asdict(settings),
        "host": platform.node(),
        "processes": args.processes,
        "token_stamps": "socket read callback (expert_router.wire)",
    }
    writer = RecordWriter(records_path)
    writer.write_meta(meta)
    writer.close()
    if args.processes == 1:
        checks = [_run_with_progress(settings, items, records_path, t0)]
    else:
        checks = run_processes(settings, items, records_path, t0, args.processes)
        if len(checks) < args.processes:
            console.print("not every worker reported back (interrupted, or one failed: see above); records kept")
    records = read_records(records_path)
    return _finish(args, records, checks, meta)


def _run_with_progress(settings: RunSettings, items: list[WorkItem], records_path: Path, t0: float) -> dict[str, Any]:
    from expert_router.loadgen.runner import run_here
    from expert_router.loadgen.users import LiveStats

    stats = LiveStats()
    if not console.is_terminal:
        return run_here(settings, items, records_path, t0, stats)
    with Live(
        _progress(stats, settings), console=console, refresh_per_second=2, transient=True, auto_refresh=False
    ) as live:
        return run_here(
            settings,
            items,
            records_path,
            t0,
            stats,
            on_tick=lambda: live.update(_progress(stats, settings), refresh=True),
        )


def _progress(stats: LiveStats, settings: RunSettings) -> Table:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    table = Table.grid(padding=(0, 2))
    table.add_row(
        "done",
        f"{stats.done:,}",
        "failed",
        f"{stats.failed:,}",
        "in flight",
        f"{stats.inflight:,}",
        "tokens/s",
        f"{stats.tokens / elapsed:,.0f}",
        "last TTFT",
        "-" if stats.last_ttft_ms is None else f"{stats.last_ttft_ms:,.0f} ms",
        "elapsed",
        f"{elapsed:,.0f} s" + (f" / {settings.duration_s:g} s" if settings.duration_s else ""),
    )
    return table


def _finish(
    args: argparse.Namespace, records: list[RequestRecord], checks: list[dict[str, Any]], meta: dict[str, Any]
) -> int:
    from expert_router.analysis.digest import summarize

    summary = summarize(records, mode=args.mode)
    reasons = [r for c in checks for r in c["reasons"]]
    if len(checks) < args.processes:
        reasons.append(f"only {len(checks)} of {args.processes} simulator processes reported back")
    if summary.requests and summary.failed / summary.requests > 0.5 and not any("failed" in r for r in reasons):
        reasons.append(f"{summary.failed} of {summary.requests} requests failed")
    valid = not reasons
    flags = itl_flags(summary, checks)
    document = {
        "meta": meta,
        "summary": summary.as_dict(),
        "self_check": checks,
        "valid": valid,
        "reasons": reasons,
        "flags": flags,
    }
    (args.out / "summary.json").write_text(json.dumps(document, indent=2))
    output.print(_summary_table(args.url, summary, checks, valid))
    for reason in dict.fromkeys(reasons + flags):
        console.print(f"[yellow]note:[/] {reason}")
    console.print(f"records: {args.out / 'records.jsonl'}")
    interrupted = any("interrupted" in r for r in reasons)
    if interrupted:
        return 130
    if summary.requests and summary.failed == summary.requests:
        console.print("[red]every request failed[/]: nothing was measured (is TARGET_URL right, and the model?)")
        return 1
    return 0


def itl_flags(summary: Summary, checks: list[dict[str, Any]]) -> list[str]:
    """Inter-chunk gaps are read no finer than the simulator's loop lag: say so when the two are alike."""
    lag_s = max((c["lag_p99_ms"] for c in checks), default=0.0) / 1000
    if summary.icl_median_s is not None and lag_s > 0.25 * summary.icl_median_s:
        return [
            f"inter-chunk latency (median {summary.icl_median_s * 1000:.1f} ms) is comparable to the simulator's "
            f"loop lag (p99 {lag_s * 1000:.1f} ms): its percentiles are blurred by the client"
        ]
    return []


def _summary_table(url: str, summary: Summary, checks: list[dict[str, Any]], valid: bool) -> Table:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:,.1f} ms"

    table = Table(title=f"{url}: {summary.requests:,} requests")
    table.add_column("metric")
    table.add_column("value", justify="right")
    error = f"{summary.ok:,} / {summary.failed:,} ({summary.error_rate:.1%} failed" + (
        f", median time to failure {ms(summary.time_to_failure_median_s)})" if summary.failed else ")"
    )
    rows = [
        ("ok / failed", error),
        ("output tokens (usage / chunks)", f"{summary.output_tokens:,} / {summary.chunk_tokens:,}"),
        (
            "system throughput (steady mean, 2 s windows)",
            "-"
            if summary.system_throughput_mean is None
            else f"{summary.system_throughput_mean:,.1f} tokens/s ({summary.steady_windows} windows)",
        ),
        ("TTFT median / p99", f"{ms(summary.ttft_median_s)} / {ms(summary.ttft_p99_s)} (n={summary.ttft_n})"),
        ("TPOT median / p99", f"{ms(summary.tpot_median_s)} / {ms(summary.tpot_p99_s)} (n={summary.tpot_n})"),
        ("inter-chunk latency median / p99", f"{ms(summary.icl_median_s)} / {ms(summary.icl_p99_s)}"),
        (
            "user throughput mean ± std",
            "-"
            if summary.user_throughput_mean is None
            else f"{summary.user_throughput_mean:,.1f} ± {summary.user_throughput_std or 0:,.1f} tokens/s",
        ),
        ("response time p50 / p99", f"{ms(summary.response_time_p50_s)} / {ms(summary.response_time_p99_s)}"),
        (
            "simulator loop lag p99 / max",
            " / ".join(f"{c['lag_p99_ms']:.1f} / {c['lag_max_ms']:.0f} ms" for c in checks),
        ),
        ("simulator CPU", " / ".join(f"{c['cpu_share']:.0%}" for c in checks)),
        ("valid measurement", "yes" if valid else "NO"),
    ]
    if summary.route_mean_s is not None:
        rows.insert(7, ("gateway time mean ± std", f"{ms(summary.route_mean_s)} ± {ms(summary.route_std_s)}"))
    for row in rows:
        table.add_row(*row)
    return table
