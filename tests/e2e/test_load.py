"""The user simulator against real streaming servers whose token times are known."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from expert_router.testing import cli_args, gateway, synthetic_expert, write_deployment

from expert_router.loadgen.records import read_records

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
        result = load(server.url, "--model", "expert-0", "--classifier", str(classifier), "--users", "20",
                      "--requests", "80", "--out", str(out))
        assert result.returncode == 0, result.stderr
        stats = server.get_json("/stats")[1]
    records = read_records(out / "records.jsonl")
    assert len(records) == 80 == stats["completed"]
    assert len({r["request_id"] for r in records}) == 80
    t0 = meta(out)["t0_monotonic"]
    errors = []
    for r in records:
        assert r["status"] == "ok" and r["output_tokens"] == 12 == len(r["token_times"]) == len(r["server_stamps"])
        client = np.array(r["token_times"]) + t0
        server_sent = np.array(r["server_stamps"])
        assert (client >= server_sent).all()  # a token cannot be read before it was sent
        errors.extend(client - server_sent)
        assert r["t_start"] <= r["t_first_token"] <= r["token_times"][-1] <= r["t_end"]
    assert np.mean(errors) < 0.005  # loose on a shared CI machine; bench/loadgen.py measures it properly
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["ok"] == 80 and "valid" in summary


def test_chat_endpoint_and_routing_through_the_gateway(tmp_path, classifier):
    with synthetic_expert(tmp_path, "experts", "--tokens", "4", "--interval-ms", "1") as experts:
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)})
        with gateway(tmp_path, deployment) as gw:
            out = tmp_path / "run"
            result = load(gw.url, "--endpoint", "chat", "--classifier", str(classifier), "--users", "8",
                          "--requests", "200", "--input-lengths", "fixed", "--input-mean", "60", "--out", str(out))
            assert result.returncode == 0, result.stderr
    records = read_records(out / "records.jsonl")
    assert all(r["status"] == "ok" and r["output_tokens"] == 4 for r in records)
    assert all(r["route_ms"] is not None and r["expert"] == f"expert-{r['cluster_routed']}" for r in records)
    agreement = np.mean([r["cluster_routed"] == r["cluster_drawn"] for r in records])
    assert agreement > 0.8  # prompts are built from their cluster's documents


def test_failures_are_recorded_not_dropped(tmp_path, classifier):
    with synthetic_expert(tmp_path, "broken", "--fail-status", "503") as broken:
        out = tmp_path / "broken"
        result = load(broken.url, "--model", "expert-0", "--classifier", str(classifier), "--users", "3",
                      "--requests", "9", "--out", str(out))
    assert result.returncode == 0, result.stderr
    records = read_records(out / "records.jsonl")
    assert len(records) == 9 and all(r["status"] == "http_error" and "503" in r["error"] for r in records)
    out = tmp_path / "refused"
    result = load("http://127.0.0.1:9", "--classifier", str(classifier), "--requests", "3", "--users", "1",
                  "--out", str(out))
    records = read_records(out / "records.jsonl")
    assert len(records) == 3 and all(r["status"] == "error" and r["error"] for r in records)


def test_ctrl_c_keeps_every_finished_request(tmp_path, classifier):
    with synthetic_expert(tmp_path, "slowish", "--tokens", "10", "--interval-ms", "20") as server:
        out = tmp_path / "run"
        process = subprocess.Popen(cli_args("load", server.url, "--model", "expert-0", "--classifier", str(classifier),
                                            "--users", "10", "--duration", "60", "--out", str(out)),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    records = [json.loads(line) for line in lines[1:]]  # every line is valid JSON
    assert sum(r["status"] == "ok" for r in records) == completed
    assert all(r["status"] in ("ok", "cancelled") for r in records)
    assert json.loads((out / "summary.json").read_text())["valid"] is False


def test_normal_mix_and_replay(tmp_path, classifier):
    with synthetic_expert(tmp_path, "experts", "--tokens", "2", "--interval-ms", "0") as server:
        first = tmp_path / "first"
        assert load(server.url, "--model", "expert-0", "--classifier", str(classifier), "--mix", "normal",
                    "--mix-mean", "2", "--mix-std", "0.7", "--users", "4", "--requests", "300", "--pool", "300",
                    "--out", str(first)).returncode == 0
        again = tmp_path / "again"
        assert load(server.url, "--model", "expert-0", "--workload", str(first / "workload.jsonl"), "--users", "4",
                    "--requests", "300", "--out", str(again)).returncode == 0
    drawn = np.bincount([r["cluster_drawn"] for r in read_records(first / "records.jsonl")], minlength=8)
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
