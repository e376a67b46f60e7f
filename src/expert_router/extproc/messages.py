"""Envoy's External Processing messages, built from routing decisions (and headers read from them).

The only module that knows the shape of `envoy.service.ext_proc.v3` protobufs, so the processor reads
as protocol steps and the decision stays plain Python. Header values are set as `raw_value` bytes,
which is what current Envoy sends and prefers.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2

from expert_router.extproc.decision import Reply, Route

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse

PHASE_REPLIES = {
    "request_headers": ("request_headers", pb.HeadersResponse),
    "response_headers": ("response_headers", pb.HeadersResponse),
    "request_body": ("request_body", pb.BodyResponse),
    "response_body": ("response_body", pb.BodyResponse),
    "request_trailers": ("request_trailers", pb.TrailersResponse),
    "response_trailers": ("response_trailers", pb.TrailersResponse),
}
"""For each phase Envoy can send: the response field that answers it, and its message type."""


def header_map(headers: Any) -> dict[str, str]:
    """An HttpHeaders' header map as a dict (keys lower case, as HTTP/2 and Envoy keep them)."""
    return {
        h.key: (h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value) for h in headers.headers.headers
    }


def carry_on(phase: str) -> Any:
    """Let Envoy go on with this phase unchanged."""
    field, message = PHASE_REPLIES[phase]
    return pb.ProcessingResponse(**{field: message()})


def strip_headers(names: list[str]) -> Any:
    """Remove headers a client sent that only the processor may set, and make Envoy match its route
    again without them (a route may already have been chosen with them)."""
    common = pb.CommonResponse(header_mutation=pb.HeaderMutation(remove_headers=names), clear_route_cache=True)
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))


def route(decision: Route, original: bytes) -> Any:
    """Answer the request body: set the routing headers, rewrite the body if it changed, and make Envoy
    pick the route again now that the headers are there (`clear_route_cache`)."""
    headers = decision.headers()
    body_mutation = None
    if decision.body != original:
        body_mutation = pb.BodyMutation(body=decision.body)
    headers["content-length"] = str(len(decision.body))
    mutation = _set_headers(headers)
    if decision.decoded:  # the body goes on decoded
        mutation.remove_headers.append("content-encoding")
    common = pb.CommonResponse(header_mutation=mutation, body_mutation=body_mutation, clear_route_cache=True)
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))


def route_without_body(decision: Route) -> Any:
    """The same for a decision taken at the headers phase (fail-open with no body to read)."""
    common = pb.CommonResponse(header_mutation=_set_headers(decision.headers()), clear_route_cache=True)
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))


def reply(decision: Reply) -> Any:
    """Envoy answers the client itself with this status and JSON body; nothing goes upstream."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=decision.status),
            headers=_set_headers({"content-type": "application/json"}),
            body=decision.body,
            details=f"expert_router_{decision.reason}",
        )
    )


def _set_headers(headers: dict[str, str]) -> Any:
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=overwrite
            )
            for k, v in headers.items()
        ]
    )
