"""The gateway's own HTTP server on a loopback socket, with a small app: framing, limits, order, hang-ups."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import weakref
import zlib
from collections.abc import Awaitable, Callable

import brotli
import pytest
import zstandard

from expert_router.encoding import decode_body
from expert_router.errors import BadRequest
from expert_router.gateway import listen
from expert_router.gateway.messages import Request, Response, Routes, json_response
from expert_router.gateway.server import MAX_HEAD_BYTES, Connection, Server

LIMIT = 1000


class App:
    """Echoes bodies, streams three chunks, or waits until cancelled (a client hang-up)."""

    max_body_bytes = LIMIT

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.routes: Routes = {
            "/echo": {"POST": self.echo},
            "/stream": {"GET": self.stream},
            "/wait": {"GET": self.wait},
        }

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def echo(self, request: Request) -> Response:
        await asyncio.sleep(0.01 if request.body == b"slow" else 0)
        return json_response({"body": request.body.decode(), "method": request.method})

    async def stream(self, request: Request) -> Response:
        request.connection.write(request.stream_head({"Content-Type": "text/event-stream"}) + request.frame(b"a"))
        request.connection.write(request.frame(b"b"))
        request.end_stream(b"c")
        return Response(200, sent=True)

    async def wait(self, request: Request) -> Response:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Response(200)


def served(scenario: Callable[[App, int], Awaitable[None]]) -> None:
    """Run `scenario(app, port)` against a server on a free loopback port, closed afterwards."""

    async def main() -> None:
        app = App()
        server = Server(app)
        listener = await asyncio.get_running_loop().create_server(lambda: Connection(server), "127.0.0.1", 0)
        try:
            await scenario(app, listener.sockets[0].getsockname()[1])
        finally:
            listener.close()
            for connection in list(server.connections):
                connection.close(abort=True)

    asyncio.run(main())


async def exchange(port: int, raw: bytes, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        return await asyncio.wait_for(reader.read(-1) if until_close else reader.read(65536), 5)
    finally:
        writer.close()


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every Content-Length response in `raw`, in order."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return out


def post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_pipelined_requests_are_answered_in_order_on_one_connection():
    async def scenario(app: App, port: int) -> None:
        raw = post(b"slow") + post(b"fast") + b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        got = responses(await exchange(port, raw))
        assert [json.loads(b)["body"] for _, _, b in got[:2]] == ["slow", "fast"]
        assert got[2][0] == 404 and json.loads(got[2][2])["error"]["code"] == 404
        assert got[2][1]["connection"] == "close"

    served(scenario)


def test_wrong_method_is_a_json_405_with_allow():
    async def scenario(app: App, port: int) -> None:
        [(status, headers, body)] = responses(await exchange(port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n"))
        assert status == 405 and headers["allow"] == "POST" and json.loads(body)["error"]["type"]

    served(scenario)


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read():
    async def scenario(app: App, port: int) -> None:
        raw = b"POST /echo HTTP/1.1\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (LIMIT + 1)
        [(status, headers, body)] = responses(await exchange(port, raw))
        assert status == 413 and headers["connection"] == "close" and json.loads(body)["error"]["code"] == 413

    served(scenario)


def test_chunked_bodies_are_joined_and_capped():
    async def scenario(app: App, port: int) -> None:
        head = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        chunked = head + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        [(status, _, body)] = responses(await exchange(port, chunked))
        assert status == 200 and json.loads(body)["body"] == "abcde"
        big = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            LIMIT + 5,
            b"x" * (LIMIT + 5),
        )
        [(status, _, _)] = responses(await exchange(port, big))
        assert status == 413

    served(scenario)


def test_expect_100_continue_is_answered():
    async def scenario(app: App, port: int) -> None:
        raw = await exchange(port, b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n", False)
        assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")

    served(scenario)


def test_a_head_that_never_ends_is_refused_not_buffered():
    async def scenario(app: App, port: int) -> None:
        huge = b"GET /echo HTTP/1.1\r\nX-Filler: " + b"a" * (MAX_HEAD_BYTES + 10)  # no end of headers
        [(status, headers, body)] = responses(await exchange(port, huge))
        assert status == 431 and headers["connection"] == "close" and json.loads(body)["error"]["code"] == 431

    served(scenario)


def test_garbage_is_a_json_400():
    async def scenario(app: App, port: int) -> None:
        [(status, _, body)] = responses(await exchange(port, b"\x16\x03\x01 hello\r\n\r\n"))
        assert status == 400 and "malformed HTTP" in json.loads(body)["error"]["message"]

    served(scenario)


def test_streams_are_chunked_for_http_1_1_and_raw_for_http_1_0():
    async def scenario(app: App, port: int) -> None:
        framed = await exchange(port, b"GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert b"transfer-encoding: chunked" in framed.lower() and framed.endswith(
            b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"
        )
        raw = await exchange(port, b"GET /stream HTTP/1.0\r\n\r\n")  # ends when the server closes
        assert b"chunked" not in raw.lower() and raw.endswith(b"\r\n\r\nabc")

    served(scenario)


def test_a_client_that_hangs_up_cancels_its_handler():
    async def scenario(app: App, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /wait HTTP/1.1\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        await asyncio.wait_for(app.cancelled.wait(), 5)

    served(scenario)


def test_content_encodings_decode_or_fail_as_the_clients_mistake():
    body = json.dumps({"prompt": "hi"}).encode()
    assert decode_body(gzip.compress(body), b"gzip", LIMIT) == body
    assert decode_body(zlib.compress(body), b"deflate", LIMIT) == body
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_body(raw_deflate.compress(body) + raw_deflate.flush(), b"Deflate", LIMIT) == body
    assert decode_body(gzip.compress(gzip.compress(body)), b"gzip, gzip", LIMIT) == body
    assert decode_body(brotli.compress(body), b"br", LIMIT) == body
    assert decode_body(zstandard.ZstdCompressor().compress(body), b"zstd", LIMIT) == body
    halves = (body[:5], body[5:])  # several members (gzip) or frames (zstd), one after another: all decoded
    assert decode_body(b"".join(gzip.compress(h) for h in halves), b"gzip", LIMIT) == body
    assert decode_body(b"".join(zstandard.ZstdCompressor().compress(h) for h in halves), b"zstd", LIMIT) == body
    with pytest.raises(BadRequest) as caught:  # the cap holds across members
        decode_body(gzip.compress(b" " * LIMIT) + gzip.compress(b" " * 10), b"gzip", LIMIT)
    assert caught.value.status == 413
    for payload, header, status in (
        (body, b"gzip", 400),  # not gzip at all
        (gzip.compress(body)[:-6], b"gzip", 400),  # truncated
        (zstandard.ZstdCompressor().compress(body)[:-3], b"zstd", 400),  # a cut frame: it had decoded to b""
        (gzip.compress(b" " * 10 * LIMIT), b"gzip", 413),  # small on the wire, past the limit decoded
        (brotli.compress(b" " * 10 * LIMIT), b"br", 413),
        (zstandard.ZstdCompressor().compress(b" " * 10 * LIMIT), b"zstd", 413),
        (body, b"br", 400),
        (body, b"zstd", 400),
        (body, b"compress", 415),
        (body, b"identity, " * 6, 400),  # more codings than are decoded: each is a pass over the body
        # Each member's end is found by copying what follows it: 200,000 empty members held the loop 6.7 s.
        (gzip.compress(b"") * 200_000, b"gzip", 400),
        (zstandard.ZstdCompressor().compress(b"") * 180_000, b"zstd", 400),
    ):
        with pytest.raises(BadRequest) as caught:
            decode_body(payload, header, LIMIT)
        assert caught.value.status == status, header


def test_a_closed_connection_is_freed_by_reference_counting_alone():
    """Its parser holds its callbacks: left in place, every closed connection was a cycle for the garbage
    collector (one per request, for clients that do not keep connections alive)."""

    async def main() -> list[weakref.ref[Connection]]:
        server = Server(App())
        made: list[weakref.ref[Connection]] = []

        def connection() -> Connection:
            made.append(weakref.ref(made_one := Connection(server)))
            return made_one

        listener = await asyncio.get_running_loop().create_server(connection, "127.0.0.1", 0)
        try:
            port = listener.sockets[0].getsockname()[1]
            for _ in range(3):
                answer = await exchange(port, post(b"x", b"Connection: close\r\n"))
                assert responses(answer)[0][0] == 200
            while server.connections:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # connection_lost's own callbacks done
        finally:
            listener.close()
        return made

    gc.collect()
    gc.disable()
    try:
        made = asyncio.run(main())
        assert len(made) == 3 and all(ref() is None for ref in made)
    finally:
        gc.enable()


class Socket(asyncio.Transport):
    """A client's socket that keeps what the server writes to it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = self.closing = True

    def write_eof(self) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def fed(*reads: bytes, between_s: float = 0.05) -> bytes:
    """What a connection writes back when `reads` arrive one after another, `between_s` apart (long
    enough, by default, for each to be answered first), the last followed by 0.05 s."""
    connection = Connection(Server(App()))
    socket = Socket()
    connection.connection_made(socket)
    for data in reads:
        connection.data_received(data)
        await asyncio.sleep(between_s)
    await asyncio.sleep(max(0.0, 0.05 - between_s))
    return socket.written


