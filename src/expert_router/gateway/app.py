"""The gateway's HTTP app: classify, pick a replica, forward, relay the stream as it arrives.

The request path, in order: read and check the body; classify the prompt (nearest centroid first, the
other clusters after it as the fail-over order); take an in-flight slot of that expert (or wait for one,
then 429); send the request to its least busy healthy replica with the expert's model name; wait for
the first bytes of the answer. Up to that point a failure moves on to the next replica or the
next-nearest cluster. From then on bytes are relayed as they arrive, and a failure ends the stream with
an error event. A client that goes away cancels the handler, which closes the upstream connection: that
is how vLLM learns to abort the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from expert_router.classifier import Classifier
from expert_router.config import Deployment
from expert_router.gateway.metrics import GatewayMetrics
from expert_router.gateway.pool import ExpertPool, Pools, Replica, Saturated
from expert_router.gateway.requests import BadRequest, ClientRequest, parse_request
from expert_router.gateway.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
)
from expert_router.http import error_body, error_response

log = logging.getLogger("expert_router.gateway")

DEPLOYMENT_KEY = web.AppKey("deployment", Deployment)
CLASSIFIER_KEY = web.AppKey("classifier", Classifier)
POOLS_KEY = web.AppKey("pools", Pools)
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)  # background health checks only
UPSTREAM_KEY = web.AppKey("upstream", UpstreamPool)

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tells nginx not to buffer the stream
}
DONE = b"data: [DONE]\n\n"
WRITE_FAST_LIMIT = 64 * 1024
"""Below this many bytes waiting for the client, relayed chunks are written to the socket directly."""


class UpstreamFailed(Exception):
    """The upstream failed before its first byte: the request may go elsewhere."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass
class Attempt:
    """Where a request went: for headers, metrics and the fail-over note."""

    routed: int
    cluster: int
    pool: ExpertPool
    replica: Replica
    t_received: float
    t_classified: float
    t_sent: float
    fallback: str | None

    def headers(self) -> dict[str, str]:
        route_ms = (self.t_sent - self.t_received) * 1000
        classify_ms = (self.t_classified - self.t_received) * 1000
        headers = {
            "X-Expert-Cluster": str(self.cluster),
            "X-Expert-Model": self.pool.expert.model,
            "X-Expert-Routed-Cluster": str(self.routed),
            "Server-Timing": f"route;dur={route_ms:.3f}, classify;dur={classify_ms:.3f}",
        }
        if self.fallback:
            headers["X-Expert-Fallback"] = " ".join(self.fallback.encode("ascii", "replace").decode().split())[:1000]
        return headers


def build_app(deployment: Deployment, classifier: Classifier) -> web.Application:
    settings = deployment.gateway
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[DEPLOYMENT_KEY] = deployment
    app[CLASSIFIER_KEY] = classifier
    app[POOLS_KEY] = Pools(deployment.experts, settings)
    app[METRICS_KEY] = GatewayMetrics()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    return app


async def _start(app: web.Application) -> None:
    app[SESSION_KEY] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                              cookie_jar=aiohttp.DummyCookieJar())
    app[UPSTREAM_KEY] = UpstreamPool(app[DEPLOYMENT_KEY].gateway.connect_timeout_s)
    app[POOLS_KEY].start_health_checks(app[SESSION_KEY])


async def _stop(app: web.Application) -> None:
    await app[POOLS_KEY].stop()
    app[UPSTREAM_KEY].close()
    await app[SESSION_KEY].close()


