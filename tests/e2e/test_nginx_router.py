"""Routing inside nginx: `expert-router nginx-router`'s configuration run by a real nginx with its Lua
module, in front of synthetic experts; every decision checked against the Python classifier."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli
import pytest
import redis
import zstandard

from expert_router.classifier import Classifier, ClassifierSettings
from expert_router.encoding import MAX_MEMBERS, decode_body
from expert_router.errors import BadRequest, UserError
from expert_router.gateway.shared_limit import KEY_PREFIX
from expert_router.testing import (
    NginxRouter,
    Server,
    cli_args,
    free_port,
    gateway,
    synthetic_expert,
    write_deployment,
)

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


def post(
    url: str, body: object = None, raw: bytes | None = None, timeout: float = 10, **headers: str
) -> tuple[int, dict, bytes]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_every_prompt_goes_where_the_python_gateway_sends_it(stack, classifier, small_corpus):
    """The Lua classifier sums the same rows as `Classifier.rank`: the same expert for every prompt,
    ASCII or not, as a completion or as a chat message, streamed through nginx to the end."""
    router, _ = stack
    python = Classifier.load(classifier)
    texts = [text for text, _ in small_corpus][:120] + ["Crème brûlée: caramel, vanille et œufs", "Ünïcode çafé"]
    texts += [_reworded(text, seed) for seed, (text, _) in enumerate(small_corpus[120:160])]
    for i, text in enumerate(texts):
        chat = i % 2 == 1
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
        status, headers, answer = post(router.url + path, {**body, "max_tokens": 4, "stream": True})
        assert status == 200, answer
        assert int(headers["X-Expert-Cluster"]) == python.rank(text)[0], text
        assert answer.rstrip().endswith(b"data: [DONE]") and b" t3" in answer  # every token relayed


def _reworded(text: str, seed: int) -> str:
    """`text` with what an ASCII tokenizer must get right: capitals, words joined by '_' (one word) or
    split by punctuation, digits within and after words, a one-letter word, a word that ends the text."""
    rng = random.Random(seed)
    words = text.split()
    out = []
    for i, word in enumerate(words):
        pick = rng.randrange(6)
        word = word.upper() if pick == 0 else word.title() if pick == 1 else word
        word = f"({word})," if pick == 2 else f"{word}{i}" if pick == 3 else word
        out.append(word + ("_" if pick == 4 else " "))
    return "a " + "".join(out).rstrip(" ") + " " + rng.choice(words).upper()


def test_capitals_outside_ascii_are_lower_cased_as_python_does(tmp_path, small_corpus):
    """LuaJIT's string.lower changes ASCII only: 'ÑANDÚ' stayed 'Ñandú' and missed the vocabulary's
    'ñandú'. The Lua lower-cases with str.lower's own table, and with its one context rule: a capital
    sigma that ends a word is 'ς' ('ΛΌΓΟΣ' is 'λόγος'; the table alone made it 'λόγοσ')."""
    words = ["ärger", "öl", "ñandú", "łódź", "škoda", "œuvre", "éclair", "ćevapi", "żubr", "ørsted"]
    greek = ["λόγος", "κόσμος", "σοφός", "ήλιος", "θεός", "χρόνος"]
    rng = random.Random(1)
    documents = [" ".join(rng.choice(group) for _ in range(15)) for group in (words, greek) for _ in range(60)]
    out = tmp_path / "classifier"
    Classifier.fit([text for text, _ in small_corpus] + documents, ClassifierSettings(k=8, dims=20)).save(out)
    python = Classifier.load(out)
    prompts = [" ".join(w.upper() for w in group) for group in (words, greek)]
    for prompt, group in zip(prompts, (words, greek), strict=True):
        assert python.rank(prompt)[0] == python.rank(" ".join(group))[0] != python.rank("qqq zzz")[0]
    with synthetic_expert(tmp_path, "experts", "--tokens", "2") as experts:
        deployment = write_deployment(tmp_path / "deploy.yaml", out, {c: [experts.url] for c in range(8)})
        with NginxRouter(tmp_path, deployment) as router:
            for prompt in prompts:
                for body, path in (
                    ({"prompt": prompt}, "/v1/completions"),
                    ({"messages": [{"role": "user", "content": prompt}]}, "/v1/chat/completions"),
                ):
                    status, headers, _ = post(router.url + path, body)
                    assert status == 200
                    assert int(headers["X-Expert-Cluster"]) == python.rank(prompt)[0], prompt


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
    # A repeated "model": routed on the last, as cjson reads it, and the last rewritten, which is what the
    # expert reads (the first was: the expert got the router's own name and answered 404).
    raw = b'{"model": "expert-0", "prompt": "the rocket", "max_tokens": 2, "model": "expert-router"}'
    status, headers, answer = post(router.url + "/v1/completions", raw=raw)
    assert status == 200, answer
    with urllib.request.urlopen(experts.url + "/stats") as response:
        assert json.load(response)["last_body"]["model"] == headers["X-Expert-Model"]


def test_a_request_naming_an_expert_goes_to_it_and_a_dead_replica_is_passed_over(stack):
    router, _ = stack
    for _ in range(6):  # expert 0's first replica refuses connections: nginx tries the next one
        status, headers, answer = post(router.url + "/v1/completions", {"model": "expert-0", "prompt": "hi"})
        assert status == 200, answer
        assert headers["X-Expert-Cluster"] == "0" and headers["X-Expert-Model"] == "expert-0"


def test_experts_on_the_same_replicas_share_one_upstream_and_its_idle_connections(stack):
    """nginx keeps idle connections per upstream: one upstream per replica, shared by every expert it
    serves (LoRA adapters of one vLLM), so a connection one expert's answer frees carries the next request
    to another. One upstream per expert had opened 2-3x nginx's connections at 500 streams."""
    router, experts = stack
    config = (router.prefix / "nginx.conf").read_text()
    meta = json.loads((router.prefix / "router" / "router.json").read_text())
    shared = next(name for name, replica in meta["replicas"].items() if replica["url"] == experts.url)
    assert config.count("    upstream ") == len(meta["replicas"]) == 2  # expert 0 has a dead replica of its own
    assert all(meta["experts"][str(c)]["replicas"] == [shared] for c in range(1, 8))
    assert shared in meta["experts"]["0"]["replicas"]


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
        # Each was routed, where the gateway refuses it (`api_request.CHAT_ROLES`).
        ("/v1/chat/completions", b'{"messages": [{"content": "hi"}]}', {}, 400, "role must be one of"),
        ("/v1/chat/completions", b'{"messages": [{"role": 5, "content": "hi"}]}', {}, 400, "role must be one of"),
        ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "hi"}]}', {}, 400, "'user'"),
        ("/v1/completions", b"x" * (1024 * 1024 * 5), {}, 413, "too large"),  # nginx's own page was HTML
        ("/v1/completions?" + "q" * 20_000, b"{}", {}, 414, "too long"),
        ("/v1/completions", b"{}", {"X-Big": "b" * 20_000}, 431, "too large"),
        ("/v1/completions", gzip.compress(b'{"prompt": "x"}'), {"Content-Encoding": "compress"}, 415, "not supported"),
        ("/v1/embeddings", b'{"input": "x"}', {}, 404, "no route"),
    ],
)
def test_what_the_router_refuses_gets_an_openai_style_json_error(stack, path, raw, headers, status, words):
    router, _ = stack
    got, response_headers, answer = post(router.url + path, raw=raw, **headers)
    assert got == status
    assert response_headers["Content-Type"] == "application/json"
    assert words in json.loads(answer)["error"]["message"]


