"""The gateway's HTTP/1.1 server: an asyncio protocol over llhttp (`httptools`), as uvicorn's is.

Why not aiohttp's server, which the gateway ran on before: at 500-1,000 streams its per-request work
(request, multidict and response objects, the middleware chain, the response writer and its drain
awaits) cost the gateway about 350 us of CPU a request against nginx's 90 us, and on 2 shared cores
that CPU showed as several times nginx's added time to first token. A request here is parsed inside
the socket's read callback, answered by one task running its handler, and its answer's head and
body go to the socket in one write.

What a client gets: keep-alive, pipelined requests answered in order, Content-Length and chunked
bodies up to a limit (413 as soon as a declared or received size passes it), `Expect: 100-continue`,
requests asking to upgrade (`curl --http2`'s h2c) answered in HTTP/1.1, HTTP/1.0 (streams unframed,
ended by closing), 400 for what is not HTTP, and every answer the server makes itself (404, 405, 413,
503 while draining) an OpenAI-style JSON error. A client that hangs up cancels its handler, which is
how an engine learns to abort the request. Connections idle past the keep-alive timeout are closed by
one sweep a second, not a timer per request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Protocol, cast

import httptools

from expert_router.gateway.messages import Request, Response, Routes, error_response, head, json_response
from expert_router.wire import NoCallbacks

log = logging.getLogger("expert_router.gateway")

MAX_PIPELINED = 16
"""Complete requests waiting behind the one being answered before the connection stops reading."""
LINGER_S = 2.0
"""How long a refused request's connection is still read (and discarded) before it closes."""
MAX_HEAD_BYTES = 64 * 1024
"""A request line and headers longer than this are refused (431) rather than buffered without end."""

HOP_BY_HOP_UPGRADE = (b"upgrade", b"connection", b"http2-settings")
"""Headers of a protocol switch, dropped from a request answered without one."""
DETACHED = httptools.HttpRequestParser(NoCallbacks())
"""The parser a closed connection keeps in place of its own."""


class App(Protocol):
    """What the server runs: routes, a body limit, and start-up and clean-up inside the event loop."""

    routes: Routes
    max_body_bytes: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Server:
    """State shared by the connections of one listening socket: the app, and the drain."""

    def __init__(self, app: App, keepalive_timeout_s: float = 75.0):
        self.app = app
        self.keepalive_timeout_s = keepalive_timeout_s
        self.connections: set[Connection] = set()
        self.draining = False
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.gone = asyncio.Event()
        """Set while draining once no request is in flight and no connection is open: an answer's handler
        ends when the answer is written, and its connection closes once the client has been sent it."""

    def settle(self) -> None:
        if self.draining and self.inflight == 0 and not self.connections:
            self.gone.set()

    async def dispatch(self, request: Request) -> Response:
        if self.draining and request.path != "/metrics":  # a last scrape is still answered
            if request.path == "/health":
                return json_response({"status": "draining"}, 503)
            return error_response(503, "this instance is shutting down; retry the request")
        methods = self.app.routes.get(request.path)
        if methods is None:
            return error_response(404, f"Not Found: {request.method} {request.path}")
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            return error_response(
                405, f"Method Not Allowed: {request.method} {request.path}", headers={"Allow": ", ".join(methods)}
            )
        return await handler(request)

    def sweep(self) -> None:
        """Close connections idle past the keep-alive timeout (or all idle ones while draining), and abort
        those still closing a keep-alive timeout after their last answer: a closing connection waits
        until its client has read what was written, which a client that reads nothing never does."""
        now = time.monotonic()
        idle_cutoff = now - (0.0 if self.draining else self.keepalive_timeout_s)
        stuck_cutoff = now - self.keepalive_timeout_s
        for connection in list(self.connections):
            if connection.active is not None:
                continue
            if connection.transport is not None and connection.transport.is_closing():
                if connection.last_seen <= stuck_cutoff:
                    connection.close(abort=True)
            elif connection.last_seen <= idle_cutoff:
                connection.close()


