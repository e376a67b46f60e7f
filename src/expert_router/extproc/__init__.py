"""The classifier as an Envoy external processor: one routing core, a second front door.

`decision` is the pure core (bytes in, `Route` or `Reply` out) and needs nothing beyond the gateway's
own dependencies; `messages`, `processor` and `server` speak Envoy's ext_proc gRPC protocol and need the
`extproc` extra (grpcio, grpcio-health-checking, xds-protos), so they are imported only when used.
`envoy` renders the project's Envoy configuration for a deployment and finds the Envoy binary.
"""

from expert_router.extproc.decision import (
    CLUSTER_HEADER,
    MODEL_HEADER,
    Decision,
    Reply,
    Route,
    Router,
)

__all__ = ["CLUSTER_HEADER", "MODEL_HEADER", "Decision", "Reply", "Route", "Router"]
