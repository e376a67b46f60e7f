"""The gateway through real processes: synthetic experts (known timing and faults) and the real CLI."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from expert_router.classifier import Classifier
from expert_router.testing import (
    Server,
    cli_args,
    free_port,
    gateway,
    synthetic_expert,
    write_deployment,
)

pytestmark = pytest.mark.e2e

PROMPTS = [
    "How do I compile the Linux kernel with a new driver module?",
    "Captain, the Klingons are attacking the Enterprise, raise shields!",
    "Write a poem about love and a broken heart.",
    "The judge ruled that the contract was void and the lawyer appealed.",
    "What wine goes with roast beef and garlic potatoes?",
    "The professor said the students failed the exam at school.",
]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("classifier") / "classifier"
    from expert_router.corpus import load_corpus

    Classifier.fit([d.text for d in load_corpus("demo")]).save(out)
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory, classifier):
    """One synthetic server holding all eight experts, and a gateway in front of it."""
    tmp = tmp_path_factory.mktemp("stack")
    with synthetic_expert(tmp, "experts", "--tokens", "8", "--interval-ms", "2") as experts:
        deployment = write_deployment(
            tmp / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)}, max_body_bytes=64 * 1024
        )
        with gateway(tmp, deployment) as gw:
            yield gw, experts


def request(server: Server, path: str, body: dict | bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def sse_events(raw: bytes) -> list[str]:
    return [line[len(b"data: ") :].decode() for line in raw.split(b"\n") if line.startswith(b"data: ")]


# -- the happy path ------------------------------------------------------------------------------
def test_openai_sdk_streams_and_routes_like_the_classifier(stack, classifier):
    gw, experts = stack
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    expected = Classifier.load(classifier).route(PROMPTS).cluster.tolist()
    for prompt, cluster in zip(PROMPTS, expected):
        raw = client.completions.with_raw_response.create(
            model="expert-router", prompt=prompt, max_tokens=5, stream=True
        )
        assert raw.headers["x-expert-cluster"] == str(cluster)
        assert raw.headers["x-expert-model"] == f"expert-{cluster}"
        assert "route;dur=" in raw.headers["server-timing"]
        chunks = list(raw.parse())
        assert "".join(c.choices[0].text for c in chunks) == " t0 t1 t2 t3 t4"
        assert chunks[-1].choices[0].finish_reason == "length"
        assert experts.get_json("/stats")[1]["last_body"]["model"] == f"expert-{cluster}"


def test_an_http_1_0_client_gets_an_unframed_stream(stack):
    """HTTP/1.0 has no chunked encoding: the relay must write raw SSE bytes and end with the connection."""
    gw, _ = stack
    body = json.dumps({"prompt": PROMPTS[0], "max_tokens": 3, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    assert b"transfer-encoding: chunked" not in head.lower()
    assert payload.startswith(b"data: ") and payload.rstrip().endswith(b"data: [DONE]")
    assert [json.loads(e)["choices"][0]["text"] for e in sse_events(payload)[:-1]] == [" t0", " t1", " t2"]


def test_unknown_paths_and_methods_get_json_errors(stack):
    gw, _ = stack
    for method, path, status in (("GET", "/v2/nothing", 404), ("GET", "/v1/completions", 405)):
        connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        connection.request(method, path)
        response = connection.getresponse()
        assert response.status == status
        assert json.loads(response.read())["error"]["code"] == status
        connection.close()


def test_content_encodings_are_decoded_or_refused_with_json(stack):
    gw, _ = stack
    body = json.dumps({"prompt": PROMPTS[0], "max_tokens": 2}).encode()
    cases = ((gzip.compress(body), "gzip", 200), (body, "gzip", 400), (body, "compress", 415), (body, "identity", 200))
    for payload, encoding, status in cases:
        connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        connection.request(
            "POST",
            "/v1/completions",
            body=payload,
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        assert response.status == status, (encoding, answer)
        assert ("choices" in answer) if status == 200 else answer["error"]["code"] == status


def test_a_request_asking_for_http2_is_answered_in_http_1_1(stack):
    """What `curl --http2 http://... -d ...` sends: the body used to be lost (a 400, "not valid JSON")."""
    gw, _ = stack
    connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    body = json.dumps({"prompt": PROMPTS[0], "max_tokens": 2}).encode()
    upgrade = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"}
    for _ in range(2):  # the connection stays usable
        connection.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"} | upgrade)
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200 and answer["choices"][0]["text"] == " t0 t1", answer
    connection.close()


def test_chat_streaming_and_non_streaming(stack):
    gw, _ = stack
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[0]}]
    stream = client.chat.completions.create(model="expert-router", messages=messages, max_tokens=3, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == " t0 t1 t2"
    whole = client.chat.completions.create(model="expert-router", messages=messages, max_tokens=4)
    assert whole.choices[0].message.content == " t0 t1 t2 t3" and whole.model.startswith("expert-")
    text = client.completions.create(model="expert-router", prompt=PROMPTS[1], max_tokens=2)
    assert text.choices[0].text == " t0 t1"


def test_model_list_health_and_metrics(stack):
    gw, _ = stack
    status, models = gw.get_json("/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]][:2] == ["expert-router", "expert-0"]
    status, health = gw.get_json("/health")
    assert status == 200 and health["experts"]["3"]["healthy_replicas"] == 1
    request(gw, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 1})
    metrics = gw.get_text("/metrics")
    assert "expert_router_routing_seconds_bucket" in metrics and "expert_router_requests_total" in metrics


def test_naming_an_expert_skips_routing(stack):
    gw, experts = stack
    status, headers, _ = request(gw, "/v1/completions", {"model": "expert-6", "prompt": PROMPTS[0], "max_tokens": 1})
    assert status == 200 and headers["x-expert-cluster"] == "6"


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/v1/completions", b"{not json", 400),
        ("/v1/completions", b"[1, 2]", 400),
        ("/v1/completions", {"prompt": 5}, 400),
        ("/v1/completions", {"prompt": ""}, 400),
        ("/v1/completions", {"prompt": "   "}, 400),
        ("/v1/completions", {"prompt": [1, 2, 3]}, 400),
        ("/v1/completions", {}, 400),
        ("/v1/completions", {"prompt": "hi there", "stream": "yes"}, 400),
        ("/v1/completions", {"prompt": "hi there", "max_tokens": -1}, 400),
        ("/v1/completions", {"prompt": "hi there", "model": 7}, 400),
        ("/v1/completions", {"prompt": "hi there", "model": "gpt-17"}, 404),
        ("/v1/chat/completions", {"messages": "hello"}, 400),
        ("/v1/chat/completions", {"messages": []}, 400),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}, 400),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400),
        ("/v1/completions", {"prompt": "x" * 100_000}, 413),
        # orjson reads 1,024 levels of nesting and writes ~254: forwarding it was a 500 and a traceback
        ("/v1/completions", b'{"prompt": "hi there", "x": ' + b"[" * 300 + b"]" * 300 + b"}", 400),
    ],
)
def test_bad_input_gets_an_openai_style_4xx(stack, path, body, status):
    gw, _ = stack
    got, headers, raw = request(gw, path, body)
    assert got == status, raw
    error = json.loads(raw)["error"]
    assert error["message"] and error["type"]


# -- faults --------------------------------------------------------------------------------------
def test_fail_over_to_the_next_nearest_expert_when_one_is_killed(tmp_path, classifier):
    routes = Classifier.load(classifier).route(PROMPTS[0])
    first, second = routes.ranked(0)[:2].tolist()
    with (
        synthetic_expert(tmp_path, "doomed", "--tokens", "3", "--interval-ms", "1") as doomed,
        synthetic_expert(tmp_path, "others", "--tokens", "3", "--interval-ms", "1") as others,
    ):
        endpoints = {c: [others.url] for c in range(8)}
        endpoints[first] = [doomed.url]
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, endpoints, failures_to_down=1)
        with gateway(tmp_path, deployment) as gw:
            status, headers, _ = request(gw, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 2, "stream": True})
            assert status == 200 and headers["x-expert-cluster"] == str(first)
            doomed.kill()
            # Right after the kill (before any health check noticed): the connection fails, the request moves on.
            status, headers, raw = request(
                gw, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 2, "stream": True}
            )
            assert status == 200, raw
            assert headers["x-expert-cluster"] == str(second)
            assert headers["x-expert-routed-cluster"] == str(first)
            assert headers["x-expert-fallback"].startswith(f"{first}->{second}")
            assert sse_events(raw)[-1] == "[DONE]"
            # The health checks mark it down; later requests skip it without trying.
            deadline = time.monotonic() + 10
            while gw.get_json("/health")[1]["experts"][str(first)]["healthy_replicas"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert gw.get_json("/health")[1]["experts"][str(first)]["healthy_replicas"] == 0
            status, headers, _ = request(
                gw, "/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 2}
            )
            assert status == 200 and "has no healthy replica" in headers["x-expert-fallback"]


def test_replica_comes_back_up_after_recovering(tmp_path, classifier):
    port = free_port()
    args = cli_args("synthetic-expert", "--port", str(port), "--models", *[f"expert-{c}" for c in range(8)])
    replica = Server(args, port, tmp_path / "replica.log")
    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [replica.url] for c in range(8)})
    with gateway(tmp_path, deployment) as gw:
        replica.kill()
        deadline = time.monotonic() + 10
        while gw.get_json("/health")[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        status, _ = gw.get_json("/health")
        assert status == 503
        got, _, raw = request(gw, "/v1/completions", {"prompt": PROMPTS[0]})
        assert got == 503 and json.loads(raw)["error"]["message"]
        with Server(args, port, tmp_path / "replica2.log"):
            deadline = time.monotonic() + 10
            while gw.get_json("/health")[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert gw.get_json("/health")[0] == 200
            assert request(gw, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 1})[0] == 200
    replica.stop()


def test_a_stream_that_dies_midway_ends_with_an_error_event(tmp_path, classifier):
    with synthetic_expert(
        tmp_path, "flaky", "--tokens", "10", "--interval-ms", "5", "--die-after-tokens", "3"
    ) as flaky:
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [flaky.url] for c in range(8)})
        with gateway(tmp_path, deployment) as gw:
            status, _, raw = request(gw, "/v1/completions", {"prompt": PROMPTS[0], "stream": True})
    events = sse_events(raw)
    assert status == 200
    tokens = [json.loads(e)["choices"][0]["text"] for e in events[:-2]]
    assert tokens == [" t0", " t1", " t2"]
    assert "error" in json.loads(events[-2]) and events[-1] == "[DONE]"


def test_streams_that_just_close_get_a_done(tmp_path, classifier):
    with synthetic_expert(tmp_path, "nodone", "--tokens", "2", "--no-done") as upstream:
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [upstream.url] for c in range(8)})
        with gateway(tmp_path, deployment) as gw:
            _, _, raw = request(gw, "/v1/completions", {"prompt": PROMPTS[0], "stream": True})
            direct = request(upstream, "/v1/completions", {"prompt": "x", "model": "expert-0", "stream": True})[2]
    assert sse_events(direct)[-1] != "[DONE]"
    assert sse_events(raw)[-1] == "[DONE]" and len(sse_events(raw)) == 3


def test_a_stream_cut_short_is_an_error_for_the_client_and_the_simulator(tmp_path, classifier):
    """An expert whose stream ends cleanly after two tokens, with neither a finish_reason nor [DONE]:
    the gateway had closed it with a bare [DONE], and the simulator counted it a whole answer."""
    import asyncio

    from expert_router.loadgen.client import Target, send
    from expert_router.loadgen.records import RequestRecord
    from expert_router.wire import ConnectionPool

    async def simulate(url: str, model: str) -> RequestRecord:
        record = RequestRecord(0, 0, 0, 0, 5, 8, 0.0)
        body = json.dumps({"model": model, "prompt": PROMPTS[0], "stream": True, "max_tokens": 8}).encode()
        pool = ConnectionPool(5.0)
        try:
            await send(pool, Target(url, model=model), body, record, 0.0, 10.0)
        finally:
            pool.close()
        return record

    with synthetic_expert(tmp_path, "cut", "--tokens", "6", "--end-after-tokens", "2") as upstream:
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [upstream.url] for c in range(8)})
        with gateway(tmp_path, deployment) as gw:
            status, _, raw = request(gw, "/v1/completions", {"prompt": PROMPTS[0], "stream": True})
            events = sse_events(raw)
            assert status == 200 and len(events) == 4 and events[-1] == "[DONE]"
            assert "ended before its answer did" in json.loads(events[-2])["error"]["message"]
            through = asyncio.run(simulate(gw.url, "expert-router"))
        direct = asyncio.run(simulate(upstream.url, "expert-0"))
    assert through.status == "error" and "ended before its answer did" in (through.error or "")
    assert direct.status == "error" and "cut short" in (direct.error or "")


def test_upstream_errors_before_the_first_token_fail_over(tmp_path, classifier):
    first = Classifier.load(classifier).route(PROMPTS[1]).cluster[0]
    with (
        synthetic_expert(tmp_path, "broken", "--fail-status", "503") as broken,
        synthetic_expert(tmp_path, "good", "--tokens", "2") as good,
    ):
        endpoints = {c: [good.url] for c in range(8)}
        endpoints[first] = [broken.url]
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, endpoints)
        with gateway(tmp_path, deployment) as gw:
            status, headers, _ = request(gw, "/v1/completions", {"prompt": PROMPTS[1], "stream": True})
            assert status == 200 and headers["x-expert-cluster"] != str(first)
        deployment = write_deployment(tmp_path / "none.yaml", classifier, endpoints, fallback="none")
        with gateway(tmp_path, deployment, name="nofallback") as gw:
            status, _, raw = request(gw, "/v1/completions", {"prompt": PROMPTS[1], "stream": True})
            assert status == 503 and "HTTP 503" in json.loads(raw)["error"]["message"]


def test_first_token_timeout(tmp_path, classifier):
    with synthetic_expert(tmp_path, "slow", "--first-token-ms", "5000") as slow:
        deployment = write_deployment(
            tmp_path / "deploy.yaml",
            classifier,
            {c: [slow.url] for c in range(8)},
            first_token_timeout_s=0.3,
            max_attempts=1,
        )
        with gateway(tmp_path, deployment) as gw:
            started = time.monotonic()
            status, _, raw = request(gw, "/v1/completions", {"prompt": PROMPTS[0], "stream": True})
            assert status == 503 and "timeout" in json.loads(raw)["error"]["message"]
            assert time.monotonic() - started < 4


def test_429_with_retry_after_past_the_in_flight_limit(tmp_path, classifier):
    with synthetic_expert(tmp_path, "slow", "--tokens", "10", "--interval-ms", "100") as slow:
        deployment = write_deployment(
            tmp_path / "deploy.yaml",
            classifier,
            {c: [slow.url] for c in range(8)},
            max_inflight_per_expert=1,
            queue_timeout_s=0.2,
        )
        with gateway(tmp_path, deployment) as gw:
            body = {"model": "expert-2", "prompt": "anything at all", "stream": True}
            first: list = []
            thread = threading.Thread(target=lambda: first.append(request(gw, "/v1/completions", body)))
            thread.start()
            time.sleep(0.3)
            status, headers, raw = request(gw, "/v1/completions", body)
            thread.join()
            assert first[0][0] == 200
            assert status == 429 and int(headers["retry-after"]) >= 1
            assert json.loads(raw)["error"]["type"] == "rate_limit_error"
            # Another expert is not affected by expert-2's limit.
            assert request(gw, "/v1/completions", {**body, "model": "expert-3", "stream": False})[0] == 200


def test_client_disconnect_cancels_the_upstream_request(tmp_path, classifier):
    with synthetic_expert(tmp_path, "slow", "--tokens", "200", "--interval-ms", "50") as slow:
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [slow.url] for c in range(8)})
        with gateway(tmp_path, deployment) as gw:
            connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            connection.request(
                "POST",
                "/v1/completions",
                body=json.dumps({"prompt": PROMPTS[0], "stream": True}),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            assert response.read(6) == b"data: "
            assert slow.get_json("/stats")[1]["inflight"] == 1
            connection.sock.shutdown(2)
            connection.close()
            deadline = time.monotonic() + 5
            while slow.get_json("/stats")[1]["inflight"] and time.monotonic() < deadline:
                time.sleep(0.05)
            stats = slow.get_json("/stats")[1]
            assert stats["inflight"] == 0 and stats["cancelled"] == 1 and stats["completed"] == 0


# -- scale-out -----------------------------------------------------------------------------------
def test_workers_share_one_port_and_stop_together(tmp_path, classifier, stack):
    _, experts = stack
    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)})
    gw = gateway(tmp_path, deployment, "--workers", "2")
    try:
        for prompt in PROMPTS:
            assert request(gw, "/v1/completions", {"prompt": prompt, "max_tokens": 2, "stream": True})[0] == 200
        children = subprocess.run(["pgrep", "-P", str(gw.process.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 2

        # Whichever worker answers the scrape, /metrics counts every worker's requests (once counted: the
        # worker that answered the last may be off its core between that answer's last write and its count).
        def answered() -> float:
            lines = [
                line
                for line in gw.get_text("/metrics").splitlines()
                if line.startswith("expert_router_requests_total{")
            ]
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

        deadline = time.monotonic() + 5
        while answered() < len(PROMPTS) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [answered() for _ in range(4)] == [len(PROMPTS)] * 4
    finally:
        gw.process.send_signal(signal.SIGTERM)
        gw.process.wait(15)
        gw.stop()
    time.sleep(0.5)
    alive = [
        pid
        for pid in children
        if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
    ]
    assert alive == []


def test_workers_that_cannot_listen_make_a_failed_exit(tmp_path, classifier, stack):
    """Each worker said its port was taken and exited 2; `serve --workers 2` then exited 0."""
    _, experts = stack
    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = subprocess.run(
            cli_args("serve", str(deployment), "--port", str(port), "--workers", "2"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert served.returncode == 2 and "cannot listen" in served.stderr, served.stderr


def test_port_0_announces_the_port_it_got(tmp_path, classifier, stack):
    """`serve --port 0` said "ready on http://127.0.0.1:0/v1": a URL nobody can reach."""
    _, experts = stack
    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)})
    process = subprocess.Popen(
        cli_args("serve", str(deployment), "--port", "0"), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        assert port > 0, line
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)


def test_two_gateways_behind_a_real_nginx(tmp_path, classifier, stack):
    from expert_router.testing import Nginx

    _, experts = stack
    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)})
    with gateway(tmp_path, deployment, name="gw1") as gw1, gateway(tmp_path, deployment, name="gw2") as gw2:
        with Nginx(tmp_path, [gw1.url, gw2.url]) as nginx:
            client = openai.OpenAI(base_url=nginx.url + "/v1", api_key="unused", max_retries=0)
            expected = Classifier.load(classifier).route(PROMPTS).cluster.tolist()
            for prompt, cluster in zip(PROMPTS, expected):
                raw = client.completions.with_raw_response.create(
                    model="expert-router", prompt=prompt, max_tokens=4, stream=True
                )
                assert raw.headers["x-expert-cluster"] == str(cluster)
                assert "".join(c.choices[0].text for c in raw.parse()) == " t0 t1 t2 t3"

        def answered(gw: Server) -> float:
            lines = [
                line
                for line in gw.get_text("/metrics").splitlines()
                if line.startswith("expert_router_requests_total{")
            ]
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

        deadline = time.monotonic() + 10  # a handler may still be finishing its last stream when nginx stops
        while answered(gw1) + answered(gw2) < len(PROMPTS) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answered(gw1) >= 1 and answered(gw2) >= 1
        assert answered(gw1) + answered(gw2) == len(PROMPTS)


def test_a_stale_kept_alive_connection_is_not_a_failure(tmp_path, classifier):
    """The upstream restarts between two streams: the pooled connection is dead, the request still succeeds."""
    port = free_port()
    args = cli_args(
        "synthetic-expert", "--port", str(port), "--tokens", "3", "--models", *[f"expert-{c}" for c in range(8)]
    )
    first = Server(args, port, tmp_path / "first.log")
    deployment = write_deployment(
        tmp_path / "deploy.yaml",
        classifier,
        {c: [first.url] for c in range(8)},
        health_interval_s=60,
        failures_to_down=1,
    )
    with gateway(tmp_path, deployment) as gw:
        body = {"model": "expert-1", "prompt": "hello there", "stream": True}
        assert request(gw, "/v1/completions", body)[0] == 200
        first.stop()
        with Server(args, port, tmp_path / "second.log"):
            status, headers, raw = request(gw, "/v1/completions", body)
            assert status == 200 and "x-expert-fallback" not in headers
            assert sse_events(raw)[-1] == "[DONE]" and len(sse_events(raw)) == 4
            assert gw.get_json("/health")[1]["experts"]["1"]["healthy_replicas"] == 1


def test_a_replica_that_reports_a_queue_gets_fewer_requests(tmp_path, classifier):
    """Load-aware choice: the gateway reads each replica's vLLM-named /metrics and avoids the queued one."""
    with (
        synthetic_expert(tmp_path, "queued", "--tokens", "2", "--reported-waiting", "50") as queued,
        synthetic_expert(tmp_path, "idle", "--tokens", "2") as idle,
    ):
        deployment = write_deployment(
            tmp_path / "deploy.yaml", classifier, {c: [queued.url, idle.url] for c in range(8)}, load_interval_s=0.05
        )
        with gateway(tmp_path, deployment) as gw:
            time.sleep(1.0)  # a few load reads
            for i in range(20):
                status, _, _ = request(gw, "/v1/completions", {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 2})
                assert status == 200
        assert queued.get_json("/stats")[1]["requests"] <= 1
        assert idle.get_json("/stats")[1]["requests"] >= 19