def test_encoded_bodies_are_decoded_or_refused_as_the_gateway_does(stack):
    """Every Content-Encoding the gateway decodes (`expert_router.encoding`), decoded inside nginx up to the
    same limit; what the gateway refuses is refused with its status. The expert gets the plain body."""
    router, experts = stack
    limit = json.loads((router.prefix / "router" / "router.json").read_text())["max_body_bytes"]
    body = json.dumps({"prompt": "the rocket and the telescope", "max_tokens": 2, "seed": 7}).encode()
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    zstd = zstandard.ZstdCompressor()
    halves = (body[:9], body[9:])

    def parts(n: int) -> list[bytes]:
        return [body[i * len(body) // n : (i + 1) * len(body) // n] for i in range(n)]

    cases = [
        (gzip.compress(body), "gzip"),
        (gzip.compress(body), "x-gzip"),
        (zlib.compress(body), "deflate"),
        (raw_deflate.compress(body) + raw_deflate.flush(), "Deflate"),
        (brotli.compress(body), "br"),
        (zstd.compress(body), "zstd"),
        (b"".join(gzip.compress(h) for h in halves), "gzip"),  # members one after another: all of them
        (b"".join(zstd.compress(h) for h in halves), "zstd"),  # frames likewise
        (zstd.compress(brotli.compress(gzip.compress(body))), "gzip, br, zstd"),  # undone last first
        (gzip.compress(body), "identity, gzip"),
        (body, "gzip"),  # not gzip at all: 400
        (gzip.compress(body)[:-6], "gzip"),  # truncated
        (zstd.compress(body)[:-3], "zstd"),
        (body, "br"),
        (brotli.compress(body) + b"x", "br"),
        (gzip.compress(b" " * 10 * limit), "gzip"),  # small on the wire, past the limit decoded: 413
        (gzip.compress(b" " * limit) + gzip.compress(b" " * 10), "gzip"),  # the limit holds across members
        (brotli.compress(b" " * 10 * limit), "br"),
        (zstd.compress(b" " * 10 * limit), "zstd"),
        (body, "compress"),  # 415
        (body, "identity, " * 6),  # more codings than are decoded: 400
        (b"".join(gzip.compress(p) for p in parts(MAX_MEMBERS)), "gzip"),  # as many members as are decoded
        (b"".join(gzip.compress(p) for p in parts(MAX_MEMBERS + 1)), "gzip"),  # one more: 400
        (b"".join(zstd.compress(p) for p in parts(MAX_MEMBERS)), "zstd"),
        (b"".join(zstd.compress(p) for p in parts(MAX_MEMBERS + 1)), "zstd"),
    ]
    for payload, header in cases:
        try:
            want, expected = 200, json.loads(decode_body(payload, header.encode(), limit))
        except BadRequest as exc:
            want, expected = exc.status, None
        status, headers, answer = post(router.url + "/v1/completions", raw=payload, **{"Content-Encoding": header})
        assert status == want, (header, answer[:300])
        if expected is None:
            assert json.loads(answer)["error"]["code"] == want, header
            continue
        with urllib.request.urlopen(experts.url + "/stats") as response:
            seen = json.load(response)["last_body"]
        assert seen == {**expected, "model": headers["X-Expert-Model"]}, header


def test_get_on_a_completion_endpoint_is_405_and_models_are_listed(stack):
    router, _ = stack
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(router.url + "/v1/completions")
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "POST"
    assert json.loads(refused.value.read())["error"]["type"] == "invalid_request_error"
    with urllib.request.urlopen(router.url + "/v1/models") as response:
        names = [m["id"] for m in json.load(response)["data"]]
    assert names == ["expert-router"] + [f"expert-{c}" for c in range(8)]
    for method, path in (("PUT", "/health"), ("DELETE", "/metrics"), ("POST", "/v1/models")):  # /health's was 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(router.url + path, data=b"{}", method=method))
        assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET, HEAD", (method, path)
        assert json.loads(refused.value.read())["error"]["code"] == 405


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


def test_the_limit_store_is_written_as_redis_py_reads_its_url(tmp_path, classifier):
    """Host names resolved, the database and credentials from the URL (redis-py's own parser, as the
    gateway's), a Unix socket as nginx's cosockets name one, and no password in what errors show; TLS,
    which the router's Redis client lacks, is refused rather than ignored."""
    from expert_router.config import GatewaySettings
    from expert_router.nginx.render import limit_store

    tcp = limit_store(GatewaySettings(limit_scope="shared", limit_store="redis://:secret@localhost:6380/2"))
    assert tcp is not None and tcp["host"] in ("127.0.0.1", "[::1]") and (tcp["port"], tcp["db"]) == (6380, 2)
    assert tcp["password"] == "secret" and "secret" not in str(tcp["where"])
    unix = limit_store(GatewaySettings(limit_scope="shared", limit_store="unix:///run/redis.sock?db=3"))
    assert unix is not None and (unix["host"], unix["port"], unix["db"]) == ("unix:/run/redis.sock", None, 3)
    assert limit_store(GatewaySettings(limit_store="redis://localhost/0")) is None  # limit_scope: process
    with pytest.raises(UserError, match="without TLS"):
        limit_store(GatewaySettings(limit_scope="shared", limit_store="rediss://localhost:6380/0"))


def test_a_replica_named_by_host_name_is_read_at_its_address(tmp_path, classifier):
    """nginx's cosockets resolve no names without a `resolver`: the load reads of a replica written as
    http://localhost:PORT failed, silently, and its own counts alone decided. The name is resolved when
    the configuration is written, as nginx resolves an upstream's when it starts. One that does not
    resolve there is marked so: health checks that could not reach it would have taken it out for good,
    though nginx, resolving it where it runs, proxies to it."""
    from expert_router.config import load_deployment
    from expert_router.nginx.conf import Listen
    from expert_router.nginx.render import write

    urls = ["http://localhost:9100", "http://127.0.0.1:9101", "http://no-such-host.invalid:9102"]
    deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: urls for c in range(8)})
    write(load_deployment(deployment), Classifier.load(classifier), tmp_path / "out", Listen(port=free_port()))
    replicas = json.loads((tmp_path / "out" / "router" / "router.json").read_text())["replicas"]
    written = {replica["url"]: replica for replica in replicas.values()}
    assert written[urls[0]]["host"] in ("127.0.0.1", "[::1]") and written[urls[0]]["authority"] == "localhost:9100"
    assert written[urls[1]]["host"] == "127.0.0.1"
    assert [written[url]["resolved"] for url in urls] == [True, True, False]


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def stats(expert_url: str) -> dict:
    with urllib.request.urlopen(expert_url + "/stats") as response:
        return json.load(response)


