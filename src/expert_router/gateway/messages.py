"""What the gateway's server hands a handler and takes back: the request, the answer, and the bytes of
an answer's head. Apart from the server (`server`), which parses requests and runs handlers, so that
handlers and the steps they call import these without the connection machinery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol

import orjson

from expert_router.errors import ClientError
from expert_router.http import error_body

Headers = dict[str, str]
REASONS = {int(s): s.phrase.encode() for s in HTTPStatus}


@dataclass(slots=True)
class Response:
    """An answer: whole, or (`sent`) one its handler has already streamed, returned for the record."""

    status: int
    body: bytes = b""
    headers: Headers = field(default_factory=dict)
    content_type: str = "application/json"
    sent: bool = False


def json_response(data: object, status: int = 200, headers: Headers | None = None) -> Response:
    return Response(status, orjson.dumps(data), headers or {})


def error_response(
    status: int,
    message: str,
    type_: str | None = None,
    code: str | None = None,
    headers: Headers | None = None,
    param: str | None = None,
) -> Response:
    """An OpenAI-style error body with its status."""
    return Response(status, orjson.dumps(error_body(status, message, type_, code, param)), headers or {})


def client_error_response(exc: ClientError) -> Response:
    """The answer a `ClientError` (a client's mistake, or a state it can retry) stands for."""
    return error_response(exc.status, str(exc), exc.error_type, exc.code, exc.headers or None, exc.param)


class ClientConnection(Protocol):
    """What a request needs of the connection it came on (`server.Connection`)."""

    closed: bool
    transport: asyncio.Transport | None

    def write(self, data: bytes) -> None: ...


class Request:
    """One parsed request, and the means to stream its answer."""

    __slots__ = ("body", "connection", "headers", "http11", "keep_alive", "method", "path", "streaming")

    def __init__(
        self,
        connection: ClientConnection,
        method: str,
        path: str,
        headers: dict[bytes, bytes],
        body: bytes,
        http11: bool,
        keep_alive: bool,
    ):
        self.connection = connection
        self.method = method
        self.path = path
        self.headers = headers
        """Header values by lower-cased name (the last one where a name repeats)."""
        self.body = body
        self.http11 = http11
        self.keep_alive = keep_alive
        self.streaming = False

    @property
    def transport(self) -> asyncio.Transport | None:
        return None if self.connection.closed else self.connection.transport

    def stream_head(self, headers: Headers) -> bytes:
        """A 200's head for a body of unknown length: chunked for HTTP/1.1, unframed (then closed) for
        HTTP/1.0. Chunks follow, each as `frame()` makes it; `stream_end()` ends it. Bytes, not a
        write: a relay sends the head with what came in the same read, in one write."""
        self.streaming = True
        if not self.http11:
            self.keep_alive = False
        return head(200, headers, None, self.keep_alive, chunked=self.http11)

    def frame(self, data: bytes) -> bytes:
        """`data` as it goes on the wire of this stream."""
        return b"%x\r\n%b\r\n" % (len(data), data) if self.http11 else data

    def stream_end(self, last: bytes = b"") -> bytes:
        """The stream's `last` bytes (framed) and its end."""
        if self.http11:
            return (self.frame(last) if last else b"") + b"0\r\n\r\n"
        return last

    def end_stream(self, last: bytes = b"") -> None:
        end = self.stream_end(last)
        if end:
            self.connection.write(end)


Handler = Callable[[Request], Awaitable[Response]]
Routes = dict[str, dict[str, Handler]]
"""Handlers by path, then method."""

_date: tuple[int, bytes] = (0, b"")


def head(status: int, headers: Headers, length: int | None, keep_alive: bool, chunked: bool = False) -> bytes:
    """A response's status line and headers. Header values are ours: CR and LF are stripped anyway."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    lines = [
        f"{k}: {v}\r\n" if "\r" not in v and "\n" not in v else f"{k}: {' '.join(v.splitlines())}\r\n"
        for k, v in headers.items()
    ]
    framing = (
        b"Transfer-Encoding: chunked\r\n" if chunked else b"" if length is None else b"Content-Length: %d\r\n" % length
    )
    return b"HTTP/1.1 %d %s\r\nDate: %s\r\nServer: expert-router\r\n%s%s%s\r\n" % (
        status,
        REASONS.get(status, b"Unknown"),
        _date[1],
        "".join(lines).encode("latin-1", "replace"),
        framing,
        b"" if keep_alive else b"Connection: close\r\n",
    )
