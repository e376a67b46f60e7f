"""Running the gateway's server on a socket until a signal, then draining, as a rolling update needs.

Draining: the listener closes (new connections are refused, so a readiness probe fails and nginx or a
Service moves on), idle kept-alive connections close, a request that still arrives on an open one gets
503 (/health: `{"status": "draining"}`; /metrics is still answered), and requests in flight, streams
included, run to their end and are sent in full before their connections close. After
`drain_timeout_s`, or at a second signal, what is left is cancelled and the process exits. The same
contract as `expert_router.http.serve_until_stopped` gives the project's aiohttp servers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from expert_router.gateway.server import App, Connection, Server
from expert_router.http import announce_then_wait_for_signal, wait_until_idle

SWEEP_S = 1.0
"""How often connections idle past the keep-alive timeout are looked for."""


async def serve_until_stopped(
    app: App,
    host: str,
    port: int,
    reuse_port: bool = False,
    on_started: Callable[[int], Awaitable[None] | None] | None = None,
    drain_timeout_s: float = 2.0,
) -> None:
    """Serve `app` on `host:port` until SIGINT or SIGTERM, then drain (the module's docstring).
    `on_started` is told the port listened on: the one asked for, or the one given for port 0."""
    server = Server(app)
    loop = asyncio.get_running_loop()
    await app.start()
    try:
        listener = await loop.create_server(
            lambda: Connection(server), host, port, reuse_port=reuse_port or None, backlog=4096
        )
        sweeper = asyncio.create_task(_sweep_forever(server))
        bound = listener.sockets[0].getsockname()[1]
        await announce_then_wait_for_signal(None if on_started is None else lambda: on_started(bound))
        await _drain(server, listener, drain_timeout_s)
        sweeper.cancel()
    finally:
        await app.stop()


async def _sweep_forever(server: Server) -> None:
    while True:
        await asyncio.sleep(SWEEP_S)
        server.sweep()


async def _drain(server: Server, listener: asyncio.Server, drain_timeout_s: float) -> None:
    server.draining = True
    listener.close()
    server.sweep()  # idle kept-alive connections close now; busy ones after their answer
    server.settle()
    # Until every connection has closed, not only every handler ended: a handler ends once its answer is
    # written, and the end of a slow client's stream may still be on its way (cut off, it was lost).
    await wait_until_idle(server.gone, drain_timeout_s)
    tasks = [c.task for c in server.connections if c.task is not None]
    for connection in list(server.connections):
        connection.close(abort=True)  # what is left is cut off, and its handler cancelled
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await listener.wait_closed()
