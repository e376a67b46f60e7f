"""deploy/kubernetes/ checked offline: core objects against Kubernetes' schemas (kubernetes-validate),
custom resources against their vendored CRD schemas, and the references between the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from expert_router.config import parse_deployment

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
jsonschema = pytest.importorskip("jsonschema")

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
SCHEMAS = KUBERNETES / "schemas"
KUBERNETES_VERSION = "1.32.0"
"""The oldest Kubernetes the manifests target (sidecar-free; preStop sleep and gRPC probes are GA or beta)."""


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        if SCHEMAS in path.parents:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.relative_to(KUBERNETES)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


def strict(schema: Any) -> Any:
    """Unknown fields are errors, as with `kubectl apply --validate=strict`: CRD schemas only prune them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, from the vendored CRD and extracted schemas."""
    schemas = {}
    for path in SCHEMAS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schemas[key] = version["schema"]["openAPIV3Schema"]
    for path in SCHEMAS.glob("*.schema.json"):
        doc = json.loads(path.read_text())
        schemas[(f"{doc['group']}/{doc['version']}", doc["kind"])] = doc["openAPIV3Schema"]
    return {key: strict(schema) for key, schema in schemas.items()}


MANIFESTS = manifests()
CRDS = crd_schemas()


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in MANIFESTS if doc["kind"] == kind]


def test_every_manifest_is_checked_and_all_kinds_are_there():
    kinds = {doc["kind"] for _, doc in MANIFESTS}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "InferencePool",
        "HTTPRoute",
        "Gateway",
        "EnvoyExtensionPolicy",
        "ClientTrafficPolicy",
    } <= kinds


@pytest.mark.parametrize(
    "name, doc",
    [
        m
        for m in MANIFESTS
        if (m[1]["apiVersion"], m[1]["kind"]) not in CRDS and "." not in m[1]["apiVersion"].split("/")[0]
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_core_objects_match_kubernetes_schemas(name, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "name, doc",
    [m for m in MANIFESTS if (m[1]["apiVersion"], m[1]["kind"]) in CRDS],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_custom_resources_match_their_crd_schemas(name, doc):
    jsonschema.validate(doc, CRDS[(doc["apiVersion"], doc["kind"])])


def test_objects_without_a_schema_are_only_the_gateway():
    """Gateway (gateway.networking.k8s.io/v1) is the one object not checked against a schema: a name,
    a class and a listener."""
    unchecked = {
        doc["kind"]
        for _, doc in MANIFESTS
        if (doc["apiVersion"], doc["kind"]) not in CRDS
        and "." in doc["apiVersion"].split("/")[0]
        and doc["apiVersion"].split("/")[0] not in ("apps", "autoscaling", "policy")
    }
    assert unchecked == {"Gateway"}


def test_a_wrong_field_is_caught():
    pool = json.loads(json.dumps(by_kind("InferencePool")[0]))
    pool["spec"]["targetPort"] = 8000
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, CRDS[("inference.networking.k8s.io/v1", "InferencePool")])
    deployment = json.loads(json.dumps(by_kind("Deployment")[0]))
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# -- references between the files -----------------------------------------------------------------
def pod_labels() -> list[dict[str, str]]:
    return [d["spec"]["template"]["metadata"]["labels"] for d in by_kind("Deployment")]


def selects(selector: dict[str, str]) -> bool:
    return any(selector.items() <= labels.items() for labels in pod_labels())


def test_the_deployment_config_map_is_a_valid_deployment_naming_existing_services():
    (config,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "expert-router-deployment"]
    deployment = parse_deployment(yaml.safe_load(config["data"]["deployment.yaml"]), "config.yaml")
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for expert in deployment.experts:
        for url in expert.base_urls():
            host, port = url.removeprefix("http://").split(":")
            assert host in services and int(port) in [p["port"] for p in services[host]["spec"]["ports"]]
    assert by_kind("HTTPRoute")  # and the routes name these models:
    header_values = {
        h["value"]
        for rule in by_kind("HTTPRoute")[0]["spec"]["rules"]
        for match in rule["matches"]
        for h in match.get("headers", [])
    }
    assert header_values == {e.model for e in deployment.experts}


def test_selectors_find_pods_and_references_find_objects():
    for service in by_kind("Service"):
        assert selects(service["spec"]["selector"]), service["metadata"]["name"]
    for pool in by_kind("InferencePool"):
        assert selects(pool["spec"]["selector"]["matchLabels"]), pool["metadata"]["name"]
    pools = {p["metadata"]["name"] for p in by_kind("InferencePool")}
    for rule in by_kind("HTTPRoute")[0]["spec"]["rules"]:
        assert {ref["name"] for ref in rule["backendRefs"]} <= pools
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for policy in by_kind("EnvoyExtensionPolicy"):
        for ref in policy["spec"]["extProc"][0]["backendRefs"]:
            assert ref["port"] in [p["port"] for p in services[ref["name"]]["spec"]["ports"]]
    deployments = {d["metadata"]["name"] for d in by_kind("Deployment")}
    for scaler in by_kind("HorizontalPodAutoscaler"):
        assert scaler["spec"]["scaleTargetRef"]["name"] in deployments
    for budget in by_kind("PodDisruptionBudget"):
        assert selects(budget["spec"]["selector"]["matchLabels"])


def test_termination_grace_covers_the_prestop_sleep_and_the_drain():
    (config,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "expert-router-deployment"]
    drain = yaml.safe_load(config["data"]["deployment.yaml"])["gateway"]["drain_timeout_s"]
    (gateway,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "expert-router-gateway"]
    pod = gateway["spec"]["template"]["spec"]
    sleep = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > sleep + drain


def test_the_processors_pods_leave_envoy_before_they_stop_taking_streams():
    """With no preStop sleep, SIGTERM stopped new ext_proc streams while Envoy still sent them there:
    every such request a 500 (failOpen: false)."""
    (extproc,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "expert-router-extproc"]
    assert extproc["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] > 0


def test_envoy_gateway_buffers_the_bodies_the_processor_reads():
    """Envoy Gateway's listeners buffer 32 KiB a connection by default: a Buffered ext_proc then
    answered every request body past 32 KiB with a plain-text 413."""
    gateways = {g["metadata"]["name"] for g in by_kind("Gateway")}
    (policy,) = by_kind("ClientTrafficPolicy")
    assert {ref["name"] for ref in policy["spec"]["targetRefs"]} == gateways
    limit = policy["spec"]["connection"]["bufferLimit"]
    assert limit.endswith("Mi") and int(limit[:-2]) * 1024 * 1024 >= 8 * 1024 * 1024
