"""The gateway's steps without a server: parsing, the plan, the HTTP parser fed canned bytes, and the
relay, the forwarder and the simulator's client on fake sockets."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from expert_router import collector
from expert_router.classifier import Classifier, ClassifierSettings
from expert_router.collector import settle_after_start_up
from expert_router.config import Deployment, ExpertConfig
from expert_router.errors import BadRequest, ConnectionFailed, Saturated
from expert_router.gateway.app import build_app
from expert_router.gateway.forward import Forwarder, Timing
from expert_router.gateway.metrics import GatewayMetrics
from expert_router.gateway.relay import DONE, WRITE_FAST_LIMIT, Relay
from expert_router.gateway.replicas import Experts
from expert_router.gateway.requests import parse_request
from expert_router.gateway.routing import Plan, Router
from expert_router.loadgen.client import Target, send
from expert_router.loadgen.records import RequestRecord
from expert_router.wire import ConnectionPool, HttpConnection, clock


@pytest.fixture(scope="module")
def classifier(small_corpus) -> Classifier:
    return Classifier.fit([text for text, _ in small_corpus], ClassifierSettings(k=4, dims=10))


def deployment(clusters: list[int], fallback: str = "nearest") -> Deployment:
    experts = [
        ExpertConfig(cluster=c, model=f"expert-{c}", endpoints=["http://127.0.0.1:9"])  # type: ignore[list-item]
        for c in clusters
    ]
    return Deployment(classifier=Path("unused"), experts=experts, gateway={"fallback": fallback})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "chat", "message"),
    [
        (b"{", False, "not valid JSON"),
        (b"[1]", False, "JSON object"),
        (b'{"prompt": 3}', False, "'prompt'"),
        (b'{"prompt": ["a", 1]}', False, "token ids"),
        (b'{"prompt": "  "}', False, "empty"),
        (b'{"prompt": "x", "stream": "yes"}', False, "'stream'"),
        (b'{"prompt": "x", "max_tokens": 0}', False, "max_tokens"),
        (b'{"prompt": "x", "model": 5}', False, "'model'"),
        (b'{"messages": []}', True, "non-empty list"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', True, "role"),
        (b'{"messages": [{"role": ["user"], "content": "x"}]}', True, "role"),
        (b'{"messages": [{"role": {}, "content": "x"}]}', True, "role"),
        (b'{"messages": [{"role": "user", "content": [{"text": "x"}]}]}', True, "'type'"),
    ],
)
def test_bad_requests_are_named(raw, chat, message):
    with pytest.raises(BadRequest, match=message) as caught:
        parse_request(raw, chat)
    assert caught.value.status == 400


def test_chat_routes_on_the_user_messages():
    request = parse_request(
        b'{"messages": [{"role": "system", "content": "be brief"}, '
        b'{"role": "user", "content": [{"type": "text", "text": "bake bread"}]}]}',
        chat=True,
    )
    assert request.text == "bake bread" and request.chat and not request.stream


def test_the_plan_follows_the_classifier_nearest_first(classifier):
    router = Router(classifier, deployment([0, 1, 2, 3]))
    request = parse_request(b'{"prompt": "compiler kernel pointer segfault thread"}', chat=False)
    plan = router.plan(request)
    ranked = classifier.route(request.text).ranked(0).tolist()
    assert plan.routed == ranked[0] and plan.order == ranked and plan.classified


def test_named_experts_skip_routing_and_unknown_models_are_404(classifier):
    router = Router(classifier, deployment([0, 1, 2, 3]))
    plan = router.plan(parse_request(b'{"prompt": "anything", "model": "expert-2"}', chat=False))
    assert plan.order == [2] and not plan.classified
    with pytest.raises(BadRequest) as caught:
        router.plan(parse_request(b'{"prompt": "x", "model": "gpt-9"}', chat=False))
    assert caught.value.status == 404 and caught.value.code == "model_not_found"


def test_fallback_none_and_clusters_without_an_expert(classifier):
    request = parse_request(b'{"prompt": "court judge lease tenant"}', chat=False)
    assert len(Router(classifier, deployment([0, 1, 2, 3], "none")).plan(request).order) == 1
    plan = Router(classifier, deployment([0, 1])).plan(request)
    assert set(plan.order) <= {0, 1} and len(plan.order) == 2


class FakeTransport(asyncio.Transport):
    """A socket that keeps what is written. `buffered`: bytes its peer has not read; `protocol`, if set,
    is told of an abort on the loop's next turn, as a real transport tells it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.writes: list[bytes] = []
        self.closing = False
        self.reading = True
        self.buffered = 0
        self.protocol: asyncio.Protocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        if not self.closing and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
        self.closing = True


