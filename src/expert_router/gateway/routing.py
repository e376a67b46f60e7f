"""The routing decision, apart from HTTP: a parsed request in, the clusters to try out.

Pure and synchronous, so tests call it without a server (RouteLLM keeps its `Controller.route` apart
from its OpenAI server for the same reason). A request for the gateway's own model name (or none) is
classified: the nearest centroid first, then the other clusters by distance as the fail-over order. A
request that names an expert's model goes to that expert only, with no fail-over to another model.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from expert_router.classifier import Classifier
from expert_router.config import Deployment
from expert_router.errors import BadRequest
from expert_router.gateway.requests import ClientRequest


@dataclass(frozen=True)
class Plan:
    """Where a request goes: `routed` is the cluster it belongs to, `order` the clusters to try."""

    routed: int
    order: list[int]
    classified: bool
    """False when the client named an expert's model (no classification, no fail-over)."""


class Router:
    """Plans every request of one gateway: the classifier plus which clusters have an expert."""

    def __init__(self, classifier: Classifier, deployment: Deployment, served: Collection[int] | None = None):
        self.classifier = classifier
        self.model_name = deployment.gateway.model_name
        self.fallback = deployment.gateway.fallback
        self.by_model = {e.model: e.cluster for e in deployment.experts}
        self.served = frozenset(self.by_model.values() if served is None else served)

    def plan(self, request: ClientRequest) -> Plan:
        if request.model is not None and request.model != self.model_name:
            cluster = self.by_model.get(request.model)
            if cluster is None:
                known = [self.model_name, *self.by_model]
                raise BadRequest(
                    f"The model `{request.model}` does not exist; this gateway serves {known}",
                    status=404,
                    code="model_not_found",
                    param="model",
                )
            return Plan(cluster, [cluster], classified=False)
        ranked = self.classifier.rank(request.text)
        if self.fallback == "none":
            ranked = ranked[:1]
        return Plan(ranked[0], [c for c in ranked if c in self.served], classified=True)
