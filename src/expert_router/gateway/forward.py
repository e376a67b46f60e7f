"""Forwarding with fail-over: try the planned clusters' replicas until one starts answering.

Up to the first byte of an answer, a failure (refused, reset, 5xx, no first token in time, an empty
stream) marks the replica and moves on to the next healthy replica of the expert, then to the next
cluster of the plan, within `max_attempts`. A whole (non-streamed) answer not done within the request
timeout is a 504, not sent again: it is slow, not failed. Each expert admits `max_inflight_per_expert`
requests at a time; a request that waits longer than the queue timeout for its routed expert's slot
gets 429, and a full fallback expert is passed over. Once bytes flow, the relay owns the stream.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from expert_router.config import GatewaySettings
from expert_router.errors import ConnectionFailed, ReplicaFailed, Saturated, Unavailable
from expert_router.gateway.messages import Request, Response
from expert_router.gateway.metrics import GatewayMetrics
from expert_router.gateway.relay import Relay
from expert_router.gateway.replicas import Expert, Experts, Replica
from expert_router.gateway.requests import ClientRequest, body_naming
from expert_router.gateway.routing import Plan
from expert_router.http import format_server_timing
from expert_router.wire import ConnectionPool, HttpConnection, clock


@dataclass
class Timing:
    """When a request passed each step of the gateway (`wire.clock()` seconds)."""

    received: float
    classified: float
    admitted: float = 0.0
    sent: float = 0.0

    def durations(self) -> dict[str, float]:
        """Server-Timing's parts: classify, queue (admission), connect (connection and write), route (all)."""
        return {
            "route": self.sent - self.received,
            "classify": self.classified - self.received,
            "queue": self.admitted - self.classified,
            "connect": self.sent - self.admitted,
        }


@dataclass
class Attempt:
    """One try of one replica: what the response headers report."""

    plan: Plan
    cluster: int
    expert: Expert
    replica: Replica
    timing: Timing
    notes: list[str] = field(default_factory=list)

    def stream_headers(self, connection: HttpConnection) -> dict[str, str]:
        """`headers()` of a stream starting on `connection` (the relay calls it from the read callback)."""
        self.timing.sent = connection.sent_at
        return self.headers()

    def headers(self) -> dict[str, str]:
        headers = {
            "X-Expert-Cluster": str(self.cluster),
            "X-Expert-Model": self.expert.model,
            "X-Expert-Routed-Cluster": str(self.plan.routed),
            "Server-Timing": format_server_timing(self.timing.durations()),
        }
        if self.cluster != self.plan.routed or self.notes:
            note = f"{self.plan.routed}->{self.cluster}; " + "; ".join(self.notes)
            headers["X-Expert-Fallback"] = " ".join(note.encode("ascii", "replace").decode().split())[:1000]
        return headers


