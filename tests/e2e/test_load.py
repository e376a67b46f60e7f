"""The user simulator against real streaming servers whose token times are known."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from expert_router.analysis import metrics
from expert_router.loadgen.records import RequestRecord, read_records
from expert_router.testing import cli_args, gateway, synthetic_expert, write_deployment

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    from expert_router.classifier import Classifier
    from expert_router.corpus import load_corpus

    out = tmp_path_factory.mktemp("classifier") / "classifier"
    Classifier.fit([d.text for d in load_corpus("demo")]).save(out)
    return out


def load(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args("load", *args), capture_output=True, text=True, timeout=timeout)


def meta(out: Path) -> dict:
    return json.loads((out / "records.jsonl").read_text().splitlines()[0])


def test_token_times_match_the_server_stamps(tmp_path, classifier):
    with synthetic_expert(tmp_path, "stamping", "--tokens", "12", "--interval-ms", "15") as server:
        out = tmp_path / "run"
        result = load(
            server.url,
            "--model",
            "expert-0",
            "--classifier",
            str(classifier),
            "--users",
            "20",
            "--requests",
            "80",
            "--out",
            str(out),
        )
        assert result.returncode == 0, result.stderr
        stats = server.get_json("/stats")[1]
    records = read_records(out / "records.jsonl")
    assert len(records) == 80 and stats["completed"] == 80 + 20  # one warm-up request per user, not recorded
    assert len({r.request_id for r in records}) == 80
    t0 = meta(out)["t0_monotonic"]
    errors = []
    for r in records:
        assert r.status == "ok" and r.output_tokens == 12 == len(r.chunk_times) == len(r.server_stamps or [])
        assert r.token_source == "usage-continuous"
        client = np.array(r.chunk_times) + t0
        server_sent = np.array(r.server_stamps)
        assert (client >= server_sent).all()  # a token cannot be read before it was sent
        errors.extend(client - server_sent)
        assert r.t_start <= r.t_first_token <= r.chunk_times[-1] <= r.t_end
    assert np.mean(errors) < 0.005  # loose on a shared CI machine; bench/loadgen.py measures it properly
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["ok"] == 80 and "valid" in summary


def test_chat_endpoint_and_routing_through_the_gateway(tmp_path, classifier):
    with synthetic_expert(tmp_path, "experts", "--tokens", "4", "--interval-ms", "1") as experts:
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)})
        with gateway(tmp_path, deployment) as gw:
            out = tmp_path / "run"
            result = load(
                gw.url,
                "--endpoint",
                "chat",
                "--classifier",
                str(classifier),
                "--users",
                "8",
                "--requests",
                "200",
                "--input-lengths",
                "fixed",
                "--input-mean",
                "60",
                "--out",
                str(out),
            )
            assert result.returncode == 0, result.stderr
    records = read_records(out / "records.jsonl")
    assert all(r.status == "ok" and r.output_tokens == 4 for r in records)
    assert all(set(r.server_timing) == {"route", "classify", "queue", "connect"} for r in records)
    assert all(r.expert == f"expert-{r.cluster_routed}" for r in records)
    agreement = np.mean([r.cluster_routed == r.cluster_drawn for r in records])
    assert agreement > 0.8  # prompts are built from their cluster's documents


def test_failures_are_recorded_not_dropped(tmp_path, classifier):
    with synthetic_expert(tmp_path, "broken", "--fail-status", "503") as broken:
        out = tmp_path / "broken"
        result = load(
            broken.url,
            "--model",
            "expert-0",
            "--classifier",
            str(classifier),
            "--users",
            "3",
            "--requests",
            "9",
            "--out",
            str(out),
        )
    assert result.returncode == 1 and "every request failed" in result.stdout + result.stderr  # says so
    records = read_records(out / "records.jsonl")
    assert len(records) == 9 and all(r.status == "http_error" and "503" in r.error for r in records)
    out = tmp_path / "refused"
    result = load(
        "http://127.0.0.1:9", "--classifier", str(classifier), "--requests", "3", "--users", "1", "--out", str(out)
    )
    assert result.returncode == 1
    records = read_records(out / "records.jsonl")
    assert len(records) == 3 and all(r.status == "error" and r.error for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["valid"] is False and any("failed" in reason for reason in summary["reasons"])


@pytest.mark.parametrize("usage", ["asked", "final", "none"])
def test_a_server_that_packs_tokens_is_measured_by_tokens(tmp_path, classifier, usage):
    """4 tokens per chunk, 40 ms apart: TPOT and throughput within 5% of the truth, whatever usage it sends."""
    flags = (
        "--tokens",
        "32",
        "--tokens-per-chunk",
        "4",
        "--interval-ms",
        "10",
        "--first-token-ms",
        "50",
        "--usage",
        usage,
    )
    with synthetic_expert(tmp_path, "packing", *flags) as server:
        out = tmp_path / "run"
        result = load(
            server.url,
            "--model",
            "expert-0",
            "--classifier",
            str(classifier),
            "--users",
            "4",
            "--requests",
            "24",
            "--max-tokens",
            "32",
            "--out",
            str(out),
        )
        assert result.returncode == 0, result.stderr
    records = read_records(out / "records.jsonl")
    assert all(r.ok and len(r.chunk_times) == 8 for r in records)
    if usage == "none":  # nothing tells the client that a chunk holds 4 tokens: it can only count chunks
        assert all(r.token_source == "chunks" and r.output_tokens == 8 for r in records)
        return
    assert all(r.output_tokens == 32 == sum(r.chunk_tokens) for r in records)
    truth_tpot = (7 * 0.040) / 31  # first chunk at token 3, last at token 31: 7 gaps of 40 ms over 31 tokens
    assert float(np.median(metrics.tpot(records))) == pytest.approx(truth_tpot, rel=0.05)
    tokens = sum(r.output_tokens for r in records)
    span = max(r.chunk_times[-1] for r in records) - min(r.t_start for r in records)
    windows = metrics.system_throughput(records, window_s=span + 1)  # one window: the whole run
    assert float(windows.tokens_per_s[0]) == pytest.approx(tokens / span, rel=0.05)


def test_processes_send_disjoint_prompts(tmp_path, classifier):
    with synthetic_expert(tmp_path, "experts", "--tokens", "2", "--interval-ms", "1") as server:
        out = tmp_path / "run"
        result = load(
            server.url,
            "--model",
            "expert-0",
            "--classifier",
            str(classifier),
            "--users",
            "4",
            "--processes",
            "2",
            "--requests",
            "40",
            "--pool",
            "40",
            "--warmup",
            "0",
            "--out",
            str(out),
        )
        assert result.returncode == 0, result.stderr
    records = read_records(out / "records.jsonl")
    assert len(records) == 40 and len({r.request_id for r in records}) == 40
    assert sorted(r.workload_id for r in records) == list(range(40))  # each prompt once, none twice at once


def test_ctrl_c_keeps_every_finished_request(tmp_path, classifier):
    with synthetic_expert(tmp_path, "slowish", "--tokens", "10", "--interval-ms", "20") as server:
        out = tmp_path / "run"
        process = subprocess.Popen(
            cli_args(
                "load",
                server.url,
                "--model",
                "expert-0",
                "--classifier",
                str(classifier),
                "--users",
                "10",
                "--duration",
                "60",
                "--out",
                str(out),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                path = out / "records.jsonl"
                if path.exists() and path.read_text().count("\n") > 30:
                    break
                time.sleep(0.1)
            process.send_signal(signal.SIGINT)
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
        completed = server.get_json("/stats")[1]["completed"]
    assert process.returncode == 130
    lines = (out / "records.jsonl").read_text().splitlines()
    records = [RequestRecord.from_dict(json.loads(line)) for line in lines[1:]]  # every line is valid JSON
    assert sum(r.status == "ok" for r in records) == completed - 10  # 10 warm-up requests are not recorded
    _, stderr = process.communicate()  # reads and closes both pipes
    assert b"Traceback" not in stderr
    assert all(r.status in ("ok", "cancelled") for r in records)
    assert json.loads((out / "summary.json").read_text())["valid"] is False


def test_normal_mix_and_replay(tmp_path, classifier):
    with synthetic_expert(tmp_path, "experts", "--tokens", "2", "--interval-ms", "0") as server:
        first = tmp_path / "first"
        assert (
            load(
                server.url,
                "--model",
                "expert-0",
                "--classifier",
                str(classifier),
                "--mix",
                "normal",
                "--mix-mean",
                "2",
                "--mix-std",
                "0.7",
                "--users",
                "4",
                "--requests",
                "300",
                "--pool",
                "300",
                "--out",
                str(first),
            ).returncode
            == 0
        )
        again = tmp_path / "again"
        assert (
            load(
                server.url,
                "--model",
                "expert-0",
                "--workload",
                str(first / "workload.jsonl"),
                "--users",
                "4",
                "--requests",
                "300",
                "--out",
                str(again),
            ).returncode
            == 0
        )
    drawn = np.bincount([r.cluster_drawn for r in read_records(first / "records.jsonl")], minlength=8)
    assert drawn.argmax() == 2 and drawn[2] > drawn[5] + drawn[6] + drawn[7]
    assert (first / "workload.jsonl").read_bytes() == (again / "workload.jsonl").read_bytes()


def test_bad_arguments_are_clear_errors(tmp_path, classifier):
    cases = [
        (["ftp://x", "--requests", "1"], "http"),
        (["http://127.0.0.1:1", "--requests", "1"], "--classifier"),
        (["http://127.0.0.1:1", "--classifier", str(classifier)], "--duration"),
        (["http://127.0.0.1:1", "--classifier", str(classifier), "--requests", "1", "--mode", "open"], "--rate"),
        (["http://127.0.0.1:1", "--workload", str(tmp_path / "none.jsonl"), "--requests", "1"], "not found"),
    ]
    for args, message in cases:
        result = load(*args, "--out", str(tmp_path / "o"))
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