class Connection(asyncio.Protocol):
    """One client connection: parses requests, answers them one at a time, in order."""

    def __init__(self, server: Server):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.active: Request | None = None
        self.task: asyncio.Task[None] | None = None
        self.pending: collections.deque[Request | Response] = collections.deque()
        self.last_seen = time.monotonic()
        self.refused = False
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._in_head = False
        self._head_bytes = 0
        self._header_bytes = 0
        """The head's header names and values, as parsed (a head in one read reaches `data_received` whole)."""
        self._quiet = 0
        """Bytes read outside a head since the parser's last callback: an unterminated trailer line
        makes none (httptools keeps the partial line until its end), and nothing else would count it."""
        self._begun = 0  # requests begun and completed on this connection (which reads a head's size counts)
        self._completed = 0
        self._upgrade_asked = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # what follows a refused request is not read
        self.last_seen = time.monotonic()
        begun, completed = self._begun, self._completed
        if not self._in_head:
            self._quiet += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._upgrade_asked:
                self._answer_without_upgrade(data[exc.args[0] :])
            else:
                self.refused = True  # CONNECT, or a replayed head: answered, then the connection closes
        except httptools.HttpParserError as exc:
            self.refuse(error_response(400, f"malformed HTTP request: {exc}"))
        else:
            # A head still arriving: the parser buffers its lines, so it may not grow without end. A read
            # that ended an earlier request and began this head is not counted (it holds the earlier
            # request's body too); every read that lies within the head is.
            if self._in_head and (begun == self._begun or completed == self._completed):
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self.refuse(
                        error_response(431, f"the request line and headers are longer than {MAX_HEAD_BYTES} bytes")
                    )
            elif self._quiet > MAX_HEAD_BYTES and self._begun > self._completed:
                self.refuse(error_response(431, f"a trailer line is longer than {MAX_HEAD_BYTES} bytes"))

    def _answer_without_upgrade(self, rest: bytes) -> None:
        """A request asking to switch protocols (`Upgrade: h2c`, which `curl --http2` sends over plain
        HTTP) is answered in HTTP/1.1, as a server may (RFC 9110, 7.8), and as nginx does. llhttp stops
        at such a request's head and leaves its body unread, so the head is parsed again without the
        upgrade by a fresh parser, followed by the bytes that came after it: body, limits, keep-alive
        and pipelining then work as for any request."""
        self._upgrade_asked = False
        parser = self.parser
        lines = [b"%s %s HTTP/%s" % (parser.get_method(), self._url, parser.get_http_version().encode())]
        lines += [name + b": " + value for name, value in self._headers.items() if name not in HOP_BY_HOP_UPGRADE]
        if b"close" in self._headers.get(b"connection", b"").lower():
            lines.append(b"connection: close")
        self.parser = httptools.HttpRequestParser(self)
        self.data_received(b"\r\n".join(lines) + b"\r\n\r\n" + rest)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.server.settle()
        # The parser holds this connection's callbacks: a cycle the collector would have to find, once
        # per connection (per request, for clients that do not keep connections alive).
        self.parser = DETACHED
        if self.task is not None:
            # The client went away: its handler stops, and with it the upstream request. Cancelled on the
            # loop's next turn, after the task's first step (queued when the task was made): a task
            # cancelled before its first step never runs its coroutine, whose clean-up (`_finish`) then
            # never runs either (a pipelined request begun by the previous one's end, say).
            self.loop.call_soon(self.task.cancel)

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._size = b"", {}, [], 0
        self._in_head, self._head_bytes, self._header_bytes, self._quiet = True, 0, 0, 0
        self._begun += 1

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._quiet = 0
        if self._in_head:
            self._headers[name.lower()] = value
            self._header_bytes += len(name) + len(value)
            return
        # A chunked body's trailer: not kept (nothing here reads one), but counted, since every line
        # also keeps the connection from looking idle.
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.refuse(
                error_response(431, f"the request's headers and trailers are longer than {MAX_HEAD_BYTES} bytes")
            )

    def on_headers_complete(self) -> None:
        self._in_head = False
        limit = self.server.app.max_body_bytes
        declared = self._headers.get(b"content-length", b"0")
        if len(self._url) + self._header_bytes > MAX_HEAD_BYTES:  # a head that came in one read: never counted
            self.refuse(error_response(431, f"the request line and headers are longer than {MAX_HEAD_BYTES} bytes"))
        elif declared.isdigit() and int(declared) > limit:
            self.refuse(error_response(413, f"the request body is larger than {limit} bytes"))
        elif (
            self._headers.get(b"expect", b"").lower() == b"100-continue"
            and self.active is None  # not while an earlier answer (a stream, say) is still being written
            and self.parser.get_http_version() == "1.1"
            and self.transport is not None
        ):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._quiet = 0
        self._size += len(body)
        if self._size > self.server.app.max_body_bytes:
            self.refuse(error_response(413, f"the request body is larger than {self.server.app.max_body_bytes} bytes"))
        elif not self.refused:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._quiet = 0
        self._completed += 1
        if self.refused:
            return
        if b"upgrade" in self._headers and self.parser.should_upgrade():
            self._upgrade_asked = True  # its body, if any, is not read yet: `_answer_without_upgrade`
            return
        path = self._url.partition(b"?")[0].decode("latin-1")
        parser = self.parser
        body = b"".join(self._body)
        http11, keep_alive = parser.get_http_version() == "1.1", parser.should_keep_alive()
        request = Request(self, parser.get_method().decode(), path, self._headers, body, http11, keep_alive)
        self._queue(request)

    # -- answering -----------------------------------------------------------------------------
    def refuse(self, response: Response) -> None:
        """Answer `response` after what is already queued, then close; nothing more is read."""
        if not self.refused:
            self.refused = True
            self._queue(response)

    def _queue(self, item: Request | Response) -> None:
        if self.active is None and not self.pending:
            self._begin(item)
            return
        self.pending.append(item)
        if len(self.pending) > MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()

    def _begin(self, item: Request | Response) -> None:
        if isinstance(item, Response):  # a refusal: the last answer on this connection
            self.write(head(item.status, item.headers | {"Content-Type": item.content_type}, len(item.body), False))
            self.write(item.body)
            self._linger()
            return
        self.active = item
        self.server.inflight += 1
        self.server.idle.clear()
        self.task = self.loop.create_task(self._answer(item))

    async def _answer(self, request: Request) -> None:
        try:
            response = await self.server.dispatch(request)
        except asyncio.CancelledError:
            response = None  # the client went away, or the server stops
        except Exception:  # a bug, not the client's fault: said in the API's own words, the trace logged
            log.exception("unexpected error while answering %s %s", request.method, request.path)
            if request.streaming:
                request.keep_alive = False  # a stream cut short cannot be framed as complete
                response = None
            else:
                response = error_response(500, "internal error in the gateway; see its log", "server_error")
        if response is not None and not response.sent:
            self.respond(request, response)
        self._finish(request)

    def respond(self, request: Request, response: Response) -> None:
        """Write a whole answer (its head and body in one write)."""
        keep_alive = request.keep_alive and not self.server.draining
        headers = response.headers | {"Content-Type": response.content_type}
        body = b"" if request.method == "HEAD" else response.body
        self.write(head(response.status, headers, len(response.body), keep_alive) + body)

    def _finish(self, request: Request) -> None:
        self.active, self.task = None, None
        self.server.inflight -= 1
        if self.server.inflight == 0:
            self.server.idle.set()
            self.server.settle()
        self.last_seen = time.monotonic()
        if self.closed:
            return
        if not request.keep_alive or self.server.draining or (self.refused and not self.pending):
            self.close()
        elif self.pending:
            if self.transport is not None and len(self.pending) == MAX_PIPELINED + 1:
                self.transport.resume_reading()
            self._begin(self.pending.popleft())

    def _linger(self) -> None:
        """End the answer (FIN) but read on a while before closing: closing a socket with the client's
        unread bytes in it sends a reset, which can destroy the answer before the client reads it."""
        if self.transport is not None and not self.closed:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.close)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self, abort: bool = False) -> None:
        """Close once what was written has gone (`abort`: at once, as at the end of a drain)."""
        if self.transport is not None and not self.closed:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