class Forwarder:
    """Sends planned requests to replicas; shared by every request of one gateway process."""

    def __init__(
        self, settings: GatewaySettings, experts: Experts, metrics: GatewayMetrics, connections: ConnectionPool
    ):
        self.settings = settings
        self.experts = experts
        self.metrics = metrics
        self.connections = connections

    async def forward(self, request: Request, client: ClientRequest, plan: Plan, timing: Timing) -> Response:
        """The answer of the first replica that starts one. Raises Saturated (429) or Unavailable (503).

        Replicas are ranked once a slot is taken, not before: other requests went out while this one
        waited, and ranked before the wait, a burst all went to the replica that was idle when it
        arrived. A fallback expert that is full is passed over for the next cluster of the plan; only
        the routed expert's own queue answers 429 (back-pressure on the expert the prompt belongs to)."""
        notes = [] if plan.order else [f"cluster {plan.routed} has no expert"]
        attempts = 0
        saturated: Saturated | None = None
        for cluster in plan.order:
            expert = self.experts.by_cluster[cluster]
            if not expert.any_healthy():
                notes.append(f"cluster {cluster} has no healthy replica")
                continue
            payload = body_naming(client, expert.model)
            try:
                async with expert.slot():
                    timing.admitted = clock()
                    replicas = expert.healthy()
                    if not replicas:
                        notes.append(f"cluster {cluster}'s replicas went down while the request waited")
                    for replica in replicas[: self.settings.max_attempts - attempts]:
                        attempts += 1
                        attempt = Attempt(plan, cluster, expert, replica, timing, list(notes))
                        try:
                            return await self._try(request, client, attempt, payload)
                        except ReplicaFailed as exc:
                            replica.record_failure(self.settings.failures_to_down, str(exc))
                            self.metrics.upstream_failures.labels(replica.url, exc.kind).inc()
                            notes.append(f"{replica.url} failed ({exc})")
            except Saturated as exc:
                if cluster == plan.routed:
                    raise
                saturated = saturated or exc
                notes.append(f"cluster {cluster} is full")
            if attempts >= self.settings.max_attempts:
                break
        if saturated is not None:  # every expert left was full: the client should come back, as after a 429
            raise Saturated(f"{saturated}; before it: " + "; ".join(notes), headers=saturated.headers)
        raise Unavailable(
            "no expert could take the request: " + ("; ".join(notes) or "no experts configured"),
            headers={"Retry-After": "1"},
        )

    async def _try(self, request: Request, client: ClientRequest, attempt: Attempt, payload: bytes) -> Response:
        """Send to one replica. Raises ReplicaFailed while nothing has reached the client yet."""
        replica, settings = attempt.replica, self.settings
        path = "/v1/chat/completions" if client.chat else "/v1/completions"
        message = self.connections.post_json(replica.url, path, payload, client.stream)
        relay = None
        if client.stream:
            chunks = self.metrics.streamed_chunks.inc
            relay = Relay(request, replica.url, attempt.stream_headers, settings.idle_timeout_s, chunks)
        connection: HttpConnection | None = None
        replica.sent()
        try:
            try:
                async with asyncio.timeout(
                    settings.first_token_timeout_s if client.stream else settings.request_timeout_s
                ):
                    if relay is None:
                        connection = await self.connections.open(replica.url, message)
                    else:
                        connection = await self.connections.open(replica.url, message, relay.first, relay.bind)
                    attempt.timing.sent = connection.sent_at
                    self.metrics.routing_seconds.observe(attempt.timing.sent - attempt.timing.received)
                    await _first_bytes(connection, relay)
            except TimeoutError:
                if relay is None or not relay.started:
                    raise _timed_out(relay, settings) from None
            except ConnectionFailed as exc:
                if relay is None or not relay.started:
                    raise ReplicaFailed("connect", str(exc)) from None
            # Past here the stream may have started in the read callback just as the timeout fired or
            # the connection broke: it is the relay's now, which ends it with an error event.
            if connection is None:  # it started as the timeout cut the wait for its headers short
                assert relay is not None and relay.connection is not None
                connection = relay.connection
            return await self._answer(client, attempt, connection, relay)
        finally:
            replica.inflight -= 1
            if relay is not None:
                relay.finish()  # done already, unless cancelled before the relay ran
                if connection is None and relay.started:  # cancelled as the stream started: open() left it
                    connection = relay.connection
            if connection is not None:
                self.connections.release(replica.url, connection)  # closes it unless the answer ended cleanly

    async def _answer(
        self, client: ClientRequest, attempt: Attempt, connection: HttpConnection, relay: Relay | None
    ) -> Response:
        """The replica has begun to answer: relay the stream it started, or pass a whole answer (or a 4xx) on."""
        attempt.replica.record_success()
        if attempt.cluster != attempt.plan.routed:
            self.metrics.fallbacks.labels(str(attempt.plan.routed), str(attempt.cluster)).inc()
        if relay is None or not relay.started:
            return Response(
                connection.status,
                b"".join(connection.buffer),
                attempt.headers(),
                connection.content_type.decode("latin-1") or "application/json",
            )
        return await relay.run()


def _timed_out(relay: Relay | None, settings: GatewaySettings) -> Exception:
    """What a timeout before anything reached the client means. A whole answer still being made (a server
    sends its head with the answer) is slow, not dead, which health checks tell: a 504, not fail-over
    (sent again elsewhere it was made twice, and again up to max_attempts, and replicas that were only
    slow were marked down for it). A stream with no first token fails over."""
    if relay is None:
        return Unavailable(f"no whole answer within the request timeout ({settings.request_timeout_s:g} s)", status=504)
    return ReplicaFailed("timeout", "no first token within the timeout")


async def _first_bytes(connection: HttpConnection, relay: Relay | None) -> None:
    """Wait until the answer has begun (a stream: its relay started in the read callback) or ended (a
    whole answer or an error status)."""
    if connection.status != 200 or relay is None:
        await connection.done
        if connection.status >= 500:
            body = b"".join(connection.buffer)[:200].decode("utf-8", "replace")
            raise ReplicaFailed("status", f"HTTP {connection.status} {body}")
        return  # a 4xx is the client's problem: relayed as it is
    await connection.first_body
    if not relay.started:
        raise ReplicaFailed("empty", "the stream closed before its first token")
