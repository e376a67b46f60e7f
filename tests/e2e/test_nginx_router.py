"""Routing inside nginx: `expert-router nginx-router`'s configuration run by a real nginx with its Lua
module, in front of synthetic experts; every decision checked against the Python classifier."""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from expert_router.classifier import Classifier, ClassifierSettings
from expert_router.errors import UserError
from expert_router.testing import NginxRouter, free_port, synthetic_expert, write_deployment

pytestmark = pytest.mark.e2e  # needs nginx's Lua module and lua-cjson, which scripts/setup.sh installs


@pytest.fixture(scope="module")
def classifier(small_classifier: Path) -> Path:
    return small_classifier  # tests/conftest.py


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, classifier: Path):
    """Eight experts on one synthetic server, a second replica of expert 0 that refuses connections,
    and nginx routing in front."""
    tmp = tmp_path_factory.mktemp("nginx-router")
    with synthetic_expert(tmp, "experts", "--tokens", "4", "--interval-ms", "5") as experts:
        dead = f"http://127.0.0.1:{free_port()}"
        endpoints = {c: [experts.url] for c in range(8)}
        endpoints[0] = [dead, experts.url]
        deployment = write_deployment(tmp / "deploy.yaml", classifier, endpoints)
        with NginxRouter(tmp, deployment) as router:
            yield router, experts


def post(url: str, body: object = None, raw: bytes | None = None, **headers: str) -> tuple[int, dict, bytes]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_every_prompt_goes_where_the_python_gateway_sends_it(stack, classifier, small_corpus):
    """The Lua classifier sums the same rows as `Classifier.rank`: the same expert for every prompt,
    ASCII or not, as a completion or as a chat message, streamed through nginx to the end."""
    router, _ = stack
    python = Classifier.load(classifier)
    texts = [text for text, _ in small_corpus][:120] + ["Crème brûlée: caramel, vanille et œufs", "Ünïcode çafé"]
    for i, text in enumerate(texts):
        chat = i % 2 == 1
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
        status, headers, answer = post(router.url + path, {**body, "max_tokens": 4, "stream": True})
        assert status == 200, answer
        assert int(headers["X-Expert-Cluster"]) == python.rank(text)[0], text
        assert answer.rstrip().endswith(b"data: [DONE]") and b" t3" in answer  # every token relayed


def test_the_body_reaches_the_expert_as_sent_but_for_its_model(stack):
    """Decoded and encoded again, lua-cjson had turned [] into {} and rounded a 17-digit seed."""
    router, experts = stack
    body = {"model": "expert-router", "prompt": "the rocket and the telescope", "stop": [], "seed": 12345678901234567}
    status, headers, _ = post(router.url + "/v1/completions", {**body, "max_tokens": 2})
    assert status == 200
    with urllib.request.urlopen(experts.url + "/stats") as response:
        seen = json.load(response)["last_body"]
    assert seen == {**body, "max_tokens": 2, "model": headers["X-Expert-Model"]}
    status, headers, _ = post(router.url + "/v1/completions", {"prompt": "no model named", "max_tokens": 2})
    assert status == 200  # no "model": the expert's is put in
    # Only the top-level member is rewritten: not a "model" inside a string, nor one nested deeper.
    tricky = {"prompt": 'say "model": x\\', "extra": {"model": "inner", "list": [{"model": 1}]}, "model": None}
    status, headers, _ = post(router.url + "/v1/completions", {**tricky, "max_tokens": 2})
    assert status == 200
    with urllib.request.urlopen(experts.url + "/stats") as response:
        seen = json.load(response)["last_body"]
    assert seen == {**tricky, "max_tokens": 2, "model": headers["X-Expert-Model"]}


def test_a_request_naming_an_expert_goes_to_it_and_a_dead_replica_is_passed_over(stack):
    router, _ = stack
    for _ in range(6):  # expert 0's first replica refuses connections: nginx tries the next one
        status, headers, answer = post(router.url + "/v1/completions", {"model": "expert-0", "prompt": "hi"})
        assert status == 200, answer
        assert headers["X-Expert-Cluster"] == "0" and headers["X-Expert-Model"] == "expert-0"


@pytest.mark.parametrize(
    ("path", "raw", "headers", "status", "words"),
    [
        ("/v1/completions", b"{not json", {}, 400, "not a JSON object"),
        ("/v1/completions", b"[1, 2]", {}, 400, "not a JSON object"),
        ("/v1/completions", b'{"prompt": "  "}', {}, 400, "'prompt' is empty"),
        ("/v1/completions", b'{"prompt": [1, 2]}', {}, 400, "list of strings"),
        ("/v1/completions", b'{"prompt": "x", "model": "nope"}', {}, 404, "does not exist"),
        ("/v1/completions", b'{"prompt": "x", "model": 3}', {}, 400, "'model' must be a string"),
        ("/v1/completions", b'{"prompt": "x", "stream": "yes"}', {}, 400, "'stream' must be a boolean"),
        ("/v1/chat/completions", b'{"messages": []}', {}, 400, "non-empty list"),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}', {}, 400, "content"),
        ("/v1/completions", gzip.compress(b'{"prompt": "x"}'), {"Content-Encoding": "gzip"}, 415, "plain"),
        ("/v1/embeddings", b'{"input": "x"}', {}, 404, "no route"),
    ],
)
def test_what_the_router_refuses_gets_an_openai_style_json_error(stack, path, raw, headers, status, words):
    router, _ = stack
    got, response_headers, answer = post(router.url + path, raw=raw, **headers)
    assert got == status
    assert response_headers["Content-Type"] == "application/json"
    assert words in json.loads(answer)["error"]["message"]


def test_get_on_a_completion_endpoint_is_405_and_models_are_listed(stack):
    router, _ = stack
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(router.url + "/v1/completions")
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "POST"
    assert json.loads(refused.value.read())["error"]["type"] == "invalid_request_error"
    with urllib.request.urlopen(router.url + "/v1/models") as response:
        names = [m["id"] for m in json.load(response)["data"]]
    assert names == ["expert-router"] + [f"expert-{c}" for c in range(8)]


def test_the_command_refuses_what_nginx_could_not_route(tmp_path, classifier, small_corpus):
    from expert_router.commands.nginx_router import run
    from expert_router.config import load_deployment

    def args(deployment: Path) -> object:
        import argparse

        return argparse.Namespace(deployment=deployment, out=tmp_path / "out", host="127.0.0.1", port=8080, workers="1")

    tls = write_deployment(tmp_path / "a.yaml", classifier, {c: ["https://127.0.0.1:9000"] for c in range(8)})
    with pytest.raises(UserError, match="http://host:port endpoints"):
        run(args(tls))  # type: ignore[arg-type]
    standard = tmp_path / "standard"
    settings = ClassifierSettings(k=8, dims=20, scaling="standard")
    Classifier.fit([text for text, _ in small_corpus], settings).save(standard)
    scaled = write_deployment(tmp_path / "b.yaml", standard, {c: ["http://127.0.0.1:9000"] for c in range(8)})
    with pytest.raises(UserError, match="l2 scaling"):
        run(args(scaled))  # type: ignore[arg-type]
    assert load_deployment(scaled).classifier == standard.resolve()


def test_an_expert_at_its_limit_answers_429_until_a_request_ends(tmp_path, classifier):
    """`max_inflight_per_expert` as nginx's limit_conn on the chosen expert: one zone shared by every
    nginx worker, counted once the router has picked the expert; no queue, unlike the Python gateway."""
    import threading

    with synthetic_expert(tmp_path, "slow", "--tokens", "8", "--interval-ms", "150") as experts:
        deployment = write_deployment(
            tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)}, max_inflight_per_expert=1
        )
        with NginxRouter(tmp_path, deployment, workers=2) as router:
            first: list[tuple[int, dict, bytes]] = []
            body = {"model": "expert-2", "prompt": "hello", "stream": True}
            streaming = threading.Thread(target=lambda: first.append(post(router.url + "/v1/completions", body)))
            streaming.start()
            try:
                deadline = time.monotonic() + 5
                while json.loads(urllib.request.urlopen(experts.url + "/stats").read())["inflight"] < 1:
                    assert time.monotonic() < deadline, "the first request never reached the expert"
                    time.sleep(0.02)
                status, headers, answer = post(router.url + "/v1/completions", body)
                assert status == 429 and headers["Retry-After"] == "1"
                error = json.loads(answer)["error"]
                assert error["type"] == "rate_limit_error" and "expert-2" in error["message"]
                other = post(router.url + "/v1/completions", {**body, "model": "expert-3"})
                assert other[0] == 200  # the limit is per expert
            finally:
                streaming.join(timeout=10)
            assert first[0][0] == 200
            assert post(router.url + "/v1/completions", body)[0] == 200  # free again


def test_a_limit_nginx_cannot_count_means_none(tmp_path, classifier):
    """nginx refuses limit_conn past 65,535 and would not start (the benchmark's deployment asks 100,000)."""
    with synthetic_expert(tmp_path, "experts", "--tokens", "2") as experts:
        deployment = write_deployment(
            tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)}, max_inflight_per_expert=100_000
        )
        with NginxRouter(tmp_path, deployment) as router:
            assert post(router.url + "/v1/completions", {"prompt": "hello"})[0] == 200
        assert "limit_conn" not in (router.prefix / "nginx.conf").read_text().split("limit_conn_status")[1]
