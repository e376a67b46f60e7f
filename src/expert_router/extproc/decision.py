"""The routing decision for one request seen by Envoy: pure, no gRPC, no sockets.

The gateway's own request parsing (`parse_request`) and the classifier decide, exactly as `serve`
does: a body with a `Content-Encoding` is decoded and held to `max_body_bytes` as `serve` holds it,
a request naming an expert's model goes to that expert, one naming the deployment's routed model
(or none) is classified, and the nearest cluster that has an expert wins. The answer is either a
`Route` (headers to set, the body with `model` rewritten, and sent on decoded) or a `Reply` that
Envoy sends itself (a client error, or an internal error when failing closed). Keeping this apart from the
protocol lets unit tests call it with bytes and compare plain values.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Literal

import orjson

from expert_router.classifier import Classifier
from expert_router.config import Deployment
from expert_router.encoding import decode_body
from expert_router.errors import BadRequest
from expert_router.gateway.requests import body_naming, parse_request
from expert_router.http import error_body

log = logging.getLogger("expert_router.extproc")

CLUSTER_HEADER = "x-expert-cluster"
"""The cluster chosen, as decimal text: Envoy's routes match on it."""
MODEL_HEADER = "x-gateway-model-name"
"""The expert's model name: the header the Gateway API Inference Extension's HTTPRoutes match on."""
CLASSIFIED_HEADER = "x-expert-routed-by"
"""`classifier` when the prompt was classified, `model` when the client named an expert, `default` on fail-open."""

ROUTING_HEADERS = (CLUSTER_HEADER, MODEL_HEADER, CLASSIFIED_HEADER)
"""Set only by the processor: a client's own values are removed, so no one picks a route by sending them."""

ROUTED_PATHS = {"/v1/completions": False, "/v1/chat/completions": True}
"""Paths whose body is classified, and whether they are chat."""

OnError = Literal["closed", "open"]


@dataclass(frozen=True)
class Route:
    """Send the request on to `cluster`'s expert, with `body` (model rewritten) and these headers."""

    cluster: int
    model: str
    body: bytes
    routed_by: str
    classify_s: float = 0.0
    decoded: bool = False
    """`body` was decoded from the request's Content-Encoding: it goes on plain, without that header."""

    def headers(self) -> dict[str, str]:
        return {CLUSTER_HEADER: str(self.cluster), MODEL_HEADER: self.model, CLASSIFIED_HEADER: self.routed_by}


@dataclass(frozen=True)
class Reply:
    """Answer the client directly (Envoy's immediate response) with a JSON body."""

    status: int
    body: bytes
    reason: str
    """Short label for metrics: bad_request, model_not_found, internal_error, models."""


Decision = Route | Reply | None
"""None: not ours to route (another path); Envoy passes it on untouched."""


def routed_path(path: str) -> bool | None:
    """True for chat, False for completions, None for a path that is not classified."""
    return ROUTED_PATHS.get(path.split("?", 1)[0].rstrip("/") or "/")


class Router:
    """Prompt in, expert out: the same pure routing core as the gateway, for Envoy's processor."""

    def __init__(
        self,
        deployment: Deployment,
        classifier: Classifier,
        on_error: OnError = "closed",
        default_cluster: int | None = None,
    ):
        self.deployment = deployment
        self.classifier = classifier
        self.on_error = on_error
        self.by_cluster = {e.cluster: e for e in deployment.experts}
        self.by_model = {e.model: e.cluster for e in deployment.experts}
        self.default_cluster = default_cluster if default_cluster is not None else min(self.by_cluster)
        if self.default_cluster not in self.by_cluster:
            raise ValueError(f"default cluster {self.default_cluster} has no expert")

    def decide(self, path: str, body: bytes, content_encoding: str | None = None) -> Decision:
        """The decision for a POST to `path` carrying `body` (the whole body, as Envoy buffered it, in
        its `content_encoding`)."""
        chat = routed_path(path)
        if chat is None:
            return None
        try:
            route = self._route(self._plain(body, content_encoding), chat)
            return route if content_encoding is None else replace(route, decoded=True)
        except BadRequest as exc:
            reason = exc.code if exc.code else "bad_request"
            return Reply(exc.status, _error(exc.status, str(exc), exc.code, exc.param), reason)
        except Exception:  # a bug, not the client's fault: fail as configured, keep the trace in the log
            log.exception("routing failed")
            return self.on_internal_error(body)

    def on_internal_error(self, body: bytes) -> Route | Reply:
        """Fail closed (503) or open (the default expert, body untouched)."""
        if self.on_error == "open":
            return Route(self.default_cluster, self.by_cluster[self.default_cluster].model, body, "default")
        return Reply(
            503, _error(503, "the router failed to classify this request; see its log", None, None), "internal_error"
        )

    def models(self) -> Reply:
        """GET /v1/models: the routed model and every expert's, as the gateway lists them."""
        created = int(time.time())
        names = [self.deployment.gateway.model_name, *self.by_model]
        data = [{"id": n, "object": "model", "created": created, "owned_by": "expert-router"} for n in names]
        return Reply(200, orjson.dumps({"object": "list", "data": data}), "models")

    def _plain(self, body: bytes, content_encoding: str | None) -> bytes:
        """The body decoded (415, 400, 413 as `serve` answers them) and within the body limit."""
        limit = self.deployment.gateway.max_body_bytes
        if content_encoding is not None:
            body = decode_body(body, content_encoding.encode("latin-1"), limit)
        if len(body) > limit:
            raise BadRequest(f"the request body is larger than {limit} bytes", status=413)
        return body

    def _route(self, body: bytes, chat: bool) -> Route:
        client = parse_request(body, chat)
        if client.model is not None and client.model != self.deployment.gateway.model_name:
            cluster = self.by_model.get(client.model)
            if cluster is None:
                known = [self.deployment.gateway.model_name, *self.by_model]
                raise BadRequest(
                    f"The model `{client.model}` does not exist; this gateway serves {known}",
                    status=404,
                    code="model_not_found",
                    param="model",
                )
            return Route(cluster, client.model, body, "model")  # a named expert: body already says so
        started = time.perf_counter()
        ranked = self.classifier.rank(client.text)
        classify_s = time.perf_counter() - started
        cluster = next(c for c in ranked if c in self.by_cluster)
        model = self.by_cluster[cluster].model
        return Route(cluster, model, body_naming(client, model), "classifier", classify_s)


def _error(status: int, message: str, code: str | None, param: str | None) -> bytes:
    return orjson.dumps(error_body(status, message, code=code, param=param))
