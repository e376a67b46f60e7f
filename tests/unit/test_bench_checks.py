"""The benchmarks' own arithmetic, on hand-made input: bench/gateway.py's goal checks (a ratio is read
only where nginx's added time stands above the noise), and the helpers of the other benches."""

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

from expert_router.loadgen.records import RequestRecord
from expert_router.testing import REPO


@functools.cache  # bench/gateway.py reads the demo corpus when loaded
def load_bench(name: str = "gateway"):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_ratio_is_checked_where_nginx_adds_more_than_the_noise():
    bench = load_bench()
    assert bench.check(3.0, 2.0, 0.5, 1.5) == {"goal": 1.5, "noise_ms": 0.5, "ratio": 1.5, "met": True}
    assert bench.check(3.1, 2.0, 0.5, 1.5)["met"] is False


def test_no_ratio_is_read_where_nginx_adds_less_than_the_noise():
    bench = load_bench()
    verdict = bench.check(0.4, 0.03, 0.9, 1.5)  # 13x, of noise
    assert verdict["ratio"] is None and verdict["met"] is None and verdict["within_noise"] is True
    assert bench.check(1.0, 0.03, 0.9, 1.5)["within_noise"] is False


def test_no_ratio_is_reported_beside_a_check_that_says_it_cannot_be_read():
    """`overhead_ratio_*` was 13.3 where `overhead_check_*` said no ratio could be read."""
    bench = load_bench()

    def repetition(direct_ms: float) -> dict:
        ttft = {"direct": direct_ms, "nginx": direct_ms + 0.03, "gateway": direct_ms + 0.4}
        return {
            name: {streams: {"ttft": np.full(50, ms / 1000), "route_ms": np.array([0.1])} for streams in (1, 500)}
            for name, ms in ttft.items()
        }

    out = bench.summarize_latency([repetition(1.0), repetition(1.9), repetition(1.4)], [500])
    assert out["overhead_check_p50_c500"]["ratio"] is None
    assert out["overhead_ratio_p50_gateway_vs_nginx_c500"] is None


def record(t_start: float, chunks: list[float], stamps: list[float] | None = None) -> RequestRecord:
    return RequestRecord(
        request_id=0, workload_id=0, user_id=0, cluster_drawn=0, prompt_tokens=5, max_tokens=len(chunks),
        t_scheduled=t_start, t_start=t_start, t_first_token=chunks[0], t_end=chunks[-1], chunk_times=chunks,
        chunk_tokens=[1] * len(chunks), output_tokens=len(chunks), server_stamps=stamps,
    )  # fmt: skip


def test_the_simulator_bench_reads_records_as_records():
    """It called `.get` on a record (a dataclass since the records moved to one): an AttributeError before
    its JSON line; and it divided the tokens by the run's duration, though the last answers end after it."""
    loadgen = load_bench("loadgen")
    records = [record(0.0, [1.0, 2.0], stamps=[100.999, 101.998]), record(1.0, [3.0, 4.0])]
    assert loadgen.stamp_errors_ms(records, t0=100.0) == pytest.approx([1.0, 2.0])
    assert loadgen.token_rate(records) == pytest.approx(4 / 4.0)


def test_the_crosscheck_truth_follows_the_synthetic_servers_chunks():
    """A last, partial chunk goes out when the answer's last token is due: with 10 tokens in chunks of
    4 the truth's TPOT was 8.9 ms against the schedule's 6.7."""
    crosscheck = load_bench("crosscheck")
    args = argparse.Namespace(tokens=10, tokens_per_chunk=4, interval_ms=10.0, first_token_ms=50.0, streams=1)
    truth = crosscheck.truth(args)
    assert truth["ttft_ms"] == pytest.approx(80.0) and truth["tpot_ms"] == pytest.approx(60 / 9, abs=1e-3)
    assert crosscheck.truth(argparse.Namespace(**{**vars(args), "tokens": 128}))["tpot_ms"] == pytest.approx(
        1240 / 127, abs=1e-3
    )


def test_the_envoy_bench_calls_the_cpu_case_as_it_is_defined(monkeypatch, tmp_path):
    """It passed the processor's pids where the answer length goes: a TypeError after the latency cases."""
    sys.modules["gateway"] = load_bench()  # bench/envoy.py imports its sibling by that name
    envoy = load_bench("envoy")
    calls = []

    def measure_long(*args, **kwargs):
        bound = inspect.signature(sys.modules["gateway"].measure_long).bind(*args, **kwargs)
        calls.append(bound.arguments)
        return {}

    class Upstream:
        url = "http://127.0.0.1:1"

    monkeypatch.setattr(envoy, "measure_long", measure_long)
    monkeypatch.setattr(envoy, "synthetic_expert", lambda *a, **k: contextlib.nullcontext(Upstream()))
    monkeypatch.setattr(envoy, "start_paths", lambda *a: {"envoy": ("http://e", "expert-router", [1], [2])})
    args = argparse.Namespace(long_tokens=256)
    envoy.cpu_cases(args, tmp_path / "cpu", REPO)
    assert calls[0]["tokens"] == 256 and calls[0]["part_pids"] == [2]


