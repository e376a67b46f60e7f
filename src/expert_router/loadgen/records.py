"""One JSON line per finished request, appended and flushed as it ends: a crash loses nothing finished.

Times are seconds on the run's monotonic clock (`time.monotonic()` minus the run's `t0`, which the
run's meta record keeps, so stamps from other processes on the machine can be compared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson


@dataclass
class RequestRecord:
    request_id: int
    workload_id: int
    user_id: int
    cluster_drawn: int
    prompt_tokens: int
    max_tokens: int
    t_scheduled: float
    t_start: float
    cluster_routed: int | None = None
    expert: str | None = None
    t_first_token: float | None = None
    t_end: float | None = None
    token_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    chunks: int = 0
    usage_tokens: int | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    status: str = "ok"
    error: str | None = None
    route_ms: float | None = None
    server_stamps: list[float] | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_SERIALIZE_NUMPY)


class RecordWriter:
    """Appends records to a JSONL file, flushing each one."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "ab", buffering=0)

    def write(self, record: RequestRecord) -> None:
        self._file.write(record.to_json() + b"\n")

    def write_raw(self, obj: dict) -> None:
        self._file.write(orjson.dumps(obj) + b"\n")

    def close(self) -> None:
        self._file.close()


def read_records(path: Path) -> list[dict]:
    """Every request record of a file (meta lines, which carry a "meta" key, are skipped)."""
    records = []
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                obj = orjson.loads(line)
                if "meta" not in obj:
                    records.append(obj)
    return records
