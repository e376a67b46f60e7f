"""Emulated engines as a real process: directly, then behind the real gateway and the real user simulator."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from expert_router.loadgen.records import read_records
from expert_router.testing import Server, cli_args, consecutive_free_ports, gateway, write_deployment

pytestmark = pytest.mark.e2e

ANSWER = 20  # every answer ends after 20 tokens (--output-lengths fixed:20) unless max_tokens is lower


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    from expert_router.classifier import Classifier
    from expert_router.corpus import load_corpus

    out = tmp_path_factory.mktemp("classifier") / "classifier"
    Classifier.fit([d.text for d in load_corpus("demo")]).save(out)
    return out


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    """Configuration E: eight emulated 8B engines in one process, ports base .. base+7."""
    tmp = tmp_path_factory.mktemp("emulated")
    base = consecutive_free_ports(8)
    args = cli_args(
        "emulate",
        "--preset",
        "paper-e",
        "--port",
        str(base),
        "--served-model-name",
        "expert-{i}",
        "--output-lengths",
        f"fixed:{ANSWER}",
    )
    with Server(args, base, tmp / "emulate.log") as server:
        yield [f"http://127.0.0.1:{base + i}" for i in range(8)], server


def post(url: str, body: dict) -> bytes:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def events(raw: bytes) -> list[dict]:
    lines = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_streams_like_vllm_and_exports_its_metrics(experts):
    urls, _ = experts
    body = {
        "model": "expert-3",
        "prompt": "one two three four",
        "max_tokens": 100,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = events(post(urls[3] + "/v1/completions", body))
    tokens = [c for c in chunks if c["choices"]]
    assert len(tokens) == ANSWER and tokens[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": ANSWER, "total_tokens": ANSWER + 4}
    chat = events(
        post(
            urls[3] + "/v1/chat/completions",
            {**body, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "ignore_eos": True},
        )
    )
    assert sum(1 for c in chat if c["choices"] and c["choices"][0]["delta"].get("content")) == 30
    whole = json.loads(post(urls[3] + "/v1/completions", {"model": "expert-3", "prompt": "x", "max_tokens": 5}))
    assert whole["usage"]["completion_tokens"] == 5 and whole["choices"][0]["finish_reason"] == "length"
    with urllib.request.urlopen(urls[3] + "/metrics", timeout=10) as response:
        text = response.read().decode()
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:time_per_output_token_seconds_bucket",
    ):
        assert name in text
    assert 'vllm:generation_tokens_total{model_name="expert-3"} 55.0' in text
    with pytest.raises(urllib.error.HTTPError) as error:
        post(urls[3] + "/v1/completions", {**body, "model": "expert-4"})
    assert error.value.code == 404 and json.loads(error.value.read())["error"]["code"] == "model_not_found"
    continuous = {**body, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    running = [c["usage"]["completion_tokens"] for c in events(post(urls[3] + "/v1/completions", continuous))]
    assert running == list(range(1, ANSWER + 1)) + [ANSWER]  # vLLM's running count on every chunk, then the total


PROMPTS_REFUSED = [b"5", b"{}", b"true", b'""', b"[]", b"[[]]", b"[null]", b"[-1]"]
BAD_REQUESTS = [
    # (path, body or raw bytes, status, param): each was a 500, a traceback, a silent default or data lost
    ("/v1/completions", {"prompt": "x", "stream": True, "stream_options": [1]}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "x", "stream": "false"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),  # vLLM's
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": True}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    (  # the one not used was not checked
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5, "max_tokens": "x"},
        400,
        "max_tokens",
    ),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": ["a b", "c d e"]}, 400, "prompt"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0},
        400,
        "max_completion_tokens",
    ),  # fmt: skip
    ("/v1/completions", b'{"model": "expert-0"}', 400, "prompt"),
    # Served as prompts of no words, where vLLM answers 400 (bytes: the synthetic expert reads no prompt).
    *[("/v1/completions", b'{"model": "expert-0", "prompt": %s}' % p, 400, "prompt") for p in PROMPTS_REFUSED],
    (
        "/v1/chat/completions",
        b'{"model": "expert-0", "messages": [{"role": "wizard", "content": "x"}]}',
        400,
        "messages",
    ),
    ("/v1/chat/completions", b'{"model": "expert-0", "messages": [{"role": "user", "content": 5}]}', 400, "messages"),
]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from expert_router.testing import synthetic_expert

    with synthetic_expert(tmp_path_factory.mktemp("synthetic"), "s", models=["expert-0"]) as server:
        yield server


@pytest.mark.parametrize("path, body, status, param", BAD_REQUESTS)
def test_bad_requests_get_openai_errors_from_the_emulator_and_the_synthetic_expert(
    experts, synthetic, path, body, status, param
):
    urls, _ = experts
    for url in (urls[0], synthetic.url):
        if isinstance(body, bytes) and url == synthetic.url:
            continue  # the synthetic expert reads no prompt
        payload = body if isinstance(body, bytes) else json.dumps({"model": "expert-0", **body}).encode()
        request = urllib.request.Request(url + path, data=payload, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=30).read()
        answer = json.loads(error.value.read())["error"]
        assert (error.value.code, answer["param"]) == (status, param), (url, answer)


def test_the_emulator_refuses_a_request_past_the_models_context_and_errors_are_json(experts):
    """No length limit: a 100,000-word prompt was served, and one request could hold the whole KV cache
    for ever. And aiohttp's own 404 and 405 were plain text."""
    urls, _ = experts
    with pytest.raises(urllib.error.HTTPError) as error:
        post(urls[0] + "/v1/completions", {"model": "expert-0", "prompt": "word " * 9000, "max_tokens": 5})
    assert (
        error.value.code == 400
        and "maximum context length is 8192" in json.loads(error.value.read())["error"]["message"]
    )
    deep: object = "x"
    for _ in range(600):
        deep = [deep]
    with pytest.raises(urllib.error.HTTPError) as error:
        post(urls[0] + "/v1/completions", {"model": "expert-0", "prompt": deep})
    assert error.value.code == 400
    for method, path, status in (("GET", "/v1/nope", 404), ("GET", "/v1/completions", 405)):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(urllib.request.Request(urls[0] + path, method=method), timeout=10)
        assert error.value.code == status and json.loads(error.value.read())["error"]["code"] == status


