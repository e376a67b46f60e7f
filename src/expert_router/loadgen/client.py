"""Send one streaming request and time every chunk the moment its bytes come off the socket.

A task that reads a stream runs some time after its bytes arrived: under load, behind every other
task woken in the same event-loop pass. The request goes over the project's own llhttp connection
(`expert_router.wire`), whose body callback runs inside the socket's read callback: the clock read
there is the time stamped on each chunk, before any queueing. It is this project's own public API, so
the stamps cannot silently fall back to read time when another library changes its internals.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from expert_router.errors import ConnectionFailed
from expert_router.http import parse_server_timing
from expert_router.loadgen.records import RequestRecord
from expert_router.loadgen.sse import EventStream, StreamAccount
from expert_router.loadgen.workload import WorkItem
from expert_router.wire import ConnectionPool, HttpConnection, clock

USAGE_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}
"""Asked of every server: usage on every chunk where it can (vLLM), else at the end (OpenAI)."""


def url_problem(url: str) -> str | None:
    """What is wrong with `url` as a base URL to send requests to, or None: checked before a run starts,
    not found out by every request of it."""
    if not url.startswith(("http://", "https://")):
        return f"must start with http:// or https://, got {url!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
    except ValueError as exc:
        return f"{url!r} is not a valid URL: {exc}"
    if not parts.hostname:
        return f"{url!r} names no host"
    return None


@dataclass(frozen=True)
class Target:
    """Where requests go: a base URL and the endpoint."""

    base_url: str
    chat: bool = False
    model: str | None = None
    ignore_eos: bool = False

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"

    def body(self, item: WorkItem) -> bytes:
        body: dict[str, Any] = {"max_tokens": item.max_tokens, "stream": True, "stream_options": USAGE_OPTIONS}
        if self.model:  # `expert-{cluster}` sends each prompt to the expert of the cluster it was drawn from
            body["model"] = self.model.replace("{cluster}", str(item.cluster))
        if self.chat:
            body["messages"] = [{"role": "user", "content": item.prompt}]
        else:
            body["prompt"] = item.prompt
        if self.ignore_eos:
            body["ignore_eos"] = True
        return orjson.dumps(body)


async def send(
    pool: ConnectionPool, target: Target, body: bytes, record: RequestRecord, t0: float, timeout_s: float
) -> None:
    """Fill `record` from one streaming request. Never raises for a failed request: it records it."""
    record.t_start = clock() - t0
    reader = _Reader(record, target.chat, t0)
    connection: HttpConnection | None = None
    message = pool.post_json(target.base_url, target.path, body, True)
    try:
        async with asyncio.timeout(timeout_s):
            connection = await pool.open(target.base_url, message, reader.sink)
            _headers(record, connection)
            await connection.done
        reader.finish(connection)
    except asyncio.CancelledError:
        record.status, record.error = "cancelled", "the run stopped while this request was in flight"
        raise
    except TimeoutError:
        record.status, record.error = "error", f"no complete answer within {timeout_s:g} s"
    except ConnectionFailed as exc:
        record.status, record.error = "error", f"{exc.__class__.__name__}: {exc}"
    finally:
        # The answer's end as the socket brought it, like every chunk's stamp; not when this task ran again.
        done_at = connection.done_at if connection is not None and connection.done_at else clock()
        record.t_end = done_at - t0
        if connection is not None:
            connection.sink = None
            pool.release(target.base_url, connection)


def _headers(record: RequestRecord, connection: HttpConnection) -> None:
    record.http_status = connection.status
    headers = connection.headers
    cluster = headers.get(b"x-expert-cluster")
    record.cluster_routed = int(cluster) if cluster is not None and cluster.isdigit() else None
    expert = headers.get(b"x-expert-model")
    record.expert = expert.decode("utf-8", "replace") if expert is not None else None
    timing = headers.get(b"server-timing")
    record.server_timing = parse_server_timing(timing.decode("latin-1")) if timing is not None else {}


class _Reader:
    """The connection's sink: SSE events into the record, each stamped with its socket arrival time."""

    def __init__(self, record: RequestRecord, chat: bool, t0: float):
        self.record = record
        self.t0 = t0
        self.events = EventStream()
        self.account = StreamAccount(record, chat)
        self.head = b""
        """The first bytes of the body: the message of an error answer."""

    def sink(self, data: bytes) -> None:
        """Runs inside the socket's read callback: `clock()` here is the chunk's arrival time."""
        now = clock() - self.t0
        if len(self.head) < 500:
            self.head += data[: 500 - len(self.head)]
        for payload in self.events.feed(data):
            self.account.add(payload, now)

    def finish(self, connection: HttpConnection) -> None:
        if connection.status != 200:
            text = self.head.decode("utf-8", "replace")
            self.record.status, self.record.error = "http_error", f"HTTP {connection.status}: {text}"
            return
        now = clock() - self.t0
        for payload in self.events.close():
            self.account.add(payload, now)
        self.account.finish()
