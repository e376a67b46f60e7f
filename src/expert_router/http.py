"""HTTP pieces shared by every server of the project: OpenAI-style errors and running an app."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, type_: str | None = None, code: str | None = None,
               param: str | None = None) -> dict:
    """The body OpenAI's API (and vLLM) send with an error: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_ or ERROR_TYPES.get(status, "server_error"), "param": param,
                      "code": code if code is not None else status}}


def error_response(
    status: int, message: str, type_: str | None = None, code: str | None = None, headers: dict[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(error_body(status, message, type_, code, param)),
        content_type="application/json", headers=headers,
    )


def install_uvloop() -> None:
    """uvloop where it is installed (Linux, macOS): a faster event loop for every server and client here."""
    if sys.platform != "win32":
        try:
            import uvloop
        except ImportError:
            return
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve_until_stopped(
    app: web.Application,
    host: str,
    port: int,
    reuse_port: bool = False,
    on_started: Callable[[], Awaitable[None] | None] | None = None,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, then shut down cleanly (open streams are closed)."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=4096)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if on_started is not None:
        result = on_started()
        if asyncio.iscoroutine(result):
            await result
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_app(app: web.Application, host: str, port: int, reuse_port: bool = False,
            on_started: Callable[[], Awaitable[None] | None] | None = None) -> None:
    install_uvloop()
    asyncio.run(serve_until_stopped(app, host, port, reuse_port, on_started))
