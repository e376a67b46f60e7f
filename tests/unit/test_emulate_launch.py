"""Several emulated engines in one process: every port takes connections once the first answers."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from expert_router.emulate import launch
from expert_router.emulate.options import parse_command
from expert_router.errors import UserError
from expert_router.testing import consecutive_free_ports, listening


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


def test_every_port_listens_before_the_first_is_served(monkeypatch):
    """A client (or a test's readiness check) that finds the first port answering may go at once to any
    other: none may refuse it. Sites started one by one, each yielding to the loop, did."""
    monkeypatch.setattr(launch, "settle_after_start_up", lambda: None)  # gc.freeze: not in a test process
    base = consecutive_free_ports(8)
    instances, _ = parse_command(f"expert-router emulate --preset paper-e --port {base}")

    async def main() -> list[bool]:
        serving = asyncio.create_task(launch.serve_all(instances, "127.0.0.1", 1.0))
        while not await _accepts(base):
            assert not serving.done(), serving.exception()
        accepted = [listening(base + i) for i in range(8)]  # blocking: the server gets no turn meanwhile
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        return accepted

    assert uvloop.run(main()) == [True] * 8  # the loop `emulate` runs on


def test_a_port_in_use_is_a_clear_error_and_frees_the_others():
    base = consecutive_free_ports(3)
    instances, _ = parse_command(f"expert-router emulate --preset paper-e --port {base}")
    in_use = f"cannot listen on 127.0.0.1:{base + 2}"
    with launch.listen("127.0.0.1", base + 2), pytest.raises(UserError, match=in_use):
        asyncio.run(launch.serve_all(instances[:3], "127.0.0.1", 1.0))
    for port in (base, base + 1):  # bound before the failure, closed again
        launch.listen("127.0.0.1", port).close()