def test_a_per_expert_limit_holds_across_gateway_instances(tmp_path, classifier, redis_url):
    """Two gateways with limit L=3 (limit_scope: shared, one real Redis) in front of one expert, ten
    requests at once, five through each: the expert never carries more than L (each gateway counting only
    its own would let it carry 2L), and every request is answered once a slot frees."""
    limit = 3
    with synthetic_expert(tmp_path, "expert", "--tokens", "20", "--interval-ms", "25") as expert:
        deployment = write_deployment(
            tmp_path / "deploy.yaml",
            classifier,
            {c: [expert.url] for c in range(8)},
            max_inflight_per_expert=limit,
            limit_scope="shared",
            limit_store=redis_url,
            queue_timeout_s=60,
        )
        with gateway(tmp_path, deployment, name="gw1") as gw1, gateway(tmp_path, deployment, name="gw2") as gw2:
            body = {"prompt": PROMPTS[0], "max_tokens": 20, "stream": True}
            with ThreadPoolExecutor(10) as pool:
                results = list(
                    pool.map(lambda i: request(gw1 if i % 2 else gw2, "/v1/completions", body, 120)[0], range(10))
                )
        stats = expert.get_json("/stats")[1]
    assert results == [200] * 10
    assert stats["completed"] == 10
    assert stats["max_inflight"] == limit, stats  # full, never over


