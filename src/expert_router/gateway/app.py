"""The gateway's app: wiring, the small endpoints, and the request spine.

A generation request passes four steps, each in its own module:

    parse (`requests`) -> plan (`routing`, no HTTP) -> forward (`forward`, fail-over) -> relay (`relay`)

It arrives through the gateway's own HTTP server (`server`, run by `listen`). Whatever the gateway
answers itself is an OpenAI-style JSON error: a `ClientError` from any step, a 404/405 for unknown
paths and methods, and a 500 for a bug (its trace goes to the log). A client that goes away cancels
the handler, which closes the upstream connection: that is how an engine learns to abort the request.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from expert_router.classifier import Classifier
from expert_router.config import Deployment
from expert_router.encoding import decode_body
from expert_router.errors import ClientError
from expert_router.gateway.forward import Forwarder, Timing
from expert_router.gateway.messages import (
    Request,
    Response,
    Routes,
    client_error_response,
    error_response,
    json_response,
)
from expert_router.gateway.metrics import GatewayMetrics
from expert_router.gateway.replicas import Experts
from expert_router.gateway.requests import parse_request
from expert_router.gateway.routing import Router
from expert_router.wire import ConnectionPool, clock

log = logging.getLogger("expert_router.gateway")


class Gateway:
    """Everything one gateway process shares between its requests; the app its server runs."""

    def __init__(self, deployment: Deployment, classifier: Classifier):
        self.deployment = deployment
        self.metrics = GatewayMetrics()
        self.experts = Experts(deployment.experts, deployment.gateway, self.metrics.set_inflight)
        for cluster in self.experts.by_cluster:
            self.metrics.set_inflight(cluster, 0)  # every series from the start
        self.router = Router(classifier, deployment, self.experts.by_cluster)
        self.max_body_bytes = deployment.gateway.max_body_bytes
        self.forwarder: Forwarder | None = None  # made on start-up: its connections belong to the event loop
        self.session: aiohttp.ClientSession | None = None  # background health checks only
        self.routes: Routes = {
            "/v1/completions": {"POST": self.completions},
            "/v1/chat/completions": {"POST": self.chat_completions},
            "/v1/models": {"GET": self.models},
            "/health": {"GET": self.health},
            "/metrics": {"GET": self.metrics_text},
        }

    async def start(self) -> None:
        settings = self.deployment.gateway
        self.forwarder = Forwarder(settings, self.experts, self.metrics, ConnectionPool(settings.connect_timeout_s))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar()
        )
        self.experts.start(self.session)

    async def stop(self) -> None:
        await self.experts.stop()
        if self.forwarder is not None:
            self.forwarder.connections.close()
        if self.session is not None:
            await self.session.close()

    # -- small endpoints -------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        created = int(time.time())
        names = [self.deployment.gateway.model_name] + [e.model for e in self.deployment.experts]
        data = [{"id": n, "object": "model", "created": created, "owned_by": "expert-router"} for n in names]
        return json_response({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        experts = {
            str(c): {
                "model": e.model,
                "healthy_replicas": len(e.healthy()),
                "replicas": len(e.replicas),
                "inflight": e.inflight,
            }
            for c, e in sorted(self.experts.by_cluster.items())
        }
        ok = any(e["healthy_replicas"] for e in experts.values())
        return json_response({"status": "ok" if ok else "unavailable", "experts": experts}, 200 if ok else 503)

    async def metrics_text(self, request: Request) -> Response:
        return Response(
            200,
            self.metrics.exposition(),
            {"X-Content-Type-Options": "nosniff"},
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )

    # -- generation: the spine -------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self.generate(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self.generate(request, chat=True)

    async def generate(self, request: Request, chat: bool) -> Response:
        """The answer (a stream's once it has been relayed), counted by endpoint, cluster and status."""
        assert self.forwarder is not None
        endpoint = "chat" if chat else "completions"
        # Routing time starts once the whole request is here: waiting for the client's bytes is not
        # the gateway's work (a direct connection waits for them just the same).
        received = clock()
        try:
            raw = request.body
            encoding = request.headers.get(b"content-encoding")
            if encoding is not None:
                raw = decode_body(raw, encoding, self.max_body_bytes)
            client = parse_request(raw, chat)
            plan = self.router.plan(client)
            timing = Timing(received, clock())
            self.metrics.classify_seconds.observe(timing.classified - timing.received)
            outcome = await self.forwarder.forward(request, client, plan, timing)
        except asyncio.CancelledError:  # the client went away (or its proxy closed): counted, not lost
            self.metrics.count_request(endpoint, "", "499")
            raise
        except ClientError as exc:
            outcome = client_error_response(exc)
        except Exception:  # a bug, not the client's fault: say so in the API's own words, keep the trace in the log
            if request.streaming:
                raise  # a stream has begun: no second head; the server cuts it short and logs the trace
            log.exception("unexpected error while answering %s", request.path)
            outcome = error_response(500, "internal error in the gateway; see its log", "server_error")
        self.metrics.count_request(endpoint, outcome.headers.get("X-Expert-Cluster", ""), str(outcome.status))
        return outcome


def build_app(deployment: Deployment, classifier: Classifier) -> Gateway:
    """The gateway for `deployment`; `expert_router.gateway.listen.serve_until_stopped(app, host, port)` serves it."""
    return Gateway(deployment, classifier)