async def feed(*pieces: bytes) -> tuple[HttpConnection, list[bytes]]:
    connection = HttpConnection()
    connection.connection_made(FakeTransport())
    seen: list[bytes] = []
    connection.send(b"POST / HTTP/1.1\r\n\r\n", sink=seen.append)
    for piece in pieces:
        connection.data_received(piece)
    return connection, seen


def test_the_parser_hands_each_chunk_to_the_sink():
    async def main() -> None:
        connection, seen = await feed(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked",
            b"\r\nServer-Timing: route;dur=1\r\n\r\n6\r\ndata: ",
            b"\r\n",
            b"5\r\n\n\nxyz\r\n0\r\n\r\n",
        )
        assert connection.status == 200 and connection.content_type == b"text/event-stream"
        assert connection.headers[b"server-timing"] == b"route;dur=1"
        assert b"".join(seen) == b"data: \n\nxyz" and connection.done.done() and connection.reusable

    asyncio.run(main())


def test_a_kept_alive_connection_parses_its_next_answer():
    async def main() -> None:
        connection, _ = await feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert connection.reusable and connection.done.done()
        seen: list[bytes] = []
        connection.send(b"POST / HTTP/1.1\r\n\r\n", sink=seen.append)
        connection.data_received(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnot")
        assert connection.status == 404 and seen == [b"not"] and connection.done.done()

    asyncio.run(main())


def test_garbage_and_early_close_fail_the_request():
    async def main() -> None:
        connection, _ = await feed(b"NOT HTTP AT ALL\r\n\r\n")
        with pytest.raises(ConnectionFailed, match="invalid HTTP"):
            await connection.headers_done
        connection, _ = await feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        connection.connection_lost(None)
        with pytest.raises(ConnectionFailed, match="closed"):
            await connection.done
        assert not connection.reusable

    asyncio.run(main())


def test_an_answer_without_length_ends_when_the_server_closes():
    """No Content-Length and not chunked (an HTTP/1.0 server's stream): the close is its end, which was
    taken for a failure; a close of this side's own making is not."""

    async def main() -> None:
        for status in (b"HTTP/1.0 200 OK", b"HTTP/1.1 200 OK\r\nConnection: close"):
            connection, seen = await feed(status + b"\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n")
            connection.connection_lost(None)
            await connection.done  # no error
            assert seen == [b"data: x\n\n"] and not connection.reusable and connection.done_at > 0
        connection, _ = await feed(b"HTTP/1.0 200 OK\r\n\r\ndata: x\n\n")
        connection.close()  # this side gave up (a timeout, a client gone)
        connection.connection_lost(None)
        with pytest.raises(ConnectionFailed):
            await connection.done
        connection, _ = await feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        connection.connection_lost(None)
        with pytest.raises(ConnectionFailed):  # a declared length cut short is still a failure
            await connection.done

    asyncio.run(main())


def frame(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class StreamClient:
    """What a relay needs of the client's request: its socket, HTTP/1.1 framing, head and end."""

    http11 = True

    def __init__(self) -> None:
        self.transport = FakeTransport()

    def stream_head(self, headers: dict[str, str]) -> bytes:
        return b"HEAD "

    def frame(self, data: bytes) -> bytes:
        return frame(data)

    def stream_end(self, last: bytes = b"") -> bytes:
        return (frame(last) if last else b"") + b"0\r\n\r\n"

    def end_stream(self, last: bytes = b"") -> None:
        self.transport.write(self.stream_end(last))


def started_relay(
    client: StreamClient, counts: list[int], status: bytes = b"200 OK", idle_timeout_s: float = 60.0
) -> tuple[HttpConnection, Relay]:
    """A relay bound to a connection whose answer's head and first chunk just arrived."""
    connection = HttpConnection()
    connection.connection_made(FakeTransport())
    relay = Relay(client, "u", lambda _: {}, idle_timeout_s, counts.append)  # type: ignore[arg-type]
    relay.bind(connection)
    connection.send(b"POST / HTTP/1.1\r\n\r\n", relay.first)
    connection.data_received(b"HTTP/1.1 " + status + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + frame(b"one"))
    return connection, relay


async def relayed(*reads: bytes) -> tuple[list[bytes], list[int]]:
    """A stream whose head and first chunk arrived, relayed while `reads` arrive: the client's writes
    and the chunk count the relay reported."""
    client, counts = StreamClient(), []
    connection, relay = started_relay(client, counts)
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0)
    for data in reads:
        connection.data_received(data)
    assert (await task).sent
    return client.transport.writes, counts


def test_a_finished_stream_is_freed_by_reference_counting_alone():
    """A reference cycle per stream (relay <-> idle watchdog) once left ~12 objects a request for the
    garbage collector: 4% of the gateway's CPU, and young collections holding the loop ~25 ms."""

    async def relay_one() -> weakref.ref[Relay]:
        client = StreamClient()
        connection, relay = started_relay(client, [])
        task = asyncio.create_task(relay.run())
        await asyncio.sleep(0)
        connection.data_received(frame(DONE) + b"0\r\n\r\n")
        await task
        return weakref.ref(relay)

    gc.collect()
    gc.disable()
    try:
        freed = asyncio.run(relay_one())
        assert freed() is None
    finally:
        gc.enable()


def test_a_closed_upstream_connection_is_freed_by_reference_counting_alone():
    """Its parser holds its callbacks: left in place, a cycle for the collector per closed connection."""

    async def closed_one() -> weakref.ref[HttpConnection]:
        connection = HttpConnection()
        connection.connection_made(FakeTransport())
        connection.send(b"POST / HTTP/1.1\r\n\r\n")
        connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        connection.connection_lost(None)
        return weakref.ref(connection)

    gc.collect()
    gc.disable()
    try:
        assert asyncio.run(closed_one())() is None
    finally:
        gc.enable()


def test_a_stream_starts_in_the_read_callback_that_brought_its_first_chunk():
    async def main() -> None:
        client = StreamClient()
        _, relay = started_relay(client, [])
        assert relay.started and client.transport.writes == [b"HEAD " + frame(b"one")]  # no task has run
        assert relay.watchdog is not None
        relay.watchdog.cancel()

    asyncio.run(main())


def test_an_error_answer_does_not_start_a_stream_and_is_kept_whole():
    async def main() -> None:
        client = StreamClient()
        connection, relay = started_relay(client, [], status=b"500 Internal Server Error")
        connection.data_received(frame(b"two") + b"0\r\n\r\n")
        assert not relay.started and client.transport.writes == []
        assert b"".join(connection.buffer) == b"onetwo" and connection.done.done()

    asyncio.run(main())


def test_a_relay_writes_what_each_read_brought_in_one_write_and_ends_the_stream_once():
    """A write per chunk had cost ~6 writes a request with short answers where nginx made ~4: the
    last token and [DONE] went out on their own though they came in one read."""
    writes, counts = asyncio.run(relayed(frame(b"two"), frame(b"three") + frame(b"four") + frame(DONE) + b"0\r\n\r\n"))
    assert counts == [5]
    assert writes == [
        b"HEAD " + frame(b"one"),
        frame(b"two"),
        frame(b"three") + frame(b"four") + frame(DONE),
        b"0\r\n\r\n",
    ]


def test_the_head_goes_out_with_every_chunk_of_the_read_that_started_the_stream():
    async def main() -> None:
        client = StreamClient()
        connection = HttpConnection()
        connection.connection_made(FakeTransport())
        relay = Relay(client, "u", lambda _: {}, 60.0, [].append)  # type: ignore[arg-type]
        relay.bind(connection)
        connection.send(b"POST / HTTP/1.1\r\n\r\n", relay.first)
        connection.data_received(HEAD + frame(b"role") + frame(b"one"))
        assert client.transport.writes == [b"HEAD " + frame(b"role") + frame(b"one")]
        relay.finish()

    asyncio.run(main())


def test_a_stream_that_ends_without_done_gets_one():
    """After its finish reason some servers just close the stream: clients get [DONE] either way."""
    last = b'data: {"choices": [{"index": 0, "text": " b", "finish_reason": "stop"}]}\n\n'
    writes, _ = asyncio.run(relayed(frame(last) + b"0\r\n\r\n"))
    assert writes[-2:] == [frame(last), frame(DONE) + b"0\r\n\r\n"]


def test_keep_alive_comments_after_the_finish_reason_do_not_hide_it():
    """The finish reason was looked for in the last two chunks only: two SSE comments after it (a
    server's keep-alives) and the answer was called cut short."""
    last = b'data: {"choices": [{"index": 0, "text": " b", "finish_reason": "length"}]}\n\n'
    writes, _ = asyncio.run(relayed(frame(last), frame(b": ping\n\n"), frame(b": ping\n\n") + b"0\r\n\r\n"))
    assert writes[-1] == frame(DONE) + b"0\r\n\r\n"


def test_a_stream_that_ends_before_its_finish_reason_gets_an_error_event_first():
    """Neither a finish reason nor [DONE]: the answer was cut short, and a bare [DONE] made it whole."""
    cut = b'data: {"choices": [{"index": 0, "text": " b", "finish_reason": null}]}\n\n'
    writes, _ = asyncio.run(relayed(frame(cut) + b"0\r\n\r\n"))
    end = writes[-1]
    assert b"ended before its answer did" in end and end.index(b"ended before") < end.index(b"data: [DONE]")


def test_a_stream_that_ends_while_reading_is_paused_for_a_slow_client_is_not_pooled():
    """Its reading is paused and a resume is scheduled: pooled, the next request on it read nothing
    until the old client drained, or was aborted by that resume if the old client had gone."""

    async def main() -> None:
        client = StreamClient()
        client.transport.buffered = WRITE_FAST_LIMIT + 1  # the client reads nothing
        connection, relay = started_relay(client, [])
        upstream = connection.transport
        assert isinstance(upstream, FakeTransport)
        task = asyncio.create_task(relay.run())
        await asyncio.sleep(0)
        connection.data_received(frame(b"two") + frame(DONE) + b"0\r\n\r\n")  # pauses, and ends, in one read
        await task
        assert relay.paused and not upstream.reading
        ConnectionPool(1.0).release("u", connection)
        assert upstream.closing  # closed, not kept for the next request
        client.transport.buffered = 0
        await asyncio.sleep(0.03)  # the resume that was scheduled finds the stream over
        assert not upstream.reading

    asyncio.run(main())


def test_a_silence_while_the_client_reads_nothing_is_not_blamed_on_the_expert():
    async def main() -> None:
        client = StreamClient()
        client.transport.buffered = WRITE_FAST_LIMIT + 1
        connection, relay = started_relay(client, [], idle_timeout_s=0.04)
        assert isinstance(connection.transport, FakeTransport)
        connection.transport.protocol = connection
        task = asyncio.create_task(relay.run())
        await asyncio.sleep(0)
        connection.data_received(frame(b"two"))  # the client's buffer is full: reading pauses
        await asyncio.wait_for(task, 5)  # the watchdog aborts the upstream all the same
        assert b"the client stopped reading" in client.transport.written
        assert b"the expert stopped answering" not in client.transport.written

    asyncio.run(main())


def test_release_closes_a_connection_whose_request_was_cancelled():
    """Its `done` was cancelled with the request awaiting it; the answer's end, parsed after, made the
    connection look reusable, and `release` raised CancelledError and left the socket open."""

    async def main() -> None:
        connection, _ = await feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\npart")
        connection.done.cancel()
        connection.data_received(b"s")
        assert connection.reusable
        ConnectionPool(1.0).release("u", connection)
        assert isinstance(connection.transport, FakeTransport) and connection.transport.closing

    asyncio.run(main())


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class OnePool(ConnectionPool):
    """Connections on fake sockets; `sent(connection)` runs on the loop's next turn after a request
    goes on one, standing for the expert's answer."""

    def __init__(self, sent: Callable[[HttpConnection], None]):
        super().__init__(1.0)
        self.sent = sent
        self.connection: HttpConnection | None = None

    async def acquire(self, base_url: str, fresh: bool = False) -> HttpConnection:
        connection = self.connection = HttpConnection()
        transport = FakeTransport()
        transport.protocol = connection
        connection.connection_made(transport)
        asyncio.get_running_loop().call_soon(self.sent, connection)
        return connection


def forwarder(pool: ConnectionPool, first_token_timeout_s: float = 5.0) -> tuple[Forwarder, Experts]:
    d = Deployment(
        classifier=Path("unused"),
        experts=[ExpertConfig(cluster=0, model="expert-0", endpoints=["http://127.0.0.1:9"])],  # type: ignore[list-item]
        gateway={"first_token_timeout_s": first_token_timeout_s},  # type: ignore[arg-type]
    )
    experts = Experts(d.experts, d.gateway)
    return Forwarder(d.gateway, experts, GatewayMetrics(), pool), experts


def forwarded(fw: Forwarder, client: StreamClient) -> asyncio.Task:
    request = parse_request(b'{"prompt": "hello", "stream": true}', chat=False)
    timing = Timing(clock(), clock())
    return asyncio.create_task(fw.forward(client, request, Plan(0, [0], classified=False), timing))  # type: ignore[arg-type]


def test_a_full_fallback_expert_is_passed_over_for_the_next_cluster():
    """The routed expert down, the nearest fallback full: the request got a 429 although the next
    cluster of the plan was idle."""

    async def main() -> None:
        def answer(connection: HttpConnection) -> None:
            connection.data_received(HEAD + frame(b"one") + frame(DONE) + b"0\r\n\r\n")

        d = Deployment(
            classifier=Path("unused"),
            experts=[
                ExpertConfig(cluster=c, model=f"expert-{c}", endpoints=[f"http://127.0.0.1:{10 + c}"])  # type: ignore[list-item]
                for c in range(3)
            ],
            gateway={"queue_timeout_s": 0, "max_inflight_per_expert": 1},  # type: ignore[arg-type]
        )
        experts = Experts(d.experts, d.gateway)
        fw = Forwarder(d.gateway, experts, GatewayMetrics(), OnePool(answer))
        experts.by_cluster[0].replicas[0].record_failure(1, "down")
        client = StreamClient()
        request = parse_request(b'{"prompt": "hello", "stream": true}', chat=False)
        async with experts.by_cluster[1].slot():  # the nearest fallback is full
            response = await fw.forward(client, request, Plan(0, [0, 1, 2], classified=True), Timing(clock(), clock()))  # type: ignore[arg-type]
        assert response.sent and response.headers["X-Expert-Cluster"] == "2"
        # The routed expert's own queue still answers 429: back-pressure on the expert the prompt is for.
        async with experts.by_cluster[2].slot():
            with pytest.raises(Saturated):
                await fw.forward(client, request, Plan(2, [2, 1], classified=True), Timing(clock(), clock()))  # type: ignore[arg-type]

    asyncio.run(main())


def test_a_request_cancelled_as_its_stream_starts_lets_go_of_everything():
    """The client hangs up in the loop pass in which the expert's first chunk started the stream, before
    the request's task has run again: the relay's watchdog must stop, its chunks be counted, and the
    upstream connection be closed, although the task never reached the relay's `run`."""

    async def main() -> None:
        client = StreamClient()
        tasks: list[asyncio.Task] = []

        def answer(connection: HttpConnection) -> None:
            connection.data_received(HEAD + frame(b"one"))  # starts the stream in this read callback
            tasks[0].cancel()

        pool = OnePool(answer)
        fw, experts = forwarder(pool)
        tasks.append(forwarded(fw, client))
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]
        assert client.transport.writes == [b"HEAD " + frame(b"one")]
        assert pool.connection is not None and isinstance(pool.connection.transport, FakeTransport)
        assert pool.connection.transport.closing  # the engine learns the client is gone
        assert fw.metrics.registry.get_sample_value("expert_router_streamed_chunks_total") == 1.0
        expert = experts.by_cluster[0]
        assert expert.inflight == 0 and expert.replicas[0].inflight == 0

    asyncio.run(main())


