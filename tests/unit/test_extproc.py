"""The external processor in process: routing decisions, and ext_proc messages fed to the servicer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expert_router.classifier import Classifier, ClassifierSettings
from expert_router.config import Deployment, ExpertConfig
from expert_router.extproc import CLUSTER_HEADER, MODEL_HEADER, Reply, Route, Router


@pytest.fixture(scope="module")
def classifier(small_corpus) -> Classifier:
    return Classifier.fit([text for text, _ in small_corpus], ClassifierSettings(k=4, dims=20))


def deployment(clusters=(0, 1, 2, 3)) -> Deployment:
    return Deployment(
        classifier=Path("unused"),
        experts=[
            ExpertConfig(cluster=c, model=f"expert-{c}", endpoints=[f"http://127.0.0.1:{8100 + c}"]) for c in clusters
        ],
    )


@pytest.fixture
def router(classifier) -> Router:
    return Router(deployment(), classifier)


class Broken:
    """A classifier that fails: stands in for a bug in routing (the router asks it to rank)."""

    def rank(self, text):
        raise RuntimeError("boom")


PROMPT = "the kernel compiler segfaults on a pointer in linux"


def test_a_compressed_body_is_decoded_and_held_to_the_body_limit_as_serve_does(router, classifier):
    """The gzip bytes were parsed as JSON (400 "not valid JSON"), and a body past `max_body_bytes`,
    which `serve` refuses with 413, was routed."""
    import gzip

    raw = json.dumps({"model": "expert-router", "prompt": PROMPT}).encode()
    decision = router.decide("/v1/completions", gzip.compress(raw), "gzip")
    assert isinstance(decision, Route) and decision.decoded
    assert json.loads(decision.body)["model"] == f"expert-{int(classifier.route(PROMPT).cluster[0])}"
    named = router.decide(
        "/v1/completions", gzip.compress(json.dumps({"model": "expert-2", "prompt": "x"}).encode()), "gzip"
    )
    assert isinstance(named, Route) and named.decoded and json.loads(named.body)["model"] == "expert-2"
    deep = b'{"prompt": "hi there", "x": ' + b"[" * 300 + b"]" * 300 + b"}"  # read by orjson, not written
    for body, encoding, status in (
        (raw, "compress", 415),
        (raw, "gzip", 400),
        (b" " * (4 * 1024 * 1024 + 1), None, 413),
        (deep, None, 400),  # was the router's own failure: 503, and a trace in the log
    ):
        reply = router.decide("/v1/completions", body, encoding)
        assert isinstance(reply, Reply) and reply.status == status, (encoding, reply)


# -- decisions -----------------------------------------------------------------------------------
def test_a_prompt_is_classified_and_its_model_rewritten(router, classifier):
    raw = json.dumps({"model": "expert-router", "prompt": PROMPT, "max_tokens": 3, "stream": True}).encode()
    decision = router.decide("/v1/completions", raw)
    cluster = int(classifier.route(PROMPT).cluster[0])
    assert isinstance(decision, Route) and decision.cluster == cluster and decision.routed_by == "classifier"
    assert json.loads(decision.body) == {
        "model": f"expert-{cluster}",
        "prompt": PROMPT,
        "max_tokens": 3,
        "stream": True,
    }
    assert (
        decision.headers()[CLUSTER_HEADER] == str(cluster) and decision.headers()[MODEL_HEADER] == f"expert-{cluster}"
    )


def test_chat_routes_on_the_user_messages(router, classifier):
    body = {"messages": [{"role": "system", "content": "court judge lease"}, {"role": "user", "content": PROMPT}]}
    decision = router.decide("/v1/chat/completions?x=1", json.dumps(body).encode())
    assert isinstance(decision, Route) and decision.cluster == int(classifier.route(PROMPT).cluster[0])


def test_a_named_expert_is_not_classified_and_its_body_kept(router):
    raw = json.dumps({"model": "expert-2", "prompt": PROMPT}).encode()
    decision = router.decide("/v1/completions", raw)
    assert isinstance(decision, Route) and (decision.cluster, decision.routed_by, decision.body) == (2, "model", raw)


def test_a_cluster_without_expert_goes_to_the_nearest_that_has_one(classifier):
    cluster = int(classifier.route(PROMPT).cluster[0])
    router = Router(deployment([c for c in range(4) if c != cluster]), classifier)
    decision = router.decide("/v1/completions", json.dumps({"prompt": PROMPT}).encode())
    assert isinstance(decision, Route) and decision.cluster == int(classifier.route(PROMPT).ranked(0)[1])


@pytest.mark.parametrize(
    "raw, status, code, param",
    [
        (b"{oops", 400, 400, None),
        (b"[1, 2]", 400, 400, None),
        (b'{"prompt": ""}', 400, 400, "prompt"),
        (b'{"prompt": "hi", "stream": "yes"}', 400, 400, "stream"),
        (b'{"prompt": "hi", "model": "gpt-4"}', 404, "model_not_found", "model"),
    ],
)
def test_bad_bodies_become_openai_errors(router, raw, status, code, param):
    decision = router.decide("/v1/completions", raw)
    assert isinstance(decision, Reply) and decision.status == status
    error = json.loads(decision.body)["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")


def test_other_paths_are_not_ours(router):
    assert router.decide("/v1/embeddings", b"{}") is None and router.decide("/health", b"") is None


def test_internal_errors_fail_closed_or_open():
    closed = Router(deployment(), Broken(), on_error="closed").decide("/v1/completions", b'{"prompt": "hi"}')
    assert isinstance(closed, Reply) and closed.status == 503 and closed.reason == "internal_error"
    raw = b'{"prompt": "hi"}'
    opened = Router(deployment(), Broken(), on_error="open", default_cluster=2).decide("/v1/completions", raw)
    assert isinstance(opened, Route) and (opened.cluster, opened.routed_by, opened.body) == (2, "default", raw)
    with pytest.raises(ValueError):
        Router(deployment(), Broken(), default_cluster=9)


def test_a_port_in_use_is_a_clear_error(classifier, tmp_path: Path, capsys):
    """grpcio raises RuntimeError for an address it cannot bind: it came out as a traceback."""
    import socket

    from expert_router.cli import main

    classifier.save(tmp_path / "classifier")
    path = tmp_path / "deploy.yaml"
    deployment().model_copy(update={"classifier": tmp_path / "classifier"}).write(path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        assert main(["extproc", str(path), "--port", busy, "--metrics-port", "-1"]) == 2
        assert "cannot listen" in capsys.readouterr().err
        # The metrics port taken: "cannot listen: [Errno 98] Address already in use", no port or flag
        # named, and a RuntimeError from the gRPC server left behind as the interpreter ended.
        assert main(["extproc", str(path), "--port", "0", "--metrics-port", busy]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "--metrics-port" in err and busy in err
