"""One JSON line per finished request, appended and flushed as it ends: a crash loses nothing finished.

`RequestRecord` is the one schema: the simulator writes it, the virtual-time simulator writes it, and
metrics and the report read it back as the same type (`read_records`), never as loose dicts.

Times are seconds on the run's monotonic clock (`wire.clock()` minus the run's `t0`, which the run's
meta line keeps, so stamps from other processes on the machine can be compared). Every streamed chunk
that carries `choices` is kept with its arrival time and its token count, empty text included (an
end-of-sequence, a special token, half a UTF-8 character): a server may pack several tokens into one
chunk, so chunks are not tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import orjson

from expert_router.errors import UserError

Status = Literal["ok", "error", "http_error", "cancelled"]
TokenSource = Literal["usage-continuous", "usage-spread", "chunks"]
"""How chunk token counts were known: the server's running usage on every chunk (exact), its final
usage spread over the chunks, or one token per chunk with text (no usage at all)."""


@dataclass
class RequestRecord:
    request_id: int
    workload_id: int
    user_id: int
    cluster_drawn: int
    prompt_tokens: int
    max_tokens: int
    t_scheduled: float
    """When the request was due: the schedule's time in open loop, the send time in closed loop."""
    t_start: float = 0.0
    cluster_routed: int | None = None
    expert: str | None = None
    t_first_token: float | None = None
    """Arrival of the first chunk that carries a token."""
    t_end: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    output_tokens: int = 0
    """The server's `usage.completion_tokens` when it sent one, else the sum of `chunk_tokens`."""
    usage_tokens: int | None = None
    token_source: TokenSource = "chunks"
    finish_reason: str | None = None
    http_status: int | None = None
    status: Status = "ok"
    error: str | None = None
    server_timing: dict[str, float] = field(default_factory=dict)
    """The gateway's Server-Timing in seconds: route, classify, queue, connect."""
    server_stamps: list[float] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def token_times(self) -> list[float]:
        """Arrival times of the chunks that carry tokens."""
        if 0 not in self.chunk_tokens:  # the common case, checked at C speed: every chunk carries tokens
            return list(self.chunk_times)
        return [t for t, n in zip(self.chunk_times, self.chunk_tokens) if n > 0]

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """A record as written, also from files written before chunks carried token counts."""
        if "token_times" in data and "chunk_times" not in data:  # one chunk was one token
            data = {**data, "chunk_times": data["token_times"], "chunk_tokens": [1] * len(data["token_times"])}
        if data.get("route_ms") is not None and "server_timing" not in data:
            data = {**data, "server_timing": {"route": data["route_ms"] / 1000}}
        nulls = [name for name in _NOT_NULL if name in data and data[name] is None]
        if nulls:  # found here, not as a TypeError deep in the metrics
            raise ValueError(f"{', '.join(sorted(nulls))} cannot be null")
        return cls(**{name: data[name] for name in _FIELDS if name in data})


_FIELDS = frozenset(f.name for f in fields(RequestRecord))
_NOT_NULL = frozenset(f.name for f in fields(RequestRecord) if "None" not in str(f.type))


class RecordWriter:
    """Appends records to a JSONL file, flushing each one."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "ab", buffering=0)

    def write(self, record: RequestRecord) -> None:
        self._file.write(record.to_json() + b"\n")

    def write_meta(self, meta: dict[str, Any]) -> None:
        """A line that describes the run (settings, clock origin); readers skip it."""
        self._file.write(orjson.dumps({"meta": True, **meta}) + b"\n")

    def close(self) -> None:
        self._file.close()


def write_records(path: Path, records: list[RequestRecord], meta: dict[str, Any]) -> None:
    """A whole run's file at once, as `RecordWriter` writes it line by line (a simulated run has
    nothing to lose to a crash, and one write instead of one per record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [orjson.dumps({"meta": True, **meta}), *(record.to_json() for record in records)]
    path.write_bytes(b"\n".join(lines) + b"\n")


def read_records(path: Path) -> list[RequestRecord]:
    """Every request record of a file (meta lines, which carry a "meta" key, are skipped)."""
    records = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    obj = orjson.loads(line)
                    if "meta" not in obj:
                        records.append(RequestRecord.from_dict(obj))
                except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, ValueError) as exc:
                    raise UserError(f"{path}, line {number}, is not a request record: {exc}") from None
    return records


def read_meta(path: Path) -> dict[str, Any]:
    """The first meta line of a records file ({} when there is none)."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                obj = orjson.loads(line)
                if "meta" in obj:
                    return dict(obj)
    return {}