def test_compressed_bodies_are_decoded_as_the_gateway_decodes_them(experts, synthetic):
    """aiohttp's own decoding knew no zstd: its parser answered such a body with a plain-text 400
    before any handler or middleware ran."""
    import gzip

    import zstandard

    urls, _ = experts
    body = json.dumps({"model": "expert-0", "prompt": "hello", "max_tokens": 2}).encode()
    cases = (
        (zstandard.ZstdCompressor().compress(body), "zstd", 200),
        (gzip.compress(body), "gzip", 200),
        (body, "zstd", 400),  # not zstd at all
        (body, "compress", 415),
    )
    for url in (urls[0], synthetic.url):
        for payload, encoding, status in cases:
            headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
            request = urllib.request.Request(url + "/v1/completions", data=payload, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    code, answer = response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                code, answer = error.code, json.loads(error.read())
            assert code == status, (url, encoding, answer)
            assert ("choices" in answer) if status == 200 else answer["error"]["code"] == status


def test_through_the_gateway_and_the_user_simulator(tmp_path, experts, classifier):
    urls, _ = experts
    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [urls[c]] for c in range(8)})
    before = [json.loads(urllib.request.urlopen(u + "/stats", timeout=10).read())["finished"] for u in urls]
    with gateway(tmp_path, deployment) as gw:
        out = tmp_path / "run"
        result = subprocess.run(
            cli_args(
                "load",
                gw.url,
                "--classifier",
                str(classifier),
                "--users",
                "16",
                "--requests",
                "96",
                "--max-tokens",
                "50",
                "--input-lengths",
                "fixed",
                "--input-mean",
                "100",
                "--out",
                str(out),
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    records = read_records(out / "records.jsonl")
    assert len(records) == 96 and all(r.status == "ok" for r in records)
    assert all(r.output_tokens == ANSWER == len(r.chunk_times) for r in records)
    assert all(r.expert == f"expert-{r.cluster_routed}" for r in records)
    after = [json.loads(urllib.request.urlopen(u + "/stats", timeout=10).read()) for u in urls]
    assert sum(a["finished"] for a in after) - sum(before) == 96 + 16  # one warm-up request per user
    assert all(a["kv_cache_usage"] == 0 and a["running"] == 0 for a in after)
    # an 8B FP16 decode step streams 16 GB of weights: at least 4.8 ms on an H100 (3.35 TB/s), never less
    t0 = json.loads((out / "records.jsonl").read_text().splitlines()[0])["t0_monotonic"]
    for r in records:  # each chunk says when the emulated GPU produced its token; none is read before it
        assert len(r.server_stamps) == ANSWER
        assert (np.array(r.chunk_times) + t0 >= np.array(r.server_stamps) - 1e-4).all()
    tpot = [(r.chunk_times[-1] - r.t_first_token) / (ANSWER - 1) for r in records]
    assert np.median(tpot) > 0.0048
    assert np.median(tpot) < 0.2  # loose: a shared 2-core machine, but not stalled


def test_a_client_that_leaves_frees_its_place(experts):
    urls, _ = experts
    import http.client
    import time

    connection = http.client.HTTPConnection("127.0.0.1", int(urls[5].rsplit(":", 1)[1]), timeout=10)
    body = {
        "model": "expert-5",
        "prompt": "tell me a long story",
        "max_tokens": 5000,
        "ignore_eos": True,
        "stream": True,
    }
    connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.read(6) == b"data: "  # it is generating
    connection.close()  # the client goes away mid-answer
    deadline = time.monotonic() + 10
    stats = {}
    while time.monotonic() < deadline:
        stats = json.loads(urllib.request.urlopen(urls[5] + "/stats", timeout=10).read())
        if stats["running"] == 0:
            break
        time.sleep(0.1)
    assert stats["running"] == 0 and stats["kv_cache_usage"] == 0 and stats["generation_tokens"] < 5000
    # Counted as vLLM counts it: finished, for reason "abort".
    text = urllib.request.urlopen(urls[5] + "/metrics", timeout=10).read().decode()
    assert 'vllm:request_success_total{finished_reason="abort",model_name="expert-5"} 1.0' in text


def test_an_http_1_0_stream_ends_with_the_connection(experts, synthetic):
    """Asked for keep-alive, the connection stayed open after [DONE]: an HTTP/1.0 client, whose stream
    has no framing, waited for more until aiohttp's keep-alive timeout."""
    import socket
    from urllib.parse import urlsplit

    urls, _ = experts
    body = json.dumps({"model": "expert-0", "prompt": "hello", "max_tokens": 2, "stream": True}).encode()
    for url in (urls[0], synthetic.url):
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            head = b"POST /v1/completions HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n"
            sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answer = b""
            while chunk := sock.recv(65536):  # a socket timeout here: the stream never ended
                answer += chunk
        assert answer.startswith(b"HTTP/1.") and answer.rstrip().endswith(b"data: [DONE]"), (url, answer[-200:])


def test_a_bug_in_a_handler_is_a_json_500(synthetic):
    """aiohttp's own answer was a plain-text 500: /stats failed to write a body nested 1,000 deep."""
    raw = b'{"model": "expert-0", "prompt": "hi", "max_tokens": 1, "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    request = urllib.request.Request(synthetic.url + "/v1/completions", raw, {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(synthetic.url + "/stats", timeout=10)
    assert error.value.code == 500 and error.value.headers["Content-Type"].startswith("application/json")
    assert json.loads(error.value.read())["error"]["type"] == "server_error"
    post(synthetic.url + "/v1/completions", {"model": "expert-0", "prompt": "hi", "max_tokens": 1})  # leave it whole


def test_a_request_naming_no_model_is_answered_by_the_served_one(experts, synthetic):
    """vLLM's server answers it with its base model; these answered 404 "The model `None` does not exist"."""
    urls, _ = experts
    for url in (urls[0], synthetic.url):
        for body in ({"prompt": "hello", "max_tokens": 2}, {"prompt": "hello", "max_tokens": 2, "stream": True}):
            answer = post(url + "/v1/completions", body)
            model = json.loads(answer)["model"] if not body.get("stream") else events(answer)[0]["model"]
            assert model == "expert-0", (url, answer[:200])
    with pytest.raises(urllib.error.HTTPError) as error:  # a model that is no string: 400, not an unknown one
        post(synthetic.url + "/v1/completions", {"prompt": "hello", "model": 5})
    assert error.value.code == 400 and json.loads(error.value.read())["error"]["param"] == "model"
    error.value.close()