# -- small endpoints -----------------------------------------------------------------------------
async def models(request: web.Request) -> web.Response:
    deployment = request.app[DEPLOYMENT_KEY]
    created = int(time.time())
    names = [deployment.gateway.model_name] + [e.model for e in deployment.experts]
    data = [{"id": n, "object": "model", "created": created, "owned_by": "expert-router"} for n in names]
    return web.json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    pools = request.app[POOLS_KEY]
    experts = {
        str(c): {"model": p.expert.model, "healthy_replicas": len(p.healthy()), "replicas": len(p.replicas),
                 "inflight": p.inflight}
        for c, p in sorted(pools.by_cluster.items())
    }
    ok = any(e["healthy_replicas"] for e in experts.values())
    return web.json_response({"status": "ok" if ok else "unavailable", "experts": experts}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    for cluster, pool in request.app[POOLS_KEY].by_cluster.items():
        metrics.inflight.labels(str(cluster)).set(pool.inflight)
    return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


# -- generation ----------------------------------------------------------------------------------
async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    app = request.app
    endpoint = "chat" if chat else "completions"
    try:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(f"the request body is larger than {app[DEPLOYMENT_KEY].gateway.max_body_bytes} bytes",
                             status=413) from None
        # Routing time starts once the whole request is here: waiting for the client's bytes is not
        # the gateway's work (a direct connection waits for them just the same).
        t_received = time.perf_counter()
        client = parse_request(raw, chat)
        order, routed = _clusters_to_try(app, client)
    except BadRequest as exc:
        app[METRICS_KEY].requests.labels(endpoint, "", str(exc.status)).inc()
        return error_response(exc.status, str(exc), code=exc.code, param=exc.param)
    t_classified = time.perf_counter()
    app[METRICS_KEY].classify_seconds.observe(t_classified - t_received)
    try:
        response = await _forward(request, client, order, routed, t_received, t_classified)
    except Exception:  # a bug, not the client's fault: say so in the API's own words, keep the trace in the log
        log.exception("unexpected error while forwarding")
        response = error_response(500, "internal error in the gateway; see its log", "server_error")
    app[METRICS_KEY].requests.labels(endpoint, response.headers.get("X-Expert-Cluster", ""), str(response.status)).inc()
    return response


def _clusters_to_try(app: web.Application, client: ClientRequest) -> tuple[list[int], int]:
    """The clusters to try in order, and the one the request was routed to."""
    deployment, pools = app[DEPLOYMENT_KEY], app[POOLS_KEY]
    if client.model is not None and client.model != deployment.gateway.model_name:
        cluster = pools.by_model.get(client.model)
        if cluster is None:
            known = [deployment.gateway.model_name, *pools.by_model]
            raise BadRequest(f"The model `{client.model}` does not exist; this gateway serves {known}",
                             status=404, code="model_not_found", param="model")
        return [cluster], cluster  # a named expert: no routing, no fail-over to another model
    routes = app[CLASSIFIER_KEY].route(client.text)
    ranked = routes.ranked(0).tolist()
    if deployment.gateway.fallback == "none":
        ranked = ranked[:1]
    return [c for c in ranked if c in pools.by_cluster], ranked[0]


async def _forward(request: web.Request, client: ClientRequest, order: list[int], routed: int,
                   t_received: float, t_classified: float) -> web.StreamResponse:
    app = request.app
    settings, pools, metrics = app[DEPLOYMENT_KEY].gateway, app[POOLS_KEY], app[METRICS_KEY]
    path = "/v1/chat/completions" if client.chat else "/v1/completions"
    notes: list[str] = []
    attempts = 0
    if not order:
        notes.append(f"cluster {routed} has no expert")
    for cluster in order:
        pool = pools.by_cluster[cluster]
        replicas = pool.healthy()
        if not replicas:
            notes.append(f"cluster {cluster} has no healthy replica")
            continue
        client.body["model"] = pool.expert.model
        payload = orjson.dumps(client.body)
        try:
            async with pool.slot():
                for replica in replicas[: settings.max_attempts - attempts]:
                    attempts += 1
                    fallback = None if cluster == routed and not notes else f"{routed}->{cluster}; " + "; ".join(notes)
                    attempt = Attempt(routed, cluster, pool, replica, t_received, t_classified,
                                      time.perf_counter(), fallback)
                    try:
                        return await _try_replica(request, client, attempt, path, payload)
                    except UpstreamFailed as exc:
                        replica.record_failure(settings.failures_to_down, str(exc))
                        metrics.upstream_failures.labels(replica.url, exc.kind).inc()
                        notes.append(f"{replica.url} failed ({exc})")
        except Saturated:
            return error_response(
                429, f"expert {pool.expert.model} (cluster {cluster}) has {settings.max_inflight_per_expert} "
                     f"requests in flight and no slot freed up within {settings.queue_timeout_s:g} s",
                headers={"Retry-After": str(max(1, round(settings.queue_timeout_s))),
                         "X-Expert-Cluster": str(cluster)},
            )
        if attempts >= settings.max_attempts:
            break
    message = "no expert could take the request: " + ("; ".join(notes) or "no experts configured")
    return error_response(503, message, "service_unavailable", headers={"Retry-After": "1"})


async def _try_replica(request: web.Request, client: ClientRequest, attempt: Attempt, path: str,
                       payload: bytes) -> web.StreamResponse:
    """Send to one replica. Raises UpstreamFailed while nothing has reached the client yet.

    Streaming or not, the request goes over a pooled upstream connection (see `gateway.upstream`):
    a whole answer is buffered and relayed as one body, a stream is relayed as it arrives.
    """
    app = request.app
    settings, metrics, pool = app[DEPLOYMENT_KEY].gateway, app[METRICS_KEY], app[UPSTREAM_KEY]
    replica = attempt.replica
    metrics.routing_seconds.observe(attempt.t_sent - attempt.t_received)
    message = pool.request_bytes(replica.url, path, payload, client.stream)
    connection: UpstreamConnection | None = None
    replica.inflight += 1
    try:
        try:
            async with asyncio.timeout(settings.first_token_timeout_s if client.stream else settings.request_timeout_s):
                connection = await _open(pool, replica.url, message)
                if connection.status != 200 or not client.stream:
                    await connection.done
                    body = b"".join(connection.buffer)
                    if connection.status >= 500:
                        raise UpstreamFailed("status", f"HTTP {connection.status} {body[:200].decode('utf-8', 'replace')}")
                    replica.record_success()  # a 4xx is the client's problem: relay it as it is
                    return web.Response(status=connection.status, body=body, headers={
                        **attempt.headers(), "Content-Type": connection.content_type.decode() or "application/json"})
                await connection.first_body
                if not connection.buffer:
                    raise UpstreamFailed("empty", "the stream closed before its first token")
        except TimeoutError:
            raise UpstreamFailed("timeout", "no first token within the timeout" if client.stream
                                 else "no answer within the request timeout") from None
        except UpstreamError as exc:
            raise UpstreamFailed("connect", str(exc)) from None
        replica.record_success()
        return await _relay(request, connection, attempt, settings.idle_timeout_s)
    finally:
        replica.inflight -= 1
        if connection is not None:
            pool.release(replica.url, connection)  # closes it unless the answer ended cleanly


async def _open(pool: UpstreamPool, url: str, message: bytes) -> UpstreamConnection:
    """Send `message` and wait for the response headers. A kept-alive connection that the server had
    closed in the meantime is not a failure of the replica: the request is sent again on a fresh one."""
    for fresh in (False, True):
        connection = await pool.acquire(url, fresh=fresh)
        connection.send(message)
        try:
            await connection.headers_done
            return connection
        except UpstreamError:
            pool.release(url, connection)
            if fresh or not connection.reused:
                raise
    raise AssertionError("unreachable")


async def _relay(request: web.Request, connection: UpstreamConnection, attempt: Attempt,
                 idle_timeout_s: float) -> web.StreamResponse:
    """Relay SSE bytes as they arrive. From here on a failure becomes an error event, then [DONE].

    The first bytes go through aiohttp's writer (which sends the headers with them); after that the
    upstream connection's parser writes each chunk to the client's socket itself (`sink`).
    """
    response = web.StreamResponse(headers={**SSE_HEADERS, **attempt.headers()})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    transport = request.transport
    watchdog = _IdleWatchdog(connection, idle_timeout_s)
    first = b"".join(connection.buffer)
    connection.buffer.clear()
    tail = first[-16:]
    chunks = 1
    paused = False

    def resume_when_drained() -> None:
        nonlocal paused
        if connection.closed or transport is None or transport.is_closing():
            connection.close()
        elif transport.get_write_buffer_size() > WRITE_FAST_LIMIT // 2:
            loop.call_later(0.005, resume_when_drained)
        elif connection.transport is not None:
            paused = False
            connection.transport.resume_reading()

    def sink(data: bytes) -> None:
        nonlocal tail, chunks, paused
        watchdog.last = loop.time()
        chunks += 1
        tail = data[-16:] if len(data) >= 16 else (tail + data)[-16:]
        if transport is None or transport.is_closing():
            connection.close()  # the client is gone: stop the upstream at once
            return
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        if not paused and transport.get_write_buffer_size() > WRITE_FAST_LIMIT and connection.transport is not None:
            paused = True  # a slow client: stop reading upstream until its socket drains
            connection.transport.pause_reading()
            loop.call_later(0.005, resume_when_drained)

    error: str | None = None
    try:
        await response.write(first)
        if connection.buffer:  # arrived while the headers were being written
            for data in connection.buffer:
                sink(data)
            connection.buffer.clear()
        connection.sink = sink
        await connection.done
    except UpstreamError as exc:
        if transport is None or transport.is_closing():
            raise asyncio.CancelledError from None  # the client is gone: nothing left to tell it
        error = "the expert stopped answering (idle timeout)" if watchdog.fired else f"the expert's stream broke off: {exc}"
    finally:
        connection.sink = None
        watchdog.cancel()
        request.app[METRICS_KEY].streamed_chunks.inc(chunks)
    if error is not None:
        log.warning("stream from %s ended early: %s", attempt.replica.url, error)
        await response.write(b"data: " + orjson.dumps(error_body(502, error, "upstream_error")) + b"\n\n" + DONE)
    elif not tail.rstrip().endswith(b"[DONE]"):
        await response.write(DONE)  # some servers just close the stream; clients get [DONE] either way
    await response.write_eof()
    return response


class _IdleWatchdog:
    """Aborts the upstream connection after `timeout` seconds without data.

    One timer per stream, re-armed only when it fires: the relay merely stores a timestamp per
    chunk, which costs far less than rescheduling a timeout on every chunk.
    """

    def __init__(self, connection: UpstreamConnection, timeout: float):
        self.loop = asyncio.get_running_loop()
        self.connection = connection
        self.timeout = timeout
        self.last = self.loop.time()
        self.fired = False
        self._handle = self.loop.call_later(timeout, self._check)

    def _check(self) -> None:
        idle = self.loop.time() - self.last
        if idle >= self.timeout:
            self.fired = True
            self.connection.close()
        else:
            self._handle = self.loop.call_later(self.timeout - idle, self._check)

    def cancel(self) -> None:
        self._handle.cancel()
