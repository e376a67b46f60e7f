"""HTTP pieces shared by every server and client of the project: OpenAI-style errors, `Server-Timing`,
running an app."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from expert_router.errors import ClientError

ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, type_: str | None = None, code: str | int | None = None,
               param: str | None = None) -> dict[str, Any]:
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


def client_error_response(exc: ClientError) -> web.Response:
    """The answer a `ClientError` stands for."""
    return error_response(exc.status, str(exc), exc.error_type, exc.code, exc.headers or None, exc.param)


def format_server_timing(durations_s: dict[str, float]) -> str:
    """`Server-Timing: name;dur=MILLISECONDS, ...` (W3C Server Timing) from seconds."""
    return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in durations_s.items())


def parse_server_timing(header: str | None) -> dict[str, float]:
    """Seconds by metric name from a `Server-Timing` header; malformed entries are skipped."""
    timings: dict[str, float] = {}
    for entry in (header or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if name and key.strip() == "dur":
                with contextlib.suppress(ValueError):
                    timings[name] = float(value.strip().strip('"')) / 1000
    return timings


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
