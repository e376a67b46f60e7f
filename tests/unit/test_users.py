"""The users of a run against targets that cannot keep up: an unreachable server, a rate the client
cannot send at. Either way the run ends on time and does not flood its records."""

from __future__ import annotations

import asyncio
from pathlib import Path

from expert_router.loadgen import users
from expert_router.loadgen.records import RecordWriter, read_records
from expert_router.loadgen.users import LiveStats, RunSettings
from expert_router.loadgen.workload import WorkItem
from expert_router.testing import free_port
from expert_router.wire import clock

ITEMS = [WorkItem(i, i % 8, f"prompt {i}", 2, 4) for i in range(16)]


def run(tmp_path: Path, settings: RunSettings) -> list:
    path = tmp_path / "records.jsonl"
    writer = RecordWriter(path)

    async def main() -> None:
        # A bound of its own: the old open loop never ended at this rate.
        await asyncio.wait_for(users.run(settings, ITEMS, writer, clock(), LiveStats()), 60)

    try:
        asyncio.run(main())
    finally:
        writer.close()
    return read_records(path)


def test_closed_loop_users_back_off_from_a_target_they_cannot_reach(tmp_path: Path):
    """Sent again at once, four users made some 100,000 failed requests in 5 s against a stopped server."""
    settings = RunSettings(url=f"http://127.0.0.1:{free_port()}", users=4, duration_s=1.5, warmup=0)
    records = run(tmp_path, settings)
    assert records and all(not r.ok and r.http_status is None for r in records)
    # With a back-off doubling from 50 ms, a user makes about six attempts in 1.5 s.
    assert len(records) <= 4 * 10, len(records)


def test_an_open_loop_rate_the_client_cannot_send_at_still_ends_at_the_deadline(tmp_path: Path):
    """At 1e9 requests a second the loop never yielded: nothing sent ran, and the run never ended."""
    settings = RunSettings(url=f"http://127.0.0.1:{free_port()}", mode="open", rate=1e9, duration_s=0.5, warmup=0)
    records = run(tmp_path, settings)
    assert records  # what was sent ran, and was recorded
