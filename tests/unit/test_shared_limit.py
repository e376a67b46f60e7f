"""Per-expert limits shared by several gateways, counted in a real (scratch) Redis server."""

import asyncio

import pytest

from expert_router.config import ExpertConfig, GatewaySettings
from expert_router.errors import Saturated, Unavailable
from expert_router.gateway.replicas import Experts
from expert_router.gateway.shared_limit import LimitStore
from expert_router.testing import free_port


def test_two_gateways_share_one_limit(redis_url):
    """What one gateway holds, the other cannot take; what it frees, the other's waiter gets."""

    async def main() -> None:
        a, b = LimitStore(redis_url, lease_s=30), LimitStore(redis_url, lease_s=30)
        on_a, on_b = a.limit("expert-0", 2, queue_timeout_s=0.1), b.limit("expert-0", 2, queue_timeout_s=2.0)
        first, second = await on_a.acquire(), await on_a.acquire()
        assert first and second
        assert await on_a.acquire() is None  # full, from a's side too
        waiting = asyncio.create_task(on_b.acquire())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await on_a.release(first)
        assert await asyncio.wait_for(waiting, 2.0)  # polled, not told: another process freed it
        assert await a.redis.zcard(on_a.key) == 2
        await a.stop()  # gives back what a holds
        assert await b.redis.zcard(on_b.key) == 1
        await b.stop()

    asyncio.run(main())


def test_waiters_of_one_gateway_are_served_in_arrival_order(redis_url):
    async def main() -> None:
        store = LimitStore(redis_url, lease_s=30)
        limit = store.limit("expert-1", 1, queue_timeout_s=5.0)
        holding = await limit.acquire()
        order: list[int] = []

        async def wait(i: int) -> None:
            lease = await limit.acquire()
            order.append(i)
            await asyncio.sleep(0.01)
            assert lease is not None
            await limit.release(lease)

        waiters = []
        for i in range(4):
            waiters.append(asyncio.create_task(wait(i)))
            await asyncio.sleep(0.01)
        assert holding is not None
        await limit.release(holding)
        await asyncio.gather(*waiters)
        assert order == [0, 1, 2, 3]
        await store.stop()

    asyncio.run(main())


def test_a_dead_gateways_slots_lapse_and_a_live_ones_are_renewed(redis_url):
    async def main() -> None:
        dead, live = LimitStore(redis_url, lease_s=0.6), LimitStore(redis_url, lease_s=0.6)
        live.start()  # renews every 0.2 s; the dead one never does
        assert await dead.limit("expert-2", 2, 0).acquire()
        on_live = live.limit("expert-2", 2, queue_timeout_s=0)
        assert await on_live.acquire()
        assert await on_live.acquire() is None
        await asyncio.sleep(1.5)  # past the lease: the dead gateway's slot lapsed, the live one's did not
        assert await on_live.acquire()
        assert await on_live.acquire() is None
        await live.stop()
        await dead.redis.aclose()

    asyncio.run(main())


def test_a_request_that_gives_up_while_queued_leaks_no_slot(redis_url):
    async def main() -> None:
        store = LimitStore(redis_url, lease_s=30)
        limit = store.limit("expert-3", 1, queue_timeout_s=5.0)
        held = await limit.acquire()
        assert held is not None
        waiting = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0.05)
        waiting.cancel()  # its client hung up
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await limit.release(held)
        await asyncio.sleep(0.2)  # the poller notices the cancelled waiter and takes nothing for it
        assert await store.redis.zcard(limit.key) == 0
        await store.stop()

    asyncio.run(main())


def test_a_release_cancelled_midway_still_gives_the_lease_back(redis_url):
    """A drain cancels a request, and the connection it closes cancels it again, while the request is
    giving its slot back: the lease must still leave the store (kept, it would hold a slot from every
    gateway for its whole term), and the request must still end cancelled (the Redis client had
    swallowed the cancellation)."""

    async def main() -> None:
        store = LimitStore(redis_url, lease_s=30)
        limit = store.limit("expert-5", 2, queue_timeout_s=0)
        lease = await limit.acquire()
        assert lease is not None and await store.redis.zcard(limit.key) == 1
        releasing = asyncio.create_task(limit.release(lease))
        await asyncio.sleep(0)  # on its way to the store
        releasing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await releasing
        await asyncio.sleep(0.2)
        assert await store.redis.zcard(limit.key) == 0
        await store.stop()

    asyncio.run(main())


def test_a_request_cancelled_while_its_slot_is_taken_gives_the_slot_back(redis_url):
    async def main() -> None:
        store = LimitStore(redis_url, lease_s=30)
        limit = store.limit("expert-6", 2, queue_timeout_s=0)
        await store.redis.ping()  # connected: the take goes out at once (the Redis client then swallowed the cancel)
        acquiring = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0)  # the store is taking a slot for it
        acquiring.cancel()  # and its client goes away
        with pytest.raises(asyncio.CancelledError):
            await acquiring
        await asyncio.sleep(0.2)
        assert await store.redis.zcard(limit.key) == 0 and not limit.held
        await store.stop()

    asyncio.run(main())


def test_an_expert_with_a_shared_limit_saturates_and_frees(redis_url):
    async def main() -> None:
        settings = GatewaySettings(
            max_inflight_per_expert=1, limit_scope="shared", limit_store=redis_url, queue_timeout_s=0.05
        )
        experts = Experts([ExpertConfig(cluster=0, model="m", endpoints=["http://a:1"])], settings)
        expert = experts.by_cluster[0]
        async with expert.slot():
            assert expert.inflight == 1
            with pytest.raises(Saturated):
                async with expert.slot():
                    pass
        async with expert.slot():  # freed again
            assert expert.inflight == 1
        assert expert.inflight == 0
        await experts.stop()

    asyncio.run(main())


def test_an_unreachable_store_refuses_rather_than_overfills():
    async def main() -> None:
        store = LimitStore(f"redis://127.0.0.1:{free_port()}/0", lease_s=3)
        with pytest.raises(Unavailable, match="cannot be reached"):
            await store.limit("expert-4", 1, 0).acquire()
        await store.redis.aclose()

    asyncio.run(main())


def test_shared_limits_need_a_store():
    with pytest.raises(ValueError, match="limit_store"):
        GatewaySettings(limit_scope="shared")
    with pytest.raises(ValueError, match="limit_store"):
        GatewaySettings(limit_scope="shared", limit_store="http://127.0.0.1:6379")