def scrape(router_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(router_url + "/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


Counts = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_when(router_url: str, shows: Callable[[Counts], bool]) -> Counts:
    """/metrics once it `shows` what the test expects, or after 5 s (the test's own assert then fails): nginx
    counts a request in its log phase, which runs after the client has had the last byte, so a scrape right
    after an answer can come before its count."""
    deadline = time.monotonic() + 5
    while not shows(counts := scrape(router_url)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return counts


def leases_when(store_url: str, key: str, count: int) -> int:
    """How many leases `key` holds in the store once it holds `count`, or after 5 s: a lease goes back from a
    timer after the request's log phase, so just after the client had its answer."""
    leases = redis.Redis.from_url(store_url)
    deadline = time.monotonic() + 5
    while (held := leases.zcard(key)) != count and time.monotonic() < deadline:
        time.sleep(0.02)
    return held


def stream_in_background(url: str, body: dict) -> tuple[threading.Thread, list[tuple[int, dict, bytes]]]:
    answers: list[tuple[int, dict, bytes]] = []
    thread = threading.Thread(target=lambda: answers.append(post(url, body)))
    thread.start()
    return thread, answers


def raw_post(body: dict, path: str = "/v1/completions") -> bytes:
    """The bytes of a POST, for a client on a bare socket that can hang up mid-request."""
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


def wait_for_inflight(expert_url: str, count: int) -> None:
    deadline = time.monotonic() + 5
    while stats(expert_url)["inflight"] < count:
        assert time.monotonic() < deadline, "the first request never reached the expert"
        time.sleep(0.02)


def hang_up_while_queued(router: NginxRouter, body: dict, expert_url: str) -> None:
    """A stream holds the expert's one slot while a second request, on a bare socket, waits for it and
    hangs up."""
    streaming, first = stream_in_background(router.url + "/v1/completions", body)
    try:
        wait_for_inflight(expert_url, 1)
        with socket.create_connection(("127.0.0.1", router.port)) as client:
            client.sendall(raw_post(body))
            time.sleep(0.2)  # in the queue by now
    finally:
        streaming.join(timeout=10)
    assert first[0][0] == 200


def test_an_expert_at_its_limit_queues_its_requests_then_answers_429(tmp_path, classifier):
    """`max_inflight_per_expert`, counted in a shared dict by every nginx worker: a request past it waits
    up to `queue_timeout_s` for a slot, as in the Python gateway, and then gets 429; the limit is per
    expert, and /metrics shows the requests in flight."""
    with synthetic_expert(tmp_path, "slow", "--tokens", "8", "--interval-ms", "150") as experts:
        endpoints = {c: [experts.url] for c in range(8)}
        deployment = write_deployment(
            tmp_path / "deploy.yaml", classifier, endpoints, max_inflight_per_expert=1, queue_timeout_s=0.3
        )
        body = {"model": "expert-2", "prompt": "hello", "stream": True}
        with NginxRouter(tmp_path, deployment, workers=2) as router:
            url = router.url + "/v1/completions"
            streaming, first = stream_in_background(url, body)
            try:
                wait_for_inflight(experts.url, 1)
                assert scrape(router.url)[("expert_router_inflight", (("cluster", "2"),))] == 1
                status, headers, answer = post(url, body)
                assert status == 429 and headers["Retry-After"] == "1"
                error = json.loads(answer)["error"]
                assert error["type"] == "rate_limit_error" and "expert-2" in error["message"]
                assert "0.3s" in error["message"]
                assert post(url, {**body, "model": "expert-3"})[0] == 200  # the limit is per expert
            finally:
                streaming.join(timeout=10)
            assert first[0][0] == 200
            assert post(url, body)[0] == 200  # free again
            labels_2 = (("cluster", "2"), ("endpoint", "completions"), ("status", "200"))
            answered_2 = ("expert_router_requests_total", labels_2)
            counts = scrape_when(router.url, lambda c: c.get(answered_2) == 2)
            assert counts[("expert_router_inflight", (("cluster", "2"),))] == 0
            answered = {key[1]: value for key, value in counts.items() if key[0] == "expert_router_requests_total"}
            assert answered[(("cluster", ""), ("endpoint", "completions"), ("status", "429"))] == 1
            assert answered[answered_2[1]] == 2

    with synthetic_expert(tmp_path, "patient", "--tokens", "8", "--interval-ms", "150") as experts:
        endpoints = {c: [experts.url] for c in range(8)}
        patient = write_deployment(
            tmp_path / "patient.yaml", classifier, endpoints, max_inflight_per_expert=1, queue_timeout_s=10
        )
        with NginxRouter(tmp_path / "patient", patient, workers=2) as router:
            url = router.url + "/v1/completions"
            streaming, first = stream_in_background(url, body)
            try:
                wait_for_inflight(experts.url, 1)
                second = post(url, body)  # waits in the queue for the first to end
            finally:
                streaming.join(timeout=10)
            assert first[0][0] == 200 and second[0] == 200, second
            assert second[2].rstrip().endswith(b"data: [DONE]")
            assert stats(experts.url)["max_inflight"] == 1  # never two on the expert at once

            # A client that hangs up while its request waits: nothing reaches the expert, and it counts as
            # 499. (It leaves the queue at once, lua_check_client_abort; without that, nginx dropped it
            # only when its turn came, before connecting upstream.)
            sent = stats(experts.url)["requests"]
            hang_up_while_queued(router, body, experts.url)
            assert post(url, {**body, "model": "expert-5"})[0] == 200  # a request after it, to another expert
            assert stats(experts.url)["requests"] == sent + 2  # the stream that held the slot, and this
            left = ("expert_router_requests_total", (("cluster", ""), ("endpoint", "completions"), ("status", "499")))
            assert scrape_when(router.url, lambda c: c.get(left) == 1)[left] == 1


def test_a_client_that_hangs_up_gives_its_slot_back(tmp_path, classifier):
    """The slot is given back in the log phase, which runs for a request whose client went away too."""
    with synthetic_expert(tmp_path, "slow", "--tokens", "50", "--interval-ms", "100") as experts:
        deployment = write_deployment(
            tmp_path / "deploy.yaml", classifier, {c: [experts.url] for c in range(8)}, max_inflight_per_expert=1
        )
        with NginxRouter(tmp_path, deployment) as router:
            with socket.create_connection(("127.0.0.1", router.port)) as client:
                client.sendall(raw_post({"model": "expert-4", "prompt": "hello", "stream": True}))
                assert client.recv(4096).startswith(b"HTTP/1.1 200")
            deadline = time.monotonic() + 10
            while scrape(router.url)[("expert_router_inflight", (("cluster", "4"),))] != 0:
                assert time.monotonic() < deadline, "the slot was never given back"
                time.sleep(0.05)
            status, _, _ = post(router.url + "/v1/completions", {"model": "expert-4", "prompt": "hi", "max_tokens": 2})
            assert status == 200


def test_a_client_that_hangs_up_on_a_whole_answer_cancels_it_upstream(tmp_path, classifier):
    """Non-streaming: nothing is relayed until the answer is whole, so only the client's connection tells
    that it left. nginx watches it while it proxies and closes the upstream's connection, and the expert
    stops (vLLM aborts the request; the synthetic expert counts it cancelled)."""
    with synthetic_expert(tmp_path, "slow", "--tokens", "200", "--interval-ms", "50") as slow:
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, {c: [slow.url] for c in range(8)})
        with NginxRouter(tmp_path, deployment) as router:
            with socket.create_connection(("127.0.0.1", router.port)) as client:
                client.sendall(raw_post({"model": "expert-6", "prompt": "hello", "stream": False}))
                wait_for_inflight(slow.url, 1)
            deadline = time.monotonic() + 5
            while stats(slow.url)["inflight"]:
                assert time.monotonic() < deadline, "the expert kept answering a client that had left"
                time.sleep(0.05)
            assert stats(slow.url)["cancelled"] == 1 and stats(slow.url)["completed"] == 0


def test_a_worker_that_crashes_does_not_keep_its_slots(tmp_path, classifier):
    """nginx respawns a worker that crashed, but the counts its requests held in the shared dict had
    stayed: an expert it had filled answered 429 until nginx restarted. The worker that replaces it
    takes the dead one's shares off."""
    with synthetic_expert(tmp_path, "slow", "--tokens", "50", "--interval-ms", "100") as slow:
        deployment = write_deployment(
            tmp_path / "deploy.yaml",
            classifier,
            {c: [slow.url] for c in range(8)},
            max_inflight_per_expert=1,
            queue_timeout_s=0.2,
        )
        body = {"model": "expert-4", "prompt": "hello", "stream": True}
        with NginxRouter(tmp_path, deployment) as router:
            with socket.create_connection(("127.0.0.1", router.port)) as client:
                client.sendall(raw_post(body))
                assert client.recv(4096).startswith(b"HTTP/1.1 200")
                (worker,) = workers(router)
                os.kill(worker, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while workers(router) in ([], [worker]):
                    assert time.monotonic() < deadline, "nginx did not start another worker"
                    time.sleep(0.05)
            status, _, answer = post(router.url + "/v1/completions", {**body, "stream": False, "max_tokens": 2})
            assert status == 200, answer
            free = ("expert_router_inflight", (("cluster", "4"),))
            assert scrape_when(router.url, lambda c: c.get(free) == 0)[free] == 0
            assert "taken off" in (router.prefix / "error.log").read_text()


def workers(router: NginxRouter) -> list[int]:
    children = Path(f"/proc/{router.process.pid}/task/{router.process.pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_fail_over_goes_on_past_a_second_failure_until_max_attempts(tmp_path, classifier, small_corpus):
    """The nearest expert refuses, the second answers 503: the third by distance answers, as JSON
    errors in between never reach the client (nginx took the error_page from the first location, and
    without recursive_error_pages there, @fallback's own failure was nginx's HTML 503). With
    `max_attempts: 2` the two failures are all it tries: a JSON 503."""
    python = Classifier.load(classifier)
    text = small_corpus[0][0]
    first, second, third = python.rank(text)[:3]
    with (
        synthetic_expert(tmp_path, "good", "--tokens", "3") as good,
        synthetic_expert(tmp_path, "failing", "--tokens", "3", "--fail-status", "503") as failing,
    ):
        endpoints = {c: [good.url] for c in range(8)}
        endpoints[first] = [f"http://127.0.0.1:{free_port()}"]
        endpoints[second] = [failing.url]
        for attempts, prefix in ((3, "three"), (2, "two")):
            deployment = write_deployment(tmp_path / f"{prefix}.yaml", classifier, endpoints, max_attempts=attempts)
            with NginxRouter(tmp_path / prefix, deployment) as router:
                status, headers, answer = post(router.url + "/v1/completions", {"prompt": text, "max_tokens": 3})
                if attempts == 3:
                    assert status == 200, answer
                    assert headers["X-Expert-Cluster"] == str(third)
                    assert headers["X-Expert-Routed-Cluster"] == str(first)
                else:
                    assert status == 503 and headers["Content-Type"] == "application/json", answer
                    assert json.loads(answer)["error"]["type"] == "service_unavailable"


def test_a_replica_that_reports_a_long_queue_gets_no_requests_while_another_is_idle(tmp_path, classifier):
    """Load-aware choice, as the gateway's: worker 0 reads each replica's /metrics (vLLM's running and
    waiting requests) every `load_interval_s` into the shared dict, and every worker picks the least busy
    replica. nginx's least_conn, which knows only its own connections, alternated between the two."""
    with (
        synthetic_expert(tmp_path, "queued", "--tokens", "2", "--reported-waiting", "50") as queued,
        synthetic_expert(tmp_path, "idle", "--tokens", "2") as idle,
    ):
        endpoints = {c: [idle.url] for c in range(8)}
        endpoints[2] = [queued.url, idle.url]
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, endpoints, load_interval_s=0.1)
        with NginxRouter(tmp_path, deployment, workers=2) as router:
            body = {"model": "expert-2", "prompt": "hello", "max_tokens": 2, "stream": True}
            deadline = time.monotonic() + 10
            streak = 0  # requests in a row that went to the idle replica
            while streak < 20:
                assert time.monotonic() < deadline, "the replica with the long queue kept getting requests"
                before = stats(queued.url)["requests"]
                assert post(router.url + "/v1/completions", body)[0] == 200
                streak = streak + 1 if stats(queued.url)["requests"] == before else 0


def test_an_expert_that_fails_passes_the_request_to_the_next_nearest(tmp_path, classifier, small_corpus):
    """The gateway's fail-over order: when every replica of the routed expert fails before the first
    byte (refused, or a 503 from the expert), the request goes to the next expert by distance, with that
    expert's model in its body; /metrics counts it. A request naming an expert's model, or a deployment
    with `fallback: none`, gets 503 instead."""
    python = Classifier.load(classifier)
    texts = [text for text, _ in small_corpus]
    with (
        synthetic_expert(tmp_path, "good", "--tokens", "3") as good,
        synthetic_expert(tmp_path, "failing", "--tokens", "3", "--fail-status", "503") as failing,
        synthetic_expert(tmp_path, "refusing", "--tokens", "3", "--fail-status", "400") as refusing,
    ):
        endpoints = {c: [good.url] for c in range(8)}
        endpoints[1] = [f"http://127.0.0.1:{free_port()}"]  # refuses connections
        endpoints[2] = [failing.url]
        endpoints[3] = [refusing.url]  # a 4xx is the expert's answer, passed on
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, endpoints, max_attempts=4)
        with NginxRouter(tmp_path, deployment) as router:
            for down in (1, 2):
                # the first expert by distance that answers (cluster 3's would answer 400, passed on)
                plans = [(t, next(c for c in python.rank(t) if c not in (1, 2))) for t in texts]
                text, expected = next((t, c) for t, c in plans if python.rank(t)[0] == down and c != 3)
                status, headers, answer = post(
                    router.url + "/v1/completions", {"prompt": text, "stream": True, "max_tokens": 3}
                )
                assert status == 200, answer
                assert answer.rstrip().endswith(b"data: [DONE]")
                assert headers["X-Expert-Routed-Cluster"] == str(down)
                assert headers["X-Expert-Cluster"] == str(expected)
                assert stats(good.url)["last_body"] == {
                    "prompt": text,
                    "stream": True,
                    "max_tokens": 3,
                    "model": f"expert-{expected}",
                }
                fell = ("expert_router_fallbacks_total", (("from_cluster", str(down)), ("to_cluster", str(expected))))
                assert scrape_when(router.url, lambda c, fell=fell: c.get(fell, 0) >= 1)[fell] >= 1
            status, headers, answer = post(router.url + "/v1/completions", {"model": "expert-1", "prompt": "hi"})
            assert status == 503 and headers["Retry-After"] == "1"
            error = json.loads(answer)["error"]
            assert error["type"] == "service_unavailable"
            assert "cluster 1 failed" in error["message"] or "cluster 1 has no live replica" in error["message"]
            free = ("expert_router_inflight", (("cluster", "1"),))
            assert scrape_when(router.url, lambda c: c.get(free) == 0)[free] == 0
            status, headers, answer = post(router.url + "/v1/completions", {"model": "expert-3", "prompt": "hi"})
            assert status == 400 and headers["X-Expert-Cluster"] == "3", answer
            assert "error" in json.loads(answer)
            counted = (("cluster", "3"), ("endpoint", "completions"), ("status", "400"))
            counted_key = ("expert_router_requests_total", counted)
            assert scrape_when(router.url, lambda c: c.get(counted_key) == 1)[counted_key] == 1  # the expert's answer

        strict = write_deployment(tmp_path / "strict.yaml", classifier, endpoints, fallback="none")
        with NginxRouter(tmp_path / "strict", strict) as router:
            text = next(t for t in texts if python.rank(t)[0] == 1)
            status, _, answer = post(router.url + "/v1/completions", {"prompt": text})
            assert status == 503, answer


def test_a_shared_limit_holds_across_routers_and_gateways(tmp_path, classifier, redis_url):
    """`limit_scope: shared`: two nginx routers (one with two workers) and a Python gateway, each with
    limit L=3 on one Redis, in front of one expert; twelve requests at once, four through each: the
    expert never carries more than L (each counting its own, as the router did, lets it carry 3L), and
    every request is answered once a slot frees. The routers run the gateway's own lease scripts."""
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
        with (
            NginxRouter(tmp_path, deployment, workers=2, name="one") as one,
            NginxRouter(tmp_path, deployment, name="two") as two,
            gateway(tmp_path, deployment) as python,
        ):
            urls = [one.url, two.url, python.url]
            body = {"prompt": "hello", "model": "expert-1", "max_tokens": 20, "stream": True}
            with ThreadPoolExecutor(12) as pool:
                answers = list(pool.map(lambda i: post(urls[i % 3] + "/v1/completions", body, timeout=60), range(12)))
            assert leases_when(redis_url, KEY_PREFIX + "expert-1", 0) == 0  # every lease given back
        assert [status for status, _, _ in answers] == [200] * 12, answers
        assert all(answer.rstrip().endswith(b"data: [DONE]") for _, _, answer in answers)
        assert stats(expert.url)["max_inflight"] == limit  # full, never over


def test_a_shared_lease_is_renewed_while_its_stream_runs_and_given_back_when_its_client_leaves(
    tmp_path, classifier, redis_url
):
    """A lease outlives `lease_s` while its stream runs (each worker renews its own) and goes back when
    the client hangs up."""
    leases = redis.Redis.from_url(redis_url)
    key = KEY_PREFIX + "expert-2"
    with synthetic_expert(tmp_path, "slow", "--tokens", "25", "--interval-ms", "100") as slow:
        settings = {"max_inflight_per_expert": 1, "limit_scope": "shared", "limit_store": redis_url, "lease_s": 1}
        endpoints = {c: [slow.url] for c in range(8)}
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, endpoints, **settings, queue_timeout_s=0)
        body = {"model": "expert-2", "prompt": "hello", "stream": True}
        with NginxRouter(tmp_path, deployment, name="one") as one, NginxRouter(tmp_path, deployment, name="two") as two:
            streaming, first = stream_in_background(one.url + "/v1/completions", body)
            try:
                wait_for_inflight(slow.url, 1)
                time.sleep(2.0)  # twice lease_s: a lease not renewed has lapsed
                status, _, answer = post(two.url + "/v1/completions", body)
                assert status == 429, answer
            finally:
                streaming.join(timeout=10)
            assert first[0][0] == 200 and leases_when(redis_url, key, 0) == 0

            with socket.create_connection(("127.0.0.1", two.port)) as client:
                client.sendall(raw_post(body))
                assert client.recv(4096).startswith(b"HTTP/1.1 200")
                assert leases.zcard(key) == 1
            deadline = time.monotonic() + 5
            while leases.zcard(key) != 0:
                assert time.monotonic() < deadline, "the lease of a client that hung up was never given back"
                time.sleep(0.05)


@pytest.mark.parametrize("scope", ["process", "shared"])
def test_requests_waiting_for_a_slot_get_it_in_the_order_they_came(tmp_path, classifier, scope, request):
    """Each worker's waiting requests queue per expert, one poller taking the head's slot, whether this
    nginx counts (the wait had polled on its own: a freed slot went to whichever request looked first)
    or the shared store does; one whose client hangs up while it waits gives back the slot its turn
    brings, not held (and, shared, renewed) for a request that is gone."""
    store = {"limit_scope": "shared", "limit_store": request.getfixturevalue("redis_url")} if scope == "shared" else {}
    body = {"model": "expert-2", "prompt": "hello", "stream": True}
    with synthetic_expert(tmp_path, "quick", "--tokens", "3", "--interval-ms", "100") as quick:
        endpoints = {c: [quick.url] for c in range(8)}
        deployment = write_deployment(
            tmp_path / "queue.yaml", classifier, endpoints, max_inflight_per_expert=1, queue_timeout_s=30, **store
        )
        with NginxRouter(tmp_path, deployment, name="queue") as router:
            url = router.url + "/v1/completions"
            ended: list[int] = []
            threads = []
            for i in range(6):  # the first holds the slot; five wait, 40 ms apart
                threads.append(threading.Thread(target=lambda i=i: (post(url, body, timeout=30), ended.append(i))))
                threads[-1].start()
                time.sleep(0.04)
            for thread in threads:
                thread.join(timeout=30)
            assert ended == [0, 1, 2, 3, 4, 5]  # one at a time, in the order they came
            assert stats(quick.url)["max_inflight"] == 1

            hang_up_while_queued(router, body, quick.url)
            status, _, answer = post(url, body, timeout=10)
            assert status == 200, answer
            deadline = time.monotonic() + 5
            while scrape(router.url)[("expert_router_inflight", (("cluster", "2"),))] != 0:
                assert time.monotonic() < deadline, "a slot is held for a request that is gone"
                time.sleep(0.05)
            if scope == "shared":
                assert leases_when(store["limit_store"], KEY_PREFIX + "expert-2", 0) == 0


def test_requests_that_find_a_shared_limit_full_together_all_wait_in_one_queue(tmp_path, classifier, redis_url):
    """Requests that arrive together at a full expert each ask the store for a slot, and each finds its
    worker's queue empty while it waits for the answer. Each then made a queue of its own, the last one
    replacing the others, so the waiters in those were served by no poller and got 429 after the whole
    queue timeout (seen as a flaky 429 in the routers-and-gateways test)."""
    body = {"model": "expert-2", "prompt": "hello", "stream": True, "max_tokens": 4}
    with synthetic_expert(tmp_path, "quick", "--tokens", "4", "--interval-ms", "50") as quick:
        endpoints = {c: [quick.url] for c in range(8)}
        deployment = write_deployment(
            tmp_path / "together.yaml",
            classifier,
            endpoints,
            max_inflight_per_expert=1,
            queue_timeout_s=20,
            limit_scope="shared",
            limit_store=redis_url,
        )
        with NginxRouter(tmp_path, deployment, name="together") as router:
            url = router.url + "/v1/completions"
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: post(url, body, timeout=30), range(8)))
            assert [status for status, _, _ in answers] == [200] * 8, [a[:200] for _, _, a in answers]
            assert stats(quick.url)["max_inflight"] == 1


