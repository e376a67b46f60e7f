"""Reading an OpenAI-style event stream into a record: SSE by the spec, tokens counted, not chunks.

Server-sent events (WHATWG HTML, "Server-sent events"): lines end in CRLF, LF or CR; `data:` with or
without one space after the colon; several `data` lines of one event are joined with newlines; a line
that starts with `:` is a comment; an empty line ends the event. Bytes arrive in arbitrary pieces, so an
event (and a line, and a CRLF) may be split across reads.

Token accounting, best source first (see `records.TokenSource`):
1. `usage` on every chunk (vLLM's `continuous_usage_stats`): each chunk's tokens are the growth of
   `completion_tokens`, exact for packed chunks and for chunks with empty text.
2. A final `usage` only: its `completion_tokens` are spread over the chunks that carry text or a
   finish reason, in proportion, as whole numbers that add up.
3. No usage: one token per chunk with text.
"Text" in a chat delta is any generated output: content, reasoning, tool calls (`GENERATED_FIELDS`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from expert_router.loadgen.records import RequestRecord

_LINE_END = re.compile(rb"\r\n|\r|\n")


class EventStream:
    """Incremental SSE parser: `feed(bytes)` returns the `data` of every event it completed."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._skip_lf = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._skip_lf and data.startswith(b"\n"):
            data = data[1:]  # the LF of a CRLF whose CR ended the previous read
        text = self._pending + data
        self._skip_lf = text.endswith(b"\r")
        lines = _LINE_END.split(text)
        self._pending = lines.pop()  # a line whose end has not arrived yet
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: bytes) -> bytes | None:
        if not line:
            if not self._data:
                return None
            event, self._data = b"\n".join(self._data), []
            return event
        if line.startswith(b":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)
        return None

    def close(self) -> list[bytes]:
        """At the end of the stream: a last event without its blank line still counts."""
        events = self.feed(b"\n\n") if (self._pending or self._data) else []
        return events


class StreamAccount:
    """Fills a record from the events of one streamed answer (`add` each event, then `finish`)."""

    def __init__(self, record: RequestRecord, chat: bool):
        self.record = record
        self.chat = chat
        self._running_usage: int | None = None
        self._continuous = True
        self._weights: list[int] = []
        self._done = False

    def add(self, payload: bytes, now: float) -> None:
        if payload.strip() == b"[DONE]":
            self._done = True
            return
        if not payload.strip():
            return  # an event with empty data is allowed by the SSE spec, and says nothing
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._fail(f"unparseable event: {payload[:200]!r}")
            return
        if not isinstance(event, dict):
            self._fail(f"an event that is not a JSON object: {payload[:200]!r}")
        elif "error" in event:
            error = event["error"]
            self._fail(str(error.get("message") if isinstance(error, dict) else error))
        else:
            self._event(event, now)

    def _fail(self, why: str) -> None:
        self.record.status, self.record.error = "error", why

    def _event(self, event: dict[str, Any], now: float) -> None:
        record = self.record
        usage = event.get("usage")
        completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(completion, int):
            record.usage_tokens = completion
        choices = event.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        text = _generated(choice.get("delta")) if self.chat else choice.get("text")
        if choice.get("finish_reason"):
            record.finish_reason = choice["finish_reason"]
        self._weights.append(1 if text or choice.get("finish_reason") else 0)
        if isinstance(completion, int):
            record.chunk_tokens.append(completion - (self._running_usage or 0))
            self._running_usage = completion
        else:
            self._continuous = False
            # One token per chunk with text. A chunk with only a finish reason (OpenAI-style streams end
            # with an empty delta) weighs in the spread of a final usage (an EOS token is counted there),
            # but is no token of its own: counted, every answer had one more, and an empty one looked ok.
            record.chunk_tokens.append(1 if text else 0)
        record.chunk_times.append(now)
        if "t" in event and isinstance(event["t"], int | float):
            record.server_stamps = (record.server_stamps or []) + [float(event["t"])]
        if record.t_first_token is None and (record.chunk_tokens[-1] > 0):
            record.t_first_token = now

    def finish(self) -> None:
        """Settle token counts once the stream has ended."""
        record = self.record
        if record.chunk_times and self._continuous and self._running_usage is not None:
            record.token_source = "usage-continuous"
        elif record.usage_tokens is not None and any(self._weights):
            record.chunk_tokens = spread(record.usage_tokens, self._weights)
            record.token_source = "usage-spread"
            firsts = [t for t, n in zip(record.chunk_times, record.chunk_tokens) if n > 0]
            record.t_first_token = firsts[0] if firsts else None
        else:
            record.token_source = "chunks"
        record.output_tokens = record.usage_tokens if record.usage_tokens is not None else sum(record.chunk_tokens)
        if record.status == "ok" and record.finish_reason is None and record.output_tokens == 0:
            self._fail("the stream ended without a token")
        elif record.status == "ok" and record.finish_reason is None and not self._done:
            # The HTTP message ended cleanly, but the answer did not: counted a success, its tokens
            # and times were a short answer's, and the run looked measured well.
            self._fail("the stream ended without a finish_reason or [DONE]: cut short")


GENERATED_FIELDS = ("content", "reasoning_content", "reasoning", "tool_calls")
"""Chat delta fields that carry generated tokens: the answer, a reasoning model's thinking (vLLM and
DeepSeek name it `reasoning_content`, newer servers `reasoning`) and tool calls. Counting only
`content`, a reasoning model's first token was its first answer token, after all its thinking."""


def _generated(delta: object) -> object:
    """The first generated output of a chat delta (None when it has none: a role-only first chunk)."""
    if not isinstance(delta, dict):
        return None
    return next((delta[name] for name in GENERATED_FIELDS if delta.get(name)), None)


def spread(total: int, weights: list[int]) -> list[int]:
    """`total` split over `weights` in proportion, as whole numbers that add up (largest remainder)."""
    weight_sum = sum(weights)
    if weight_sum == 0:
        return [0] * len(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts
