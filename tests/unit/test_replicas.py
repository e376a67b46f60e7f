import asyncio

import pytest

from expert_router.config import ExpertConfig, GatewaySettings
from expert_router.errors import Saturated
from expert_router.gateway.replicas import Expert


def make_pool(**settings) -> Expert:
    expert = ExpertConfig(cluster=0, model="m", endpoints=["http://a:1", "http://b:2", "http://c:3"])
    return Expert(expert, GatewaySettings(**settings))


def test_least_busy_healthy_replica_first():
    pool = make_pool()
    a, b, c = pool.replicas
    a.inflight, b.inflight, c.inflight = 3, 1, 2
    assert [r.url for r in pool.healthy()] == ["http://b:2", "http://c:3", "http://a:1"]
    b.record_failure(failures_to_down=2, why="x")
    assert b.healthy  # one failure is not enough
    b.record_failure(failures_to_down=2, why="x")
    assert not b.healthy and [r.url for r in pool.healthy()] == ["http://c:3", "http://a:1"]
    b.record_success()
    assert b.healthy and b.failures == 0


def test_slots_queue_then_saturate():
    async def scenario():
        pool = make_pool(max_inflight_per_expert=1, queue_timeout_s=0.05)
        async with pool.slot():
            assert pool.inflight == 1
            with pytest.raises(Saturated):
                async with pool.slot():
                    pass
        async with pool.slot():  # freed again
            assert pool.inflight == 1
        assert pool.inflight == 0

    asyncio.run(scenario())


def test_a_queued_request_gets_the_slot_when_it_frees():
    async def scenario():
        pool = make_pool(max_inflight_per_expert=1, queue_timeout_s=1.0)
        order = []

        async def hold():
            async with pool.slot():
                order.append("first")
                await asyncio.sleep(0.05)

        async def wait():
            await asyncio.sleep(0.01)
            async with pool.slot():
                order.append("second")

        await asyncio.gather(hold(), wait())
        assert order == ["first", "second"]

    asyncio.run(scenario())