def test_a_shared_limit_store_out_of_reach_is_a_503_not_an_unlimited_expert(tmp_path, classifier):
    """Admitting without the store would break the limit it exists for: 503 with Retry-After, as the
    gateway answers (the router had ignored `limit_scope: shared` and admitted everything)."""
    with synthetic_expert(tmp_path, "expert", "--tokens", "2") as expert:
        deployment = write_deployment(
            tmp_path / "deploy.yaml",
            classifier,
            {c: [expert.url] for c in range(8)},
            limit_scope="shared",
            limit_store=f"redis://127.0.0.1:{free_port()}/0",
        )
        with NginxRouter(tmp_path, deployment) as router:
            status, headers, answer = post(router.url + "/v1/completions", {"prompt": "hello", "max_tokens": 2})
        assert status == 503 and headers["Retry-After"] == "1", answer
        error = json.loads(answer)["error"]
        assert error["type"] == "service_unavailable" and "shared limit store" in error["message"]
        assert stats(expert.url)["requests"] == 0


def test_a_health_path_that_fails_takes_out_only_the_experts_it_checks(tmp_path, classifier):
    """One server for every expert, as a Triton serving several models is, each expert checked on its own
    path (`/v2/models/NAME/ready` there): expert 2's path failing takes the server out for expert 2 alone,
    as the gateway judges it. (The router had one count for the server: every expert lost it.)"""
    import yaml

    with synthetic_expert(tmp_path, "shared", "--tokens", "2") as server:
        endpoints = {c: [server.url] for c in range(8)}
        path = write_deployment(tmp_path / "deploy.yaml", classifier, endpoints, fallback="none", failures_to_down=1)
        document = yaml.safe_load(path.read_text())
        for expert in document["experts"]:
            expert["health_path"] = "/no-such-path" if expert["cluster"] == 2 else "/v1/models"
        path.write_text(yaml.safe_dump(document))
        with NginxRouter(tmp_path, path) as router:
            url = router.url + "/v1/completions"
            time.sleep(0.6)  # a few checks
            status, health = get_json(router.url + "/health")
            assert status == 200 and health["status"] == "ok"
            assert health["experts"]["2"]["healthy_replicas"] == 0
            assert all(health["experts"][str(c)]["healthy_replicas"] == 1 for c in range(8) if c != 2)
            assert post(url, {"model": "expert-1", "prompt": "hello", "max_tokens": 2})[0] == 200
            status, _, answer = post(url, {"model": "expert-2", "prompt": "hello", "max_tokens": 2})
            assert status == 503 and "cluster 2" in json.loads(answer)["error"]["message"]
            log = (router.prefix / "error.log").read_text()
            assert log.count("marked down") == 1 and "checked on /no-such-path" in log, log


