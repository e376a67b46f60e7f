"""The External Processing service: one gRPC stream per HTTP request, answered phase by phase.

Envoy sends the request headers, then (in BUFFERED body mode) the whole request body; we answer
each. The spine of one stream: headers -> remember method and path (answer GET /v1/models directly)
-> body -> `Router.decide` -> headers + rewritten body + `clear_route_cache`, or an immediate reply.
Response phases are not asked for (the config skips them), so the expert's tokens flow through
Envoy untouched; if a config does send them, they are passed on unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from expert_router.extproc import messages
from expert_router.extproc.decision import ROUTING_HEADERS, Decision, Reply, Route, Router, routed_path
from expert_router.extproc.metrics import ExtprocMetrics

MODELS_PATH = "/v1/models"


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, router: Router, metrics: ExtprocMetrics):
        self.router = router
        self.metrics = metrics

    async def Process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Envoy's bidirectional stream for one HTTP request."""
        self.metrics.streams.inc()
        try:
            method = path = ""
            encoding: str | None = None
            async for request in requests:
                phase = request.WhichOneof("request")
                if phase == "request_headers":
                    headers = messages.header_map(request.request_headers)
                    method, path = headers.get(":method", ""), headers.get(":path", "")
                    encoding = headers.get("content-encoding")
                    spoofed = [name for name in ROUTING_HEADERS if name in headers]
                    yield self.on_headers(method, path, request.request_headers.end_of_stream, spoofed)
                elif phase == "request_body":
                    yield self.on_body(method, path, request.request_body.body, encoding)
                elif phase in messages.PHASE_REPLIES:
                    yield messages.carry_on(phase)
        finally:
            self.metrics.streams.dec()

    def on_headers(self, method: str, path: str, end_of_stream: bool, spoofed: list[str]) -> Any:
        """Headers: most requests just go on to the body phase; a few are answered here. Routing
        headers the client sent are removed (`spoofed`)."""
        if method == "GET" and path.split("?", 1)[0].rstrip("/") == MODELS_PATH:
            return messages.reply(self.router.models())
        if end_of_stream and method == "POST" and routed_path(path) is not None:
            decision = self._decide(path, b"")  # no body will come: say why the request is bad
            if isinstance(decision, Route):
                return messages.route_without_body(decision)
            if isinstance(decision, Reply):
                return messages.reply(decision)
        if spoofed:
            return messages.strip_headers(spoofed)
        return messages.carry_on("request_headers")

    def on_body(self, method: str, path: str, body: bytes, encoding: str | None = None) -> Any:
        decision = self._decide(path, body, encoding) if method == "POST" else None
        if isinstance(decision, Route):
            return messages.route(decision, body)
        if isinstance(decision, Reply):
            return messages.reply(decision)
        return messages.carry_on("request_body")

    def _decide(self, path: str, body: bytes, encoding: str | None = None) -> Decision:
        decision = self.router.decide(path, body, encoding)
        if isinstance(decision, Route):
            if decision.routed_by == "classifier":
                self.metrics.classify_seconds.observe(decision.classify_s)
            self.metrics.decisions.labels(str(decision.cluster), decision.routed_by).inc()
        elif isinstance(decision, Reply):
            self.metrics.decisions.labels("", decision.reason).inc()
        return decision
