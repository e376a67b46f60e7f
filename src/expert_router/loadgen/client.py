"""Send one streaming request and time every token the moment its bytes are read."""

from __future__ import annotations

import asyncio
import functools
import time

import aiohttp
import orjson
from aiohttp.client_proto import ResponseHandler

from expert_router.loadgen.records import RequestRecord
from expert_router.loadgen.workload import WorkItem

clock = time.monotonic


class _StampingHandler(ResponseHandler):
    """aiohttp's connection protocol, noting when bytes last came off the socket.

    A task that reads a stream runs some time after its bytes arrived: under load, behind every other
    task woken in the same event-loop pass. Stamping here, in `data_received`, takes the time before
    that queueing, so token times stay exact even when many streams deliver at once.
    """

    received_at: float | None = None

    def data_received(self, data: bytes) -> None:
        self.received_at = clock()
        super().data_received(data)


def stamping_connector() -> aiohttp.TCPConnector:
    """A connector without a connection cap whose connections stamp arrivals (see _StampingHandler)."""
    connector = aiohttp.TCPConnector(limit=0)
    if hasattr(connector, "_factory"):  # aiohttp's protocol factory; without it, stamps are taken on read
        connector._factory = functools.partial(_StampingHandler, loop=asyncio.get_running_loop())
    return connector


def request_body(item: WorkItem, chat: bool, model: str | None, ignore_eos: bool) -> bytes:
    body: dict = {"max_tokens": item.max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    if chat:
        body["messages"] = [{"role": "user", "content": item.prompt}]
    else:
        body["prompt"] = item.prompt
    if ignore_eos:
        body["ignore_eos"] = True
    return orjson.dumps(body)


async def send(session: aiohttp.ClientSession, url: str, body: bytes, record: RequestRecord, t0: float,
               chat: bool) -> None:
    """Fill `record` from one streaming request. Never raises for a failed request: it records it."""
    record.t_start = clock() - t0
    stamps: list[float] = []
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            record.http_status = response.status
            record.cluster_routed = _int_header(response.headers.get("X-Expert-Cluster"))
            record.expert = response.headers.get("X-Expert-Model")
            timing = response.headers.get("Server-Timing")
            if timing and "route;dur=" in timing:
                record.route_ms = float(timing.split("route;dur=", 1)[1].split(",", 1)[0].split(";", 1)[0])
            if response.status != 200:
                text = (await response.read())[:500].decode("utf-8", "replace")
                record.status, record.error = "http_error", f"HTTP {response.status}: {text}"
                return
            buffer = b""
            content = response.content
            protocol = response.connection.protocol if response.connection is not None else None
            stamped = isinstance(protocol, _StampingHandler)
            while True:
                data = await content.readany()
                if not data:
                    break
                now = (protocol.received_at if stamped else clock()) - t0  # type: ignore[union-attr]
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"data: "):
                        _event(line[6:], now, record, chat, stamps)
            if record.status == "ok" and record.finish_reason is None and record.output_tokens == 0:
                record.status, record.error = "error", "the stream ended without a token"
    except asyncio.CancelledError:
        record.status, record.error = "cancelled", "the run stopped while this request was in flight"
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        record.status, record.error = "error", f"{exc.__class__.__name__}: {exc}"
    finally:
        record.t_end = clock() - t0
        if record.usage_tokens:
            record.output_tokens = record.usage_tokens  # the server's count wins over counting chunks
        if stamps:
            record.server_stamps = stamps


def _event(payload: bytes, now: float, record: RequestRecord, chat: bool, stamps: list[float]) -> None:
    if payload.startswith(b"[DONE]"):
        return
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        record.status, record.error = "error", f"unparseable event: {payload[:200]!r}"
        return
    if "error" in event:
        record.status = "error"
        record.error = str(event["error"].get("message") if isinstance(event["error"], dict) else event["error"])
        return
    usage = event.get("usage")
    if usage:
        record.usage_tokens = usage.get("completion_tokens")
    choices = event.get("choices") or []
    if not choices:
        return
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    if choice.get("finish_reason"):
        record.finish_reason = choice["finish_reason"]
    if not text:
        return  # a role-only or empty chunk carries no token
    record.chunks += 1
    record.output_tokens = record.chunks
    record.token_times.append(now)
    if record.t_first_token is None:
        record.t_first_token = now
    if "t" in event:
        stamps.append(event["t"])


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