def test_the_paper_bench_refuses_an_agreement_run_that_measured_nothing():
    """np.median of nothing is NaN: invalid JSON, and `max` over the differences kept or dropped it by
    its place in the list."""
    paper = load_bench("paper")
    answered = [record(0.0, [0.5, 0.6, 0.7]), record(0.1, [0.6, 0.8, 1.0])]
    assert set(paper.medians(answered, 0.2)) == {"ttft", "tpot", "system_throughput"}
    with pytest.raises(RuntimeError, match="measured no ttft, tpot, system_throughput"):
        paper.medians([], 0.2)


def test_loaded_users_ask_for_answers_of_varied_length_the_same_on_every_path(monkeypatch):
    """Closed-loop users whose answers all had one length stayed in step once any stall had lined them
    up, and the loaded cases measured bursts (5 ms bins at 1,000 streams held up to 60 sends against
    ~4 on average). Each user now draws its answers' lengths within --tokens x (1 ± spread), by seed."""
    bench = load_bench()

    def asked(seed: int, spread: float) -> list[int]:
        lengths: list[int] = []
        window = bench.Window(start=0.0, stop=float("inf"))

        async def send(pool, target, body, record, *args):
            lengths.append(json.loads(body)["max_tokens"])
            record.t_first_token = record.t_end = record.t_start
            if len(lengths) == 200:
                window.stop = 0.0

        monkeypatch.setattr(bench, "send", send)
        asyncio.run(bench.user(None, "http://127.0.0.1:1", "m", 32, 0.0, window, spread, seed=seed))
        return lengths

    varied = asked(seed=3, spread=0.5)
    assert min(varied) >= 16 and max(varied) <= 48 and len(set(varied)) > 20
    assert 28 < sum(varied) / len(varied) < 36
    assert varied == asked(seed=3, spread=0.5) and varied != asked(seed=4, spread=0.5)
    assert set(asked(seed=3, spread=0.0)) == {32}
    args = argparse.Namespace(tokens=32, length_spread=0.5)
    assert bench.longest(args) == 48  # the upstream's own length: what each request asks for is at most this


def test_the_benches_refuse_a_length_spread_outside_zero_to_one():
    bench = load_bench()
    assert bench.length_spread("0.25") == 0.25
    for bad in ("1", "-0.1", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="at least 0 and below 1"):
            bench.length_spread(bad)


def test_the_paper_bench_says_when_its_sweep_resumed(monkeypatch, tmp_path):
    """--keep on a folder that held cells resumed the sweep: `sweep_wall_s` then timed the rest only,
    with nothing in the line to say so."""
    paper = load_bench("paper")
    from expert_router.analysis import cell_table

    monkeypatch.setattr(paper, "simulate_experiment", lambda *a, **k: [tmp_path / "one", tmp_path / "two"])
    monkeypatch.setattr(paper, "load_cells", lambda results: dict.fromkeys("abcde"))
    monkeypatch.setattr(cell_table.Table, "of", classmethod(lambda cls, cells: cls({})))
    resumed = paper.sweep(1.0, 1, tmp_path)
    assert resumed["cells"] == 2 and resumed["cells_kept_from_before"] == 3 and resumed["sweep_whole"] is False
    monkeypatch.setattr(paper, "load_cells", lambda results: dict.fromkeys("ab"))
    assert paper.sweep(1.0, 1, tmp_path)["sweep_whole"] is True


def test_the_engine_bench_keeps_reading_the_servers_output_after_it_serves():
    """It read up to "serving" and no further: once the server had logged 64 KiB more, its writes
    blocked, and with them the server."""
    engine = load_bench("engine")
    chatty = "print('serving', flush=True); import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush()"
    with subprocess.Popen([sys.executable, "-c", chatty], stdout=subprocess.PIPE, text=True) as server:
        try:
            reader = engine.wait_for_serving(server)
            assert server.wait(timeout=30) == 0  # blocked on a full pipe, it would never exit
            reader.join(timeout=30)
        finally:
            server.kill()
    silent = subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.PIPE, text=True)
    with silent, pytest.raises(RuntimeError, match="exited"):
        engine.wait_for_serving(silent)


def test_nginx_moving_between_repetitions_is_noise_too():
    """The noise had been the direct path's spread only: an nginx p99 that ranged 0.07-0.67 ms over a
    steady direct path was divided into the gateway's as if it were its median, 0.5 ms (4.5x, "missed")."""
    bench = load_bench()

    def repetition(nginx_ms: float) -> dict:
        ttft = {"direct": 1.0, "nginx": 1.0 + nginx_ms, "gateway": 3.4}
        return {
            name: {streams: {"ttft": np.full(50, ms), "route_ms": np.array([0.1])} for streams in (1, 500)}
            for name, ms in ttft.items()
        }

    out = bench.summarize_latency([repetition(0.07), repetition(0.5), repetition(0.67)], [500])
    verdict = out["overhead_check_p99_c500"]
    assert verdict["ratio"] is None and verdict["noise_ms"] == pytest.approx(0.6, abs=1e-3)
    assert verdict["within_noise"] is False  # the gateway's 2.4 ms stands out all the same
    steady = bench.summarize_latency([repetition(0.5), repetition(0.52), repetition(0.48)], [500])
    assert (
        steady["overhead_check_p99_c500"]["ratio"] == pytest.approx(4.8)
        and not steady["overhead_check_p99_c500"]["met"]
    )
