"""HTTP/1.1 client connections whose body bytes are handled inside the socket's read callback.

A general HTTP client hands every received chunk to a reading task, which wakes, reads and passes it
on: one task switch per token, and under load the task runs well after the bytes arrived. Here a
connection is an asyncio protocol with an llhttp parser (`httptools`, uvicorn's parser) and a `sink`:
the parser's body callback hands each decoded chunk to the sink inside the event loop's read callback,
the moment the bytes came off the socket. Two users share it:

- the gateway relays each chunk straight to its client's socket (`gateway.relay`);
- the user simulator stamps each chunk with its arrival time (`loadgen.client`).

Connections are kept alive per base URL (`ConnectionPool`). Everything here is public API: no
monkey-patching of another library's internals, so the stamps cannot silently disappear.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

from expert_router.errors import ConnectionFailed

Sink = Callable[[bytes], None]
clock = time.monotonic
"""The clock of every stamp: the same in every process of a Linux machine."""


class NoCallbacks:
    """The protocol of a parser that nothing is fed to: a closed connection swaps its own parser for one
    (server and client side), since its parser holds its callbacks, a cycle for the garbage collector."""


DETACHED = httptools.HttpResponseParser(NoCallbacks())
"""The parser a closed connection keeps in place of its own."""


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        """Kept: each `get_running_loop()` is a getpid system call (CPython checks for a fork)."""
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reusable = False
        self.closed = False
        self.aborted = False
        """Closed by this side (`close()`): what was cut short was not the server's end."""
        self.reused = False
        self.sent_at = 0.0
        """When the request was handed to the socket (`clock()`)."""
        self.after_read: Callable[[], None] | None = None
        """Called once each read's bytes have gone through the parser (and the sink): a sink that
        writes elsewhere can send what one read brought in one write. Its owner sets and clears it."""
        self._reset()

    def _reset(self) -> None:
        loop = self.loop
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        """Response headers, names lower-cased."""
        self.headers_done: asyncio.Future[None] = loop.create_future()
        self.first_body: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.buffer: list[bytes] = []
        self.sink: Sink | None = None
        self.done_at = 0.0
        """When the answer's last bytes were read (`clock()`, in the read callback; 0 until then)."""
        self._before_body = True
        self._header_name = b""

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionFailed(f"invalid HTTP from the server: {exc}"))
            self.close()
        after_read = self.after_read
        if after_read is not None:
            after_read()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and not self.aborted and self._ends_at_close():
            self.on_message_complete()  # its body had no length: the server's close was its end
        self.closed = True
        self.reusable = False
        self.parser = DETACHED  # it holds this connection's callbacks: a cycle for the collector otherwise
        self._fail(ConnectionFailed("the server closed the connection" + (f": {exc}" if exc else "")))

    def _ends_at_close(self) -> bool:
        """An answer whose body is delimited by the connection's close (no Content-Length, not chunked:
        every HTTP/1.0 server's stream), begun and not yet ended. llhttp would end it at EOF, which
        httptools cannot tell it."""
        headers = self.headers
        return (
            self.headers_done.done()
            and not self.done.done()
            and b"content-length" not in headers
            and b"transfer-encoding" not in headers
            and self.status not in (204, 304)
            and self.status >= 200
        )

    def _fail(self, error: Exception) -> None:
        for future in (self.headers_done, self.first_body, self.done):
            if not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: not every request awaits every future

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    @property
    def content_type(self) -> bytes:
        return self.headers.get(b"content-type", b"")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink(body)
        else:
            self.buffer.append(body)
        if self._before_body:  # a flag, not `first_body.done()`: this runs once per token
            self._before_body = False
            if not self.first_body.done():
                self.first_body.set_result(None)

    def on_message_complete(self) -> None:
        self.done_at = clock()
        self.reusable = self.parser.should_keep_alive()
        for future in (self.first_body, self.done):
            if not future.done():
                future.set_result(None)

    # -- use -----------------------------------------------------------------------------------
    def send(self, request: bytes, sink: Sink | None = None) -> None:
        """Send one request; with `sink`, every body chunk of the answer goes to it from the first."""
        self._reset()
        self.sink = sink
        # A connection is sent a request only when new or back in the pool after a complete answer:
        # either way its parser stands at the start of a message (llhttp parses kept-alive answers
        # one after the other).
        self.reusable = False
        assert self.transport is not None
        self.transport.write(request)
        self.sent_at = clock()

    def close(self) -> None:
        """Abort the connection: the server sees the client go away (and an engine stops generating)."""
        self.reusable = False
        self.aborted = True
        if self.transport is not None and not self.closed:
            self.transport.abort()