def test_a_stream_that_starts_as_the_first_token_timeout_fires_is_relayed_whole():
    """The timeout and the expert's first chunk fall due in one loop pass, the timeout first: the
    chunk starts the stream before the request's task learns of the timeout. The stream is the
    client's then: before, the wait's clean-up aborted the upstream, and the client got one token
    and an error event."""
    timeout_s = 0.3

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client = StreamClient()

        def sent(connection: HttpConnection) -> None:
            now = loop.time()  # the timeout's deadline is at most now + timeout_s
            loop.call_at(now + timeout_s - 0.05, time.sleep, 0.1)  # hold the loop past both
            loop.call_at(now + timeout_s + 0.02, connection.data_received, HEAD + frame(b"one"))

        pool = OnePool(sent)
        fw, experts = forwarder(pool, first_token_timeout_s=timeout_s)
        task = forwarded(fw, client)
        while not client.transport.writes:
            await asyncio.sleep(0.01)
        connection = pool.connection
        assert connection is not None and isinstance(connection.transport, FakeTransport)
        await asyncio.sleep(0.01)
        assert not connection.transport.closing
        connection.data_received(frame(b"two") + frame(DONE) + b"0\r\n\r\n")
        response = await asyncio.wait_for(task, 5)
        assert response.sent and experts.by_cluster[0].replicas[0].failures == 0
        assert client.transport.writes == [b"HEAD " + frame(b"one"), frame(b"two") + frame(DONE), b"0\r\n\r\n"]

    asyncio.run(main())


