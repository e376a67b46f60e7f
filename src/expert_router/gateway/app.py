"""The gateway's HTTP app: wiring, the small endpoints, and the request spine.

A generation request passes four steps, each in its own module:

    parse (`requests`) -> plan (`routing`, no HTTP) -> forward (`forward`, fail-over) -> relay (`relay`)

Whatever the gateway answers itself is an OpenAI-style JSON error: a `ClientError` from any step, a
404/405 for unknown paths and methods, and a 500 for a bug (its trace goes to the log). A client that
goes away cancels the handler, which closes the upstream connection: that is how an engine learns to
abort the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from expert_router.classifier import Classifier
from expert_router.config import Deployment
from expert_router.errors import BadRequest, ClientError
from expert_router.gateway.forward import Forwarder, Timing
from expert_router.gateway.metrics import GatewayMetrics
from expert_router.gateway.replicas import Experts
from expert_router.gateway.requests import parse_request
from expert_router.gateway.routing import Router
from expert_router.http import client_error_response, error_response
from expert_router.wire import ConnectionPool, clock

log = logging.getLogger("expert_router.gateway")


@dataclass
class Gateway:
    """Everything one gateway process shares between its requests."""

    deployment: Deployment
    router: Router
    experts: Experts
    metrics: GatewayMetrics
    forwarder: Forwarder | None = None  # made on start-up: its connections belong to the event loop
    session: aiohttp.ClientSession | None = None  # background health checks only


GATEWAY_KEY = web.AppKey("gateway", Gateway)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(deployment: Deployment, classifier: Classifier) -> web.Application:
    experts = Experts(deployment.experts, deployment.gateway)
    gateway = Gateway(deployment, Router(classifier, deployment, experts.by_cluster), experts, GatewayMetrics())
    app = web.Application(client_max_size=deployment.gateway.max_body_bytes, middlewares=[json_errors])
    app[GATEWAY_KEY] = gateway
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    gateway = app[GATEWAY_KEY]
    settings = gateway.deployment.gateway
    gateway.forwarder = Forwarder(
        settings, gateway.experts, gateway.metrics, ConnectionPool(settings.connect_timeout_s)
    )
    gateway.session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar()
    )
    gateway.experts.start_health_checks(gateway.session)


async def _stop(app: web.Application) -> None:
    gateway = app[GATEWAY_KEY]
    await gateway.experts.stop()
    if gateway.forwarder is not None:
        gateway.forwarder.connections.close()
    if gateway.session is not None:
        await gateway.session.close()


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own answers (404, 405, ...) as OpenAI-style JSON, like every other error here."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(
            exc.status,
            f"{exc.reason}: {request.method} {request.path}",
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )


# -- small endpoints -----------------------------------------------------------------------------
async def models(request: web.Request) -> web.Response:
    deployment = request.app[GATEWAY_KEY].deployment
    created = int(time.time())
    names = [deployment.gateway.model_name] + [e.model for e in deployment.experts]
    data = [{"id": n, "object": "model", "created": created, "owned_by": "expert-router"} for n in names]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    experts = {
        str(c): {
            "model": e.model,
            "healthy_replicas": len(e.healthy()),
            "replicas": len(e.replicas),
            "inflight": e.inflight,
        }
        for c, e in sorted(request.app[GATEWAY_KEY].experts.by_cluster.items())
    }
    ok = any(e["healthy_replicas"] for e in experts.values())
    return web.json_response({"status": "ok" if ok else "unavailable", "experts": experts}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    for cluster, expert in gateway.experts.by_cluster.items():
        gateway.metrics.inflight.labels(str(cluster)).set(expert.inflight)
    return web.Response(
        body=gateway.metrics.exposition(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


# -- generation: the spine -----------------------------------------------------------------------
async def completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, chat=True)


async def generate(request: web.Request, chat: bool) -> web.StreamResponse:
    gateway = request.app[GATEWAY_KEY]
    assert gateway.forwarder is not None
    try:
        raw = await read_body(request, gateway.deployment.gateway.max_body_bytes)
        # Routing time starts once the whole request is here: waiting for the client's bytes is not
        # the gateway's work (a direct connection waits for them just the same).
        received = clock()
        client = parse_request(raw, chat)
        plan = gateway.router.plan(client)
        timing = Timing(received, clock())
        gateway.metrics.classify_seconds.observe(timing.classified - timing.received)
        response = await gateway.forwarder.forward(request, client, plan, timing)
    except asyncio.CancelledError:  # the client went away (or its proxy closed): counted, not lost
        gateway.metrics.count_request("chat" if chat else "completions", "", "499")
        raise
    except ClientError as exc:
        response = client_error_response(exc)
    except Exception:  # a bug, not the client's fault: say so in the API's own words, keep the trace in the log
        log.exception("unexpected error while answering %s", request.path)
        response = error_response(500, "internal error in the gateway; see its log", "server_error")
    gateway.metrics.count_request(
        "chat" if chat else "completions", response.headers.get("X-Expert-Cluster", ""), str(response.status)
    )
    return response


CONTENT_ENCODINGS = frozenset({"identity", "gzip", "deflate", "br", "zstd"})
"""What aiohttp's parser decodes (br and zstd when their packages are installed)."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, decoded from its Content-Encoding; a client's mistake is a 4xx, never a 5xx."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
    if encoding not in CONTENT_ENCODINGS:
        raise BadRequest(
            f"Content-Encoding {encoding!r} is not supported; use one of {sorted(CONTENT_ENCODINGS)}", status=415
        )
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(f"the request body is larger than {limit} bytes", status=413) from None
    except (ContentEncodingError, RequestPayloadError):  # aiohttp wraps the decoder's error in the latter
        raise BadRequest(f"the request body cannot be decoded as Content-Encoding {encoding!r}", status=400) from None
