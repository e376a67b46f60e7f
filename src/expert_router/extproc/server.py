"""Running the external processor: a gRPC server (ext_proc and gRPC health) and a /metrics port.

On SIGTERM or SIGINT the health service turns NOT_SERVING first (Envoy's gRPC health checks and a
Kubernetes gRPC readiness probe see it), then the server stops taking streams and gives open ones
`grace_s` to finish: each stream is one request's headers and body, milliseconds of work.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import start_http_server

from expert_router.extproc.decision import Router
from expert_router.extproc.metrics import ExtprocMetrics
from expert_router.extproc.processor import ExternalProcessor

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest ext_proc message taken: a buffered request body and its framing. Envoy buffers bodies up to
8 MiB (deploy/envoy/envoy.yaml); at gRPC's default of 4 MiB, a 5 MiB body came back from Envoy as a
bare 500 ("Received message larger than max")."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 9002
    metrics_port: int | None = 9102
    """Prometheus /metrics on this port (None: no metrics server)."""
    grace_s: float = 5.0


def serve(router: Router, options: ServeOptions, on_started: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT. `on_started` gets the gRPC port actually bound."""
    asyncio.run(_serve(router, options, on_started))


async def _serve(router: Router, options: ServeOptions, on_started: Callable[[int], None] | None) -> None:
    metrics = ExtprocMetrics()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    pb_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(router, metrics), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        port = server.add_insecure_port(f"{options.host}:{options.port}")
    except RuntimeError as exc:  # grpcio's way of saying a port is taken, in newer releases (older ones return 0)
        raise OSError(f"cannot listen on {options.host}:{options.port}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {options.host}:{options.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    if options.metrics_port is not None:  # last: its answering tells a waiting test that gRPC is up too
        try:
            start_http_server(options.metrics_port, addr=options.host, registry=metrics.registry)
        except OSError as exc:  # said as the flag (it said only "Address already in use"), gRPC stopped cleanly
            await server.stop(None)
            where = f"{options.host}:{options.metrics_port}"
            raise OSError(f"--metrics-port: cannot listen on {where}: {exc.strerror}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if on_started is not None:
        on_started(port)
    await stop.wait()
    await health.enter_graceful_shutdown()
    await server.stop(options.grace_s)


def announce(host: str, metrics_port: int | None) -> Callable[[int], None]:
    def _announce(port: int) -> None:
        metrics = f", metrics on http://{host}:{metrics_port}/metrics" if metrics_port is not None else ""
        print(f"ext_proc ready on {host}:{port} (gRPC){metrics}", file=sys.stderr, flush=True)

    return _announce