def test_a_simulated_request_ends_when_its_last_bytes_arrive_not_when_its_task_runs_again():
    """Its end was stamped when the request's task next ran: later than its last chunk's stamp by however
    long the event loop was busy, added to its response time."""

    async def main() -> RequestRecord:
        def answer(connection: HttpConnection) -> None:
            event = b'data: {"choices": [{"text": "x", "finish_reason": "stop"}]}\n\n'
            connection.data_received(HEAD + frame(event) + frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            time.sleep(0.05)  # the loop is busy before the request's task runs again

        record = RequestRecord(0, 0, 0, 0, 5, 1, 0.0)
        await send(OnePool(answer), Target("http://u", model="m"), b"{}", record, 0.0, 5.0)
        return record

    record = asyncio.run(main())
    assert record.ok and record.output_tokens == 1
    assert record.t_end is not None and record.t_end - record.chunk_times[-1] < 0.01


def test_a_bug_after_a_stream_began_is_not_answered_with_a_second_head(classifier):
    """The server cuts such a stream short (and logs the bug); a 500 answer written after it had been
    a second response head inside the stream."""

    class Request:
        path = "/v1/completions"
        headers: dict[bytes, bytes] = {}
        body = b'{"prompt": "hello", "stream": true}'
        streaming = False

        def start_stream(self, headers: dict[str, str], first: bytes = b"") -> None:
            self.streaming = True

    class Broken:
        async def forward(self, request: Request, *_: object) -> None:
            request.start_stream({})
            raise RuntimeError("a bug")

    gateway = build_app(deployment([0]), classifier)
    gateway.forwarder = Broken()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(gateway.generate(Request(), chat=False))  # type: ignore[arg-type]


def test_after_start_up_the_collector_freezes_what_is_alive_and_runs_rarely():
    threshold = gc.get_threshold()
    try:
        settle_after_start_up()
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == collector.YOUNG > threshold[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