def test_health_checks_take_a_dead_replica_out_and_bring_it_back(tmp_path, classifier):
    """Worker 0 checks each replica's health path every `health_interval_s` (0.2 s here): a dead replica
    is out before any request is sent to it, and once it answers its checks it takes requests again at
    once. Without checks, requests found it dead, and it was passed over for 10 s after its last failure."""
    port = free_port()
    with synthetic_expert(tmp_path, "steady", "--tokens", "2") as steady:
        endpoints = {c: [f"http://127.0.0.1:{port}", steady.url] for c in range(8)}
        deployment = write_deployment(tmp_path / "deploy.yaml", classifier, endpoints, failures_to_down=1)
        body = {"model": "expert-1", "prompt": "hello", "max_tokens": 2}
        with NginxRouter(tmp_path, deployment) as router:
            url = router.url + "/v1/completions"
            time.sleep(0.6)  # a few checks
            assert [post(url, body)[0] for _ in range(4)] == [200] * 4
            log = (router.prefix / "error.log").read_text()
            assert "while connecting to upstream" not in log, log  # no request was sent to the dead replica
            assert log.count("marked down") == 1, log  # once, when it went
            status, health = get_json(router.url + "/health")  # the gateway's answer, for readiness probes
            assert status == 200 and health["status"] == "ok"
            assert health["experts"]["1"] == {"model": "expert-1", "healthy_replicas": 1, "replicas": 2, "inflight": 0}

            models = [f"expert-{c}" for c in range(8)]
            back = cli_args("synthetic-expert", "--port", str(port), "--models", *models, "--tokens", "2")
            with Server(back, port, tmp_path / "back.log"):
                time.sleep(0.6)
                assert [post(url, body)[0] for _ in range(4)] == [200] * 4
                assert stats(f"http://127.0.0.1:{port}")["requests"] >= 1  # listed first, idle: picked again
            assert "is back up" in (router.prefix / "error.log").read_text()

    dead = write_deployment(tmp_path / "dead.yaml", classifier, {c: [f"http://127.0.0.1:{port}"] for c in range(8)})
    with NginxRouter(tmp_path, dead, name="dead") as router:
        time.sleep(0.6)
        status, health = get_json(router.url + "/health")
        assert status == 503 and health["status"] == "unavailable"  # a load balancer passes it over