def test_a_read_that_ends_requests_and_begins_a_head_is_not_counted_as_that_head():
    """Ten pipelined requests of 7 KB each and the start of an eleventh in one read: the whole read
    was counted against the eleventh's head, a 431 for requests nothing was wrong with."""
    pad = b"X-Pad: " + b"p" * 7000 + b"\r\n"
    whole = b"POST /echo HTTP/1.1\r\n" + pad + b"Content-Length: 2\r\n\r\nok"
    written = asyncio.run(
        fed(whole * 10 + b"POST /echo HTTP/1.1\r\n", b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
    )
    got = responses(written)
    assert len(got) == 11 and {status for status, _, _ in got} == {200}


def test_trailers_count_against_the_head_limit_and_are_not_taken_for_headers():
    head = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n"
    endless = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 40) for i in range(2000))  # ~100 KB of trailer lines
    [(status, _, body)] = responses(asyncio.run(fed(head, endless)))
    assert status == 431 and json.loads(body)["error"]["code"] == 431
    [(status, _, body)] = responses(asyncio.run(fed(head + b"Connection: keep-alive\r\nX-T: 1\r\n\r\n")))
    assert status == 200 and json.loads(body)["body"] == "ok"


def test_an_unterminated_trailer_line_is_refused_not_buffered():
    """A trailer line that never ends made no callback at all (httptools keeps the partial line until
    its end), so nothing counted it, and the parser's buffer grew with every read."""
    head = b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: "
    # Reads a loop turn apart: what is tested is the size read, not when (0.05 s apart, this took 15 s).
    [(status, _, body)] = responses(asyncio.run(fed(head, *[b"v" * 1024] * 100, between_s=0)))
    assert status == 431 and json.loads(body)["error"]["code"] == 431
    # A body sent in many small reads, and trailers that end, are read whole.
    chunks = b"".join(b"9\r\n" + b"b" * 9 + b"\r\n" for _ in range(100))
    reads = [chunks[i : i + 7] for i in range(0, len(chunks), 7)]
    end = b"0\r\nX-Trailer: " + b"v" * 1000 + b"\r\nConnection: close\r\n\r\n"
    [(status, _, body)] = responses(asyncio.run(fed(head.split(b"2\r\n")[0], *reads, end, between_s=0)))
    assert status == 200 and len(json.loads(body)["body"]) == 900


