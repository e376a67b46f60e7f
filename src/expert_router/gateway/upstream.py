"""Streaming connections to expert servers, relaying answer bytes from the socket callback itself.

A general HTTP client hands every received chunk to a reading task, which wakes, reads and writes it
on: one task switch per token. Here the upstream connection is an asyncio protocol with an llhttp
parser (`httptools`, uvicorn's parser): the parser's body callback writes each decoded chunk straight
to the client's socket, inside the event loop's read callback. Connections are kept alive per replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

Sink = Callable[[bytes], None]


class UpstreamError(Exception):
    """The connection failed: refused, reset, closed early or answered what is not HTTP."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reusable = False
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        loop = asyncio.get_running_loop()
        self.status = 0
        self.content_type = b""
        self.headers_done: asyncio.Future[None] = loop.create_future()
        self.first_body: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.buffer: list[bytes] = []
        self.sink: Sink | None = None
        self._header_name = b""

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"invalid HTTP from upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._fail(UpstreamError("the upstream closed the connection" + (f": {exc}" if exc else "")))

    def _fail(self, error: Exception) -> None:
        for future in (self.headers_done, self.first_body, self.done):
            if not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved: not every request awaits every future

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink(body)
        else:
            self.buffer.append(body)
        if not self.first_body.done():
            self.first_body.set_result(None)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        for future in (self.first_body, self.done):
            if not future.done():
                future.set_result(None)

    # -- use -----------------------------------------------------------------------------------
    def send(self, request: bytes) -> None:
        self._reset()
        self.parser = httptools.HttpResponseParser(self)
        self.reusable = False
        assert self.transport is not None
        self.transport.write(request)

    def close(self) -> None:
        """Abort the connection: the upstream sees the client go away and stops generating."""
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections per replica, reused most-recent first."""

    def __init__(self, connect_timeout_s: float):
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._targets: dict[str, tuple[str, int, bytes]] = {}

    def _target(self, base_url: str) -> tuple[str, int, bytes]:
        target = self._targets.get(base_url)
        if target is None:
            parts = urlsplit(base_url)
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (443 if parts.scheme == "https" else 80)
            target = self._targets[base_url] = (host, port, parts.netloc.encode())
        return target

    async def acquire(self, base_url: str, fresh: bool = False) -> UpstreamConnection:
        """An idle kept-alive connection to `base_url` (`reused` set), or a new one."""
        idle = self._idle.get(base_url)
        while idle and not fresh:
            connection = idle.pop()
            if not connection.closed and connection.transport is not None and not connection.transport.is_closing():
                connection.reused = True
                return connection
        host, port, _ = self._target(base_url)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, protocol = await loop.create_connection(UpstreamConnection, host, port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {base_url}: {exc.__class__.__name__}: {exc}") from None
        return protocol

    def release(self, base_url: str, connection: UpstreamConnection) -> None:
        if connection.reusable and not connection.closed and connection.done.done() and not connection.done.exception():
            self._idle.setdefault(base_url, []).append(connection)
        else:
            connection.close()

    def request_bytes(self, base_url: str, path: str, payload: bytes, stream: bool) -> bytes:
        _, _, host = self._target(base_url)
        accept = b"text/event-stream" if stream else b"application/json"
        return (b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: %s\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host, accept, len(payload), payload))

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