class ConnectionPool:
    """Idle keep-alive connections per base URL, reused most-recent first."""

    def __init__(self, connect_timeout_s: float):
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[str, list[HttpConnection]] = {}
        self._targets: dict[str, tuple[str, int, bytes, ssl.SSLContext | None]] = {}

    def _target(self, base_url: str) -> tuple[str, int, bytes, ssl.SSLContext | None]:
        target = self._targets.get(base_url)
        if target is None:
            parts = urlsplit(base_url)
            host = parts.hostname or "127.0.0.1"
            tls = ssl.create_default_context() if parts.scheme == "https" else None
            port = parts.port or (443 if tls else 80)
            target = self._targets[base_url] = (host, port, parts.netloc.encode(), tls)
        return target

    async def acquire(self, base_url: str, fresh: bool = False) -> HttpConnection:
        """An idle kept-alive connection to `base_url` (`reused` set), or a new one."""
        idle = self._idle.get(base_url)
        while idle and not fresh:
            connection = idle.pop()
            if not connection.closed and connection.transport is not None and not connection.transport.is_closing():
                connection.reused = True
                return connection
        host, port, _, tls = self._target(base_url)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(HttpConnection, host, port, ssl=tls)
        except (OSError, TimeoutError) as exc:
            raise ConnectionFailed(f"cannot connect to {base_url}: {exc.__class__.__name__}: {exc}") from None
        return protocol

    async def open(
        self,
        base_url: str,
        message: bytes,
        sink: Sink | None = None,
        bind: Callable[[HttpConnection], None] | None = None,
    ) -> HttpConnection:
        """Send `message` and wait for the response headers. A kept-alive connection that the server
        had closed in the meantime is no failure of the server: the request goes again on a fresh one.
        `bind` is told each connection just before the message goes on it: a sink that acts on the
        connection from the read callback (the gateway's relay) needs to know it before any answer."""
        for fresh in (False, True):
            connection = await self.acquire(base_url, fresh=fresh)
            if bind is not None:
                bind(connection)
            connection.send(message, sink)
            try:
                await connection.headers_done
                return connection
            except ConnectionFailed:
                self.release(base_url, connection)
                if fresh or not connection.reused:
                    raise
            except BaseException:  # cancelled (the client went away) or timed out: the server must stop too
                if connection.sink is sink:  # else a sink took the answer over as it began: its owner closes it
                    connection.close()
                raise
        raise AssertionError("unreachable")

    def release(self, base_url: str, connection: HttpConnection) -> None:
        """Keep `connection` for the next request if its answer ended cleanly; close it otherwise. (Its
        `done` may have been cancelled with the request that awaited it, and the answer's end may have
        been parsed after the connection was aborted: neither is clean.)"""
        done, transport = connection.done, connection.transport
        if (
            connection.reusable
            and done.done()
            and not done.cancelled()
            and done.exception() is None
            and transport is not None
            and not transport.is_closing()
        ):
            self._idle.setdefault(base_url, []).append(connection)
        else:
            connection.close()

    def post_json(self, base_url: str, path: str, payload: bytes, stream: bool) -> bytes:
        """The bytes of a JSON POST to `base_url` + `path` (Accept: an event stream or JSON)."""
        _, _, host, _ = self._target(base_url)
        accept = b"text/event-stream" if stream else b"application/json"
        return (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host, accept, len(payload), payload)
        )

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
