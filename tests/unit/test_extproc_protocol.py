"""The ext_proc protocol in process: canned ProcessingRequests fed to the servicer, and the Envoy config."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from expert_router.classifier import Classifier, ClassifierSettings
from expert_router.config import Deployment, ExpertConfig
from expert_router.extproc import CLUSTER_HEADER, MODEL_HEADER, Router

pb = pytest.importorskip("envoy.service.ext_proc.v3.external_processor_pb2", reason="xds-protos not installed")

REPO = Path(__file__).resolve().parents[2]
PROMPT = "the kernel compiler segfaults on a pointer in linux"


@pytest.fixture(scope="module")
def classifier(small_corpus) -> Classifier:
    return Classifier.fit([text for text, _ in small_corpus], ClassifierSettings(k=4, dims=20))


def deployment(endpoints: dict[int, list[str]] | None = None) -> Deployment:
    endpoints = endpoints or {c: [f"http://127.0.0.1:{8100 + c}"] for c in range(4)}
    return Deployment(
        classifier=Path("unused"),
        experts=[ExpertConfig(cluster=c, model=f"expert-{c}", endpoints=urls) for c, urls in endpoints.items()],
    )


@pytest.fixture
def router(classifier) -> Router:
    return Router(deployment(), classifier)


def headers_message(method: str, path: str, end_of_stream: bool = False, **more: str):
    from envoy.config.core.v3 import base_pb2

    pairs = [(":method", method), (":path", path), ("content-type", "application/json")]
    values = [
        base_pb2.HeaderValue(key=k, raw_value=v.encode())
        for k, v in pairs + [(k.replace("_", "-"), v) for k, v in more.items()]
    ]
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=values), end_of_stream=end_of_stream)
    )


def body_message(body: bytes):
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))


def process(router: Router, *requests) -> list:
    """Run the servicer's stream over canned requests, as Envoy would send them."""
    from expert_router.extproc.metrics import ExtprocMetrics
    from expert_router.extproc.processor import ExternalProcessor

    processor = ExternalProcessor(router, ExtprocMetrics())

    async def stream():
        for request in requests:
            yield request

    async def collect():
        return [response async for response in processor.Process(stream(), None)]

    return asyncio.run(collect())


def set_headers(mutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def test_the_body_phase_sets_headers_rewrites_the_body_and_clears_the_route_cache(router, classifier):
    body = json.dumps({"prompt": PROMPT, "stream": True}).encode()
    first, second = process(router, headers_message("POST", "/v1/completions"), body_message(body))
    assert first.WhichOneof("response") == "request_headers"
    common = second.request_body.response
    cluster = int(classifier.route(PROMPT).cluster[0])
    new_body = common.body_mutation.body
    assert json.loads(new_body)["model"] == f"expert-{cluster}" and common.clear_route_cache
    assert set_headers(common.header_mutation) == {
        CLUSTER_HEADER: str(cluster),
        MODEL_HEADER: f"expert-{cluster}",
        "x-expert-routed-by": "classifier",
        "content-length": str(len(new_body)),
    }


def test_a_compressed_body_goes_on_decoded_without_its_encoding_header(router):
    import gzip

    body = json.dumps({"prompt": PROMPT}).encode()
    _, second = process(
        router, headers_message("POST", "/v1/completions", content_encoding="gzip"), body_message(gzip.compress(body))
    )
    common = second.request_body.response
    assert json.loads(common.body_mutation.body)["prompt"] == PROMPT
    assert list(common.header_mutation.remove_headers) == ["content-encoding"]
    assert set_headers(common.header_mutation)["content-length"] == str(len(common.body_mutation.body))


def test_a_bad_body_gets_an_immediate_response(router):
    _, reply = process(router, headers_message("POST", "/v1/completions"), body_message(b"nope"))
    immediate = reply.immediate_response
    assert immediate.status.code == 400 and json.loads(immediate.body)["error"]["code"] == 400
    assert set_headers(immediate.headers) == {"content-type": "application/json"}


def test_a_post_without_body_is_answered_at_the_headers_phase(router):
    (reply,) = process(router, headers_message("POST", "/v1/chat/completions", end_of_stream=True))
    assert reply.immediate_response.status.code == 400


def test_models_are_listed_by_the_processor(router):
    (reply,) = process(router, headers_message("GET", "/v1/models", end_of_stream=True))
    names = [m["id"] for m in json.loads(reply.immediate_response.body)["data"]]
    assert reply.immediate_response.status.code == 200 and names == [
        "expert-router",
        *(f"expert-{c}" for c in range(4)),
    ]


def test_other_requests_and_phases_pass_unchanged(router):
    responses = process(
        router,
        headers_message("POST", "/v1/embeddings"),
        body_message(b"{}"),
        pb.ProcessingRequest(response_headers=pb.HttpHeaders()),
    )
    assert [r.WhichOneof("response") for r in responses] == ["request_headers", "request_body", "response_headers"]
    assert not responses[1].request_body.response.HasField("header_mutation")


# -- the Envoy config ------------------------------------------------------------------------------
def test_the_envoy_template_gets_one_route_and_one_cluster_per_expert():
    from expert_router.extproc.envoy import Addresses, render_config

    template = yaml.safe_load((REPO / "deploy" / "envoy" / "envoy.yaml").read_text())
    experts = {
        0: ["http://10.0.0.1:8000", "http://10.0.0.2:8000"],
        3: ["http://vllm-expert-3:8000"],
        5: ["http://10.0.0.5"],
    }
    config = render_config(
        template, deployment(experts), Addresses(listen_port=18080, extproc_port=19002, admin_port=19901)
    )
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    routed = [(r["match"]["headers"][0]["string_match"]["exact"], r["route"]["cluster"]) for r in routes[:-1]]
    assert routed == [("0", "expert-cluster-0"), ("3", "expert-cluster-3"), ("5", "expert-cluster-5")]
    assert all(r["route"]["retry_policy"]["num_retries"] == 2 for r in routes[:-1]) and "direct_response" in routes[-1]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == {"expert-router-extproc", "expert-cluster-0", "expert-cluster-3", "expert-cluster-5"}

    def hosts(name):
        endpoints = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        return [
            (
                e["endpoint"]["address"]["socket_address"]["address"],
                e["endpoint"]["address"]["socket_address"]["port_value"],
            )
            for e in endpoints
        ]

    assert hosts("expert-cluster-0") == [("10.0.0.1", 8000), ("10.0.0.2", 8000)] and hosts("expert-cluster-5") == [
        ("10.0.0.5", 80)
    ]
    assert clusters["expert-cluster-3"]["type"] == "STRICT_DNS" and clusters["expert-cluster-0"]["type"] == "STATIC"
    assert hosts("expert-router-extproc") == [("127.0.0.1", 19002)]
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] == 18080


def test_routing_headers_sent_by_a_client_are_removed(router):
    from envoy.config.core.v3 import base_pb2

    request = headers_message("POST", "/v1/embeddings")
    request.request_headers.headers.headers.append(base_pb2.HeaderValue(key=CLUSTER_HEADER, raw_value=b"3"))
    (reply,) = process(router, request)
    common = reply.request_headers.response
    assert list(common.header_mutation.remove_headers) == [CLUSTER_HEADER] and common.clear_route_cache