def test_a_slow_whole_answer_times_out_once_with_504_and_marks_nothing_down(tmp_path, classifier):
    """A non-streamed answer that outlasts request_timeout_s was sent again to every replica in turn
    (made three times over) and each replica was marked down for being slow: a 503 after all three."""
    slow = ("--tokens", "3", "--first-token-ms", "3000")
    with synthetic_expert(tmp_path, "a", *slow) as a, synthetic_expert(tmp_path, "b", *slow) as b:
        deployment = write_deployment(
            tmp_path / "deploy.yaml",
            classifier,
            {c: [a.url, b.url] for c in range(8)},
            request_timeout_s=0.5,
            failures_to_down=1,
            health_interval_s=60,
        )
        with gateway(tmp_path, deployment) as gw:
            status, _, raw = request(gw, "/v1/completions", {"model": "expert-0", "prompt": "hello", "max_tokens": 3})
            assert status == 504 and "request timeout" in json.loads(raw)["error"]["message"]
            assert sum(server.get_json("/stats")[1]["requests"] for server in (a, b)) == 1  # sent once
            assert gw.get_json("/health")[1]["experts"]["0"]["healthy_replicas"] == 2


def test_queued_requests_go_to_the_replica_that_is_free_when_their_slot_comes(tmp_path, classifier):
    """Replicas were ranked before a request waited for a slot: queued requests all went to the replica
    that was idle when they arrived, though it was busy by the time they were sent."""
    with (
        synthetic_expert(tmp_path, "slow", "--tokens", "2", "--first-token-ms", "4000") as slow,
        synthetic_expert(tmp_path, "fast", "--tokens", "2") as fast,
    ):
        deployment = write_deployment(
            tmp_path / "deploy.yaml",
            classifier,
            {c: [slow.url, fast.url] for c in range(8)},
            max_inflight_per_expert=2,
            queue_timeout_s=30,
            load_aware=False,
        )
        with gateway(tmp_path, deployment) as gw:
            body = {"model": "expert-0", "prompt": "hello", "max_tokens": 2}
            with ThreadPoolExecutor(6) as pool:
                statuses = list(pool.map(lambda _: request(gw, "/v1/completions", body, 60)[0], range(6)))
            assert statuses == [200] * 6
            # The slow replica holds one slot for 4 s; every other request goes to the fast one.
            assert slow.get_json("/stats")[1]["requests"] == 1 and fast.get_json("/stats")[1]["requests"] == 5
