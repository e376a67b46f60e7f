"""HTTP pieces shared by every server and client of the project: OpenAI-style errors, `Server-Timing`,
running an app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from aiohttp import web

from expert_router.encoding import decode_body
from expert_router.errors import ClientError

log = logging.getLogger("expert_router.http")

MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest request body the project's aiohttp servers (the emulated engine, the synthetic expert)
take, as sent and once decoded."""

ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(
    status: int, message: str, type_: str | None = None, code: str | int | None = None, param: str | None = None
) -> dict[str, dict[str, object]]:
    """The body OpenAI's API (and vLLM) send with an error: {"error": {"message", "type", "param", "code"}}."""
    return {
        "error": {
            "message": message,
            "type": type_ or ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": code if code is not None else status,
        }
    }


def error_response(
    status: int,
    message: str,
    type_: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(status, message, type_, code, param)),
        content_type="application/json",
        headers=headers,
    )


def client_error_response(error: ClientError) -> web.Response:
    """The answer an aiohttp server gives for a `ClientError` (the gateway's own server writes its own)."""
    return error_response(error.status, str(error), error.error_type, error.code, error.headers, error.param)


async def request_body(request: web.Request) -> bytes:
    """A request's body, decoded from its `Content-Encoding` as the gateway decodes it (raises
    BadRequest: 415, 400, 413). The servers run with aiohttp's own decoding off (`serve_until_stopped`,
    `emulate.launch`): it knew no zstd, and its parser answered such a body with a plain-text 400
    before any handler or middleware ran."""
    body = await request.read()
    encoding = request.headers.get("Content-Encoding")
    return body if encoding is None else decode_body(body, encoding.encode("latin-1"), MAX_BODY_BYTES)


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


class Drain:
    """Requests in flight, and whether the server is draining (SIGTERM came: finish, take nothing new)."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()


def event_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """An SSE answer (not yet prepared). To an HTTP/1.0 client it goes unframed, so the connection's close
    is its end: one that asked for keep-alive was left open after [DONE], and its client waited for more
    until aiohttp's keep-alive timeout (75 s)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers})
    if request.version < (1, 1):
        response.force_close()
    return response


@web.middleware
async def json_errors(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """The errors aiohttp makes itself (an unknown path's 404, a wrong method's 405 with its Allow, a body
    over the size limit's 413, a body its Content-Encoding does not decode) as OpenAI-style JSON, like
    every other answer of the project's servers; they were plain text, and the last a 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        text = exc.text or exc.reason
        message = text.split(": ", 1)[1] if text.startswith(f"{exc.status}: ") else text
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, message, headers=allow)
    except web.RequestPayloadError as exc:
        return error_response(400, f"the request body cannot be decoded: {exc.__cause__ or exc}")
    except (asyncio.CancelledError, ConnectionResetError):
        raise  # the client went away: nothing to answer
    except Exception:  # a bug: aiohttp's own answer is a plain-text 500, "Server got itself in trouble"
        if request.writer.output_size > 0:
            raise  # an answer has begun (a stream): no second head; aiohttp closes the connection
        log.exception("unexpected error while answering %s %s", request.method, request.path)
        return error_response(500, "internal error; see the server's log", "server_error")


DRAIN_KEY = web.AppKey("drain", Drain)
DRAIN_EXEMPT = frozenset({"/metrics"})
"""Paths still answered while draining (a last scrape); /health answers 503 `draining`."""


@web.middleware
async def drain_middleware(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Counts requests in flight; while draining, turns new ones away (they arrived on connections that
    were open before the listener closed) so that a client or proxy retries elsewhere."""
    drain = request.app[DRAIN_KEY]
    if drain.draining and request.path not in DRAIN_EXEMPT:
        headers = {"Connection": "close"}
        if request.path == "/health":
            return web.json_response({"status": "draining"}, status=503, headers=headers)
        return error_response(503, "this instance is shutting down; retry the request", headers=headers)
    drain.inflight += 1
    drain.idle.clear()
    try:
        return await handler(request)
    finally:
        drain.inflight -= 1
        if drain.inflight == 0:
            drain.idle.set()


async def serve_until_stopped(
    app: web.Application,
    host: str,
    port: int,
    reuse_port: bool = False,
    on_started: Callable[[], Awaitable[None] | None] | None = None,
    drain_timeout_s: float = 2.0,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, then drain, as a rolling update needs.

    Draining: the listener closes (new connections are refused, so a readiness probe fails and
    nginx moves on to the next instance), idle kept-alive connections close, a request that still
    arrives on an open one gets 503 (/health: `{"status": "draining"}`), and requests in flight,
    streams included, run to their end. After `drain_timeout_s`, or at a second signal, what is left
    is cancelled and the server exits.
    """
    drain = Drain()
    app[DRAIN_KEY] = drain
    app.middlewares.insert(0, drain_middleware)
    # The drain below is the grace period; after it, aiohttp's own shutdown only cancels what is left.
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1, auto_decompress=False
    )  # bodies are decoded by `request_body`
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=4096)
    await site.start()
    try:
        await announce_then_wait_for_signal(on_started)
        drain.draining = True
        await site.stop()
        if runner.server is not None:
            runner.server.pre_shutdown()  # close idle kept-alive connections; busy ones close after their answer
        await wait_until_idle(drain.idle, drain_timeout_s)
    finally:
        await runner.cleanup()


def on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, callback)


async def announce_then_wait_for_signal(on_started: Callable[[], Awaitable[None] | None] | None) -> None:
    """Call `on_started` (the server is listening), then wait for SIGINT or SIGTERM."""
    stop = asyncio.Event()
    on_signals(stop.set)
    if on_started is not None:
        result = on_started()
        if asyncio.iscoroutine(result):
            await result
    await stop.wait()


async def wait_until_idle(idle: asyncio.Event, timeout_s: float) -> None:
    """A drain's grace period: until `idle` is set, a second signal arrives, or `timeout_s` passes."""
    hurry = asyncio.Event()
    on_signals(hurry.set)
    waits = [asyncio.ensure_future(idle.wait()), asyncio.ensure_future(hurry.wait())]
    await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()


def run_server(main: Coroutine[Any, Any, None]) -> None:
    """Run a server's main coroutine to its end, on uvloop where it is installed."""
    install_uvloop()
    asyncio.run(main)


def run_app(
    app: web.Application,
    host: str,
    port: int,
    reuse_port: bool = False,
    on_started: Callable[[], Awaitable[None] | None] | None = None,
    drain_timeout_s: float = 2.0,
) -> None:
    run_server(serve_until_stopped(app, host, port, reuse_port, on_started, drain_timeout_s))
