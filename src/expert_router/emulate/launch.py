"""One process, several emulated engines, each on its own port: eight experts need not be eight processes.

Every instance is an independent engine (its own GPU or TP group, batch, KV cache, metrics); they only
share the process's event loop. The ports are consecutive from the first one given.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiohttp import web

from expert_router.collector import settle_after_start_up
from expert_router.emulate.config import EngineConfig
from expert_router.emulate.engine import Engine
from expert_router.emulate.metrics import EngineMetrics
from expert_router.emulate.realtime import RealtimeDriver
from expert_router.emulate.server import build_app
from expert_router.errors import UserError
from expert_router.http import install_uvloop


@dataclass(frozen=True)
class Instance:
    config: EngineConfig
    port: int
    names: tuple[str, ...]


def plan(config: EngineConfig, instances: int, port: int, names: list[str]) -> list[Instance]:
    """`instances` engines on ports port, port+1, ...; `{i}` in a served name becomes the instance index
    (without it, every instance answers to the same names: replicas, as C's two TP4 engines).

    Each instance draws its answer lengths from its own seed (seed + i), as separate servers would.
    """
    return [
        Instance(replace(config, seed=config.seed + i), port + i, tuple(n.replace("{i}", str(i)) for n in names))
        for i in range(instances)
    ]


def app_for(instance: Instance, dilation: float) -> web.Application:
    engine = Engine(instance.config)
    metrics = EngineMetrics(instance.names[0], dilation)
    return build_app(RealtimeDriver(engine, dilation, metrics), metrics, instance.names)


async def serve_all(
    instances: list[Instance], host: str, dilation: float, on_started: Callable[[], None] | None = None
) -> None:
    """Serve every instance until SIGINT or SIGTERM.

    Every port is bound and listening before the first is served: each site's start yields to the event
    loop, and a client that found the first port answering then had the next ones refuse it.
    """
    listeners: list[socket.socket] = []
    runners = []
    try:
        listeners.extend(listen(host, instance.port) for instance in instances)
        for instance, listener in zip(instances, listeners, strict=True):
            runner = web.AppRunner(
                app_for(instance, dilation),
                handler_cancellation=True,
                access_log=None,
                shutdown_timeout=2.0,
                auto_decompress=False,  # bodies are decoded by `http.request_body`
            )
            await runner.setup()
            runners.append(runner)
            await web.SockSite(runner, listener).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        settle_after_start_up()  # a full collection would hold every engine's step timer
        if on_started is not None:
            on_started()
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for listener in listeners:
            listener.close()  # those never served, or when a later port could not be bound


def listen(host: str, port: int) -> socket.socket:
    """A socket bound and listening on host:port (connections wait in its backlog until served)."""
    try:
        return socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=4096
        )
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def serve(instances: list[Instance], host: str, dilation: float, on_started: Callable[[], None] | None = None) -> None:
    if dilation <= 0:
        raise UserError("--time-dilation must be positive")
    install_uvloop()
    asyncio.run(serve_all(instances, host, dilation, on_started))
