"""Relaying one answer stream to the client as it arrives, from the upstream socket's read callback.

The stream starts in the read callback that brought the answer's first bytes: no task switch before
the first token. The upstream connection's parser hands every chunk to `Relay.sink`, and once the
read has been parsed, `Relay.flush` writes what it brought to the client's socket in one write, as
nginx does: the response head with the first chunks (an engine's role chunk and first token usually
come together), a token as it comes, the last token with [DONE]. Writing each chunk on its own had
cost ~6 writes a request with 2-token answers where nginx made ~4 (strace); one write per read made
it ~4, and the gateway's CPU per request 0.91-0.98x (six interleaved pairs; no change measurable
with 32- or 256-token answers, where reads rarely hold two chunks).
HTTP/1.1 clients get chunked framing; HTTP/1.0 clients get the raw bytes and a closed connection at
the end.

A slow client is back-pressure, not memory: when its socket buffer passes `WRITE_FAST_LIMIT`, reading
from the upstream pauses until the buffer drains. A client that goes away closes the upstream at once,
which is how an engine learns to abort the request. Upstream silence longer than the idle timeout ends
the stream with an error event.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

import orjson

from expert_router.errors import ConnectionFailed
from expert_router.gateway.messages import Request, Response
from expert_router.http import error_body
from expert_router.wire import HttpConnection

log = logging.getLogger("expert_router.gateway")

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tells nginx not to buffer the stream
}
DONE = b"data: [DONE]\n\n"
FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
"""A finish reason with a value (not null): the answer ended, though the server sent no [DONE]."""
CUT_SHORT = "the expert's stream ended before its answer did (no finish_reason, no [DONE])"
WRITE_FAST_LIMIT = 64 * 1024
"""Below this many bytes waiting for the client, relayed chunks are written to its socket directly."""


class Relay:
    """One answer stream from an upstream connection to the client of `request`.

    The stream starts in the upstream's read callback: `bind` is told the connection before the
    request goes on it, and `first`, the connection's sink until then, starts a 200's answer the
    moment its first chunk arrives (`flush` writes it with the rest of that read). Started from the
    request's task instead, the first token waited for that task's next turn, behind every callback
    of the event loop's pass: at 1,000 streams that wait was a few milliseconds at the 90th
    percentile, added to every time to first token (nginx relays from its read handler too). `run()`
    then waits for the stream's end; it is called only once the stream has `started`.
    """

    def __init__(
        self,
        request: Request,
        upstream_url: str,
        make_headers: Callable[[HttpConnection], dict[str, str]],
        idle_timeout_s: float,
        on_done: Callable[[int], None],
    ):
        self.request = request
        self.upstream_url = upstream_url
        self.make_headers = make_headers
        """The response's own headers, made when the stream starts (Server-Timing knows the send time then)."""
        self.headers: dict[str, str] = {}
        self.idle_timeout_s = idle_timeout_s
        self.on_done = on_done
        """Told how many chunks were relayed (metrics)."""
        self.connection: HttpConnection | None = None
        self.transport = request.transport
        self.framed = request.http11
        self.pending: list[bytes] = []
        """What the read being parsed brought, framed, for `flush` (empty outside a read callback)."""
        self.previous, self.last = b"", b""
        """The two latest chunks that were not only a comment: where a [DONE] or a finish reason would be."""
        self.chunks = 0
        self.started = False
        self.paused = False
        self.finished = False
        self.watchdog: IdleWatchdog | None = None

    def bind(self, connection: HttpConnection) -> None:
        """The connection the request goes on (`ConnectionPool.open`'s hook, called before it is sent)."""
        self.connection = connection
        connection.after_read = self.flush

    def first(self, data: bytes) -> None:
        """The sink until the stream starts, run inside the upstream's read callback: the first chunk of
        a 200 starts the stream (its head goes out with the read's chunks); an error answer's body is
        kept whole for the forwarder, which passes it on or fails over."""
        connection = self.connection
        assert connection is not None  # bound before the request went out
        if connection.status != 200:
            connection.buffer.append(data)
            return
        self.headers = SSE_HEADERS | self.make_headers(connection)  # first: should it fail, nothing has started
        self.started = True
        connection.sink = self.sink
        self._keep(data)
        self.pending.append(self.request.stream_head(self.headers) + self.request.frame(data))
        self.watchdog = IdleWatchdog(self, self.idle_timeout_s)

    async def run(self) -> Response:
        """Relay until the upstream ends; from here on a failure becomes an error event, then [DONE]."""
        error = await self._wait()
        if error is not None:
            log.warning("stream from %s ended early: %s", self.upstream_url, error)
            self.request.end_stream(b"data: " + orjson.dumps(error_body(502, error, "upstream_error")) + b"\n\n" + DONE)
        else:
            self.request.end_stream(self._last_event())
        return Response(200, headers=self.headers, sent=True)

    async def _wait(self) -> str | None:
        """Wait for the stream's end; returns why it broke off, or None when it ended cleanly."""
        connection = self.connection
        assert connection is not None and self.started
        try:
            await connection.done
            return None
        except ConnectionFailed as exc:
            if self._client_gone():
                raise asyncio.CancelledError from None  # nothing left to tell the client
            watchdog = self.watchdog
            if watchdog is not None and watchdog.fired:
                return (
                    "the client stopped reading (idle timeout)"
                    if watchdog.client_stalled
                    else "the expert stopped answering (idle timeout)"
                )
            return f"the expert's stream broke off: {exc}"
        finally:
            self.finish()

    def finish(self) -> None:
        """Let go of the connection (once; the forwarder calls it too, for a request cancelled before
        `run`): the watchdog stops, the chunks are counted, and a connection whose reading was paused
        for a slow client stays out of the pool, since a resume is still scheduled for it."""
        if self.finished:
            return
        self.finished = True
        if self.watchdog is not None:
            self.watchdog.cancel()
        connection = self.connection
        if connection is not None:
            connection.sink = None
            connection.after_read = None
            if self.paused:
                connection.reusable = False
        if self.started:
            self.on_done(self.chunks)

    def _keep(self, data: bytes) -> None:
        self.chunks += 1
        if data[:1] != b":":  # an SSE comment (a keep-alive) is no event: the last two events are kept
            self.previous, self.last = self.last, data

    def _last_event(self) -> bytes:
        """What goes before a clean end: nothing after [DONE]; [DONE] after a stream that gave its finish
        reason but just closed (some servers do); an error event first after one that gave neither,
        which was cut short (given a bare [DONE], clients counted it whole)."""
        tail = (self.previous + self.last).rstrip()
        if tail.endswith(b"[DONE]"):
            return b""
        if FINISHED.search(tail):
            return DONE
        log.warning("stream from %s ended early: %s", self.upstream_url, CUT_SHORT)
        return b"data: " + orjson.dumps(error_body(502, CUT_SHORT, "upstream_error")) + b"\n\n" + DONE

    def _client_gone(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def sink(self, data: bytes) -> None:
        """Called from the upstream's read callback with each decoded chunk of the answer (once per
        token: `_keep` is written out here, one call fewer)."""
        self.chunks += 1
        if data[:1] != b":":  # as in `_keep`
            self.previous = self.last
            self.last = data
        self.pending.append(b"%x\r\n%b\r\n" % (len(data), data) if self.framed else data)

    def flush(self) -> None:
        """After each read (`HttpConnection.after_read`): write what it brought to the client. The
        stream's end is left to the request's task (`run`), though it usually came in the same read:
        written from here, it let the client send its next request before the server had finished
        this one, and that request then waited for this one's task (~0.2 ms more to first token)."""
        pending = self.pending
        if not pending:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            pending.clear()
            self.connection.close()  # type: ignore[union-attr]  # bound: the client is gone, stop the upstream
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()
        if not self.paused and transport.get_write_buffer_size() > WRITE_FAST_LIMIT:
            self._pause()

    def _pause(self) -> None:
        """A slow client: stop reading upstream until its socket drains."""
        assert self.connection is not None
        upstream = self.connection.transport
        if upstream is not None:
            self.paused = True
            upstream.pause_reading()
            self.connection.loop.call_later(0.005, self._resume_when_drained)

    def _resume_when_drained(self) -> None:
        connection = self.connection
        assert connection is not None
        if self.finished:
            return  # the answer is over: the connection is closed or another request's
        if connection.closed or self._client_gone():
            connection.close()
        elif self.transport is not None and self.transport.get_write_buffer_size() > WRITE_FAST_LIMIT // 2:
            connection.loop.call_later(0.005, self._resume_when_drained)
        elif connection.transport is not None:
            self.paused = False
            connection.transport.resume_reading()


class IdleWatchdog:
    """Aborts the upstream connection once `timeout` seconds pass without a chunk.

    The relay only counts chunks; the watchdog looks at the count four times per timeout, so a
    silence is caught between `timeout` and 1.25 x `timeout`, without a clock read or a timer change
    per token. Cancelled, it lets go of the relay: relay and watchdog refer to each other, and a cycle
    left per stream is work for the garbage collector (it was 4% of the gateway's CPU, and each young
    collection held the event loop ~25 ms). A silence while reading is paused is the client's (it
    stopped reading): the upstream is aborted all the same, so that no engine works for a client that
    reads nothing, but the expert is not blamed (`client_stalled`).
    """

    def __init__(self, relay: Relay, timeout: float):
        self.relay: Relay | None = relay
        assert relay.connection is not None
        self.connection = relay.connection
        self.loop = relay.connection.loop
        self.timeout = timeout
        self.seen = relay.chunks
        self.since = self.loop.time()
        self.fired = False
        self.client_stalled = False
        self._handle = self.loop.call_later(timeout / 4, self._check)

    def _check(self) -> None:
        if self.relay is None:
            return
        now = self.loop.time()
        if self.relay.chunks != self.seen:
            self.seen, self.since = self.relay.chunks, now
        elif now - self.since >= self.timeout:
            self.fired = True
            self.client_stalled = self.relay.paused
            self.connection.close()
            return
        self._handle = self.loop.call_later(self.timeout / 4, self._check)

    def cancel(self) -> None:
        self._handle.cancel()
        self.relay = None