def test_100_continue_is_not_written_into_an_answer_in_progress_nor_to_http_1_0():
    async def main() -> tuple[bytes, bytes]:
        connection = Connection(Server(App()))
        socket = Socket()
        connection.connection_made(socket)
        connection.data_received(b"GET /wait HTTP/1.1\r\n\r\n")  # an answer in progress
        await asyncio.sleep(0.01)
        connection.data_received(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        await asyncio.sleep(0.01)
        in_progress = socket.written
        connection.connection_lost(None)
        old = await fed(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        return in_progress, old

    in_progress, old = asyncio.run(main())
    assert in_progress == b"" and b"100 Continue" not in old


def test_a_handler_cancelled_before_its_first_step_still_finishes_its_request():
    """A pipelined request begun by the previous answer's end, on a connection whose loss is already
    queued: a task cancelled before its first step never runs its coroutine, so the request was never
    finished (the server counted it in flight for good, and a drain waited its whole timeout)."""

    async def main() -> None:
        app = App()
        server = Server(app)
        connection = Connection(server)
        connection.connection_made(Socket())
        connection.data_received(b"GET /wait HTTP/1.1\r\n\r\n")  # its task is made, not yet run
        connection.connection_lost(None)  # and the client is gone before it runs
        await asyncio.wait_for(app.cancelled.wait(), 5)  # the handler ran, and was cancelled
        await asyncio.sleep(0)
        assert server.inflight == 0 and server.idle.is_set()

    asyncio.run(main())


def test_a_drain_waits_until_the_last_answers_have_been_sent():
    """A handler ends once its answer is written, not sent: the drain aborted the connections as soon
    as the last handler ended, and a slow client lost the end of its answer."""

    class Listener:
        def close(self) -> None: ...

        async def wait_closed(self) -> None: ...

    async def main() -> None:
        server = Server(App())
        connection = Connection(server)
        socket = Socket()
        connection.connection_made(socket)
        connection.data_received(post(b"x"))
        await asyncio.sleep(0.01)
        assert responses(socket.written)[0][0] == 200  # written; the client is still reading it
        drain = asyncio.create_task(listen._drain(server, Listener(), 5.0))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert socket.closing and not socket.aborted and not drain.done()  # closing once it is sent
        connection.connection_lost(None)  # sent
        await asyncio.wait_for(drain, 1)
        assert not socket.aborted

    asyncio.run(main())


def test_a_client_that_reads_nothing_of_its_last_answer_is_cut_off_after_the_keep_alive_timeout():
    """Closing waits until the client has read what was written: one that reads nothing kept its
    connection, and the answer's buffer, for good."""

    async def main() -> Socket:
        server = Server(App(), keepalive_timeout_s=0.05)
        connection = Connection(server)
        socket = Socket()
        connection.connection_made(socket)
        connection.data_received(post(b"x", b"Connection: close\r\n"))
        await asyncio.sleep(0.01)
        assert socket.closing and not socket.aborted  # answered; closing once the client has read it
        server.sweep()
        assert not socket.aborted  # not yet: within the keep-alive timeout
        await asyncio.sleep(0.1)
        server.sweep()
        return socket

    assert asyncio.run(main()).aborted


def test_a_request_asking_to_upgrade_is_answered_in_http_1_1_with_its_body():
    """`curl --http2 http://...` sends `Upgrade: h2c`: llhttp stops at the head, and the body was lost
    (the gateway answered 400, "not valid JSON"). A server may ignore the upgrade; nginx does."""

    async def scenario(app: App, port: int) -> None:
        h2c = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        # Content-Length, then chunked, then a plain request pipelined behind: all answered, in order.
        chunked = b"POST /echo HTTP/1.1\r\n%sTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        raw = post(b"hello", h2c) + chunked % h2c + b"GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n"
        got = responses(await exchange(port, raw))
        assert [status for status, _, _ in got] == [200, 200, 404]
        assert [json.loads(body)["body"] for _, _, body in got[:2]] == ["hello", "abcde"]
        assert all(b"101" not in body for _, _, body in got)
        # The body's limit holds for it too, and a CONNECT is still refused, not looped on.
        [(status, _, _)] = responses(await exchange(port, post(b"x" * (LIMIT + 1), h2c)))
        assert status == 413
        [(status, _, _)] = responses(await exchange(port, b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n"))
        assert status in (404, 405)

    served(scenario)


def test_a_head_over_the_limit_is_refused_when_it_comes_in_one_read():
    """Counted only across reads: a 70,000-byte header that arrived whole was answered 200."""
    big = b"GET /echo HTTP/1.1\r\nX-Big: " + b"b" * (MAX_HEAD_BYTES + 10) + b"\r\nConnection: close\r\n\r\n"
    [(status, _, body)] = responses(asyncio.run(fed(big)))
    assert status == 431 and json.loads(body)["error"]["code"] == 431
    many = b"GET /echo HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(700)) + b"\r\n"
    [(status, _, _)] = responses(asyncio.run(fed(many)))
    assert status == 431
    fine = b"POST /echo HTTP/1.1\r\nX-Big: " + b"b" * (MAX_HEAD_BYTES - 100) + b"\r\nContent-Length: 0\r\n\r\n"
    [(status, _, _)] = responses(asyncio.run(fed(fine)))
    assert status == 200
