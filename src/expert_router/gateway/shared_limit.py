"""Per-expert in-flight limits that hold across every gateway worker and instance, counted in Redis.

A gateway process knows only its own requests, so a per-process limit L lets N processes put N·L on
an expert, and a limit that counts the replicas' own load reports still lets two gateways answer the
same freed slot at once (each sees it free until the next read). An exact limit needs one place where
taking a slot is atomic: here a Redis server (`limit_store`), as LiteLLM and Envoy's global rate-limit
service use one.

Each request holds a *lease*: one member of a sorted set per expert, scored by the moment it lapses.
Taking a slot is one Lua script, atomic on the server: drop lapsed leases, count the rest, add ours if
under the limit. Leases are renewed while held (every third of `lease_s`), so a gateway that dies
(SIGKILL, a lost machine) frees its slots within `lease_s` instead of holding them forever. Times are
the Redis server's own (`TIME`), so the gateways' clocks need not agree.

Waiting for a slot: a process's waiters for one expert queue in arrival order, and one task per expert
asks Redis for the head's slot: at once when this process frees one, otherwise with a backoff from 2 to
50 ms, so a full expert costs each gateway at most ~50 Redis calls a second however many requests wait.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from expert_router.errors import Unavailable

log = logging.getLogger("expert_router.gateway")

TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  return 1
end
return 0
"""
"""Take a slot: KEYS[1] the expert's leases; ARGV limit, lease seconds, lease id. 1 if taken."""

RENEW = """
local t = redis.call('TIME')
local lapses = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', lapses, ARGV[i])
end
return renewed
"""
"""Push held leases' lapse forward (XX: a lease that already lapsed is not brought back)."""

KEY_PREFIX = "expert-router:inflight:"
"""Each expert's leases are under this prefix and its model name. The nginx router (`expert_router.nginx`)
runs these same scripts on the same keys, so gateways and routers in front of one expert share its count."""

FIRST_BACKOFF_S = 0.002
LAST_BACKOFF_S = 0.05


class LimitStore:
    """One gateway process's connection to the limit store, and the renewal of every lease it holds."""

    def __init__(self, url: str, lease_s: float, key_prefix: str = KEY_PREFIX):
        self.url = url
        self.lease_s = lease_s
        self.key_prefix = key_prefix
        self.redis = aioredis.Redis.from_url(url, socket_timeout=max(1.0, lease_s / 3))
        self._take = self.redis.register_script(TAKE)
        self._renew = self.redis.register_script(RENEW)
        self.limits: list[SharedLimit] = []
        self._reachable = True
        self._renewer: asyncio.Task[None] | None = None

    def limit(self, name: str, size: int, queue_timeout_s: float) -> SharedLimit:
        """The shared limit of one expert (`name`: its model name, the same in every gateway)."""
        shared = SharedLimit(self, self.key_prefix + name, size, queue_timeout_s)
        self.limits.append(shared)
        return shared

    def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever())

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for shared in self.limits:
            await shared.release_all()
        await self.redis.aclose()

    async def take(self, key: str, size: int) -> str | None:
        """A new lease on one of `size` slots, or None while all are held. Raises Unavailable when the
        store cannot be reached: admitting anyway would break the limit it exists for."""
        lease = uuid.uuid4().hex
        try:
            taken = await self._take(keys=[key], args=[size, self.lease_s, lease])
        except (RedisError, OSError) as exc:
            self._went(False, exc)
            raise Unavailable(
                f"the shared limit store {self.url} cannot be reached ({exc.__class__.__name__})",
                headers={"Retry-After": "1"},
            ) from None
        self._went(True)
        return lease if taken else None

    async def give_back(self, key: str, lease: str) -> None:
        """Free a slot. A failure only logs: the lease lapses on its own within `lease_s`."""
        try:
            await self.redis.zrem(key, lease)
        except (RedisError, OSError) as exc:
            self._went(False, exc)

    def _went(self, reachable: bool, exc: BaseException | None = None) -> None:
        """Log the store's reachability once per change, not once per request."""
        if reachable != self._reachable:
            self._reachable = reachable
            if reachable:
                log.warning("limit store %s is reachable again", self.url)
            else:
                log.warning("limit store %s cannot be reached: %r", self.url, exc)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            for shared in self.limits:
                if shared.held:
                    try:
                        await self._renew(keys=[shared.key], args=[self.lease_s, *shared.held])
                    except (RedisError, OSError) as exc:
                        self._went(False, exc)


class SharedLimit:
    """One expert's slots in the store: `await acquire()` gives a lease, `await release(lease)` frees it."""

    def __init__(self, store: LimitStore, key: str, size: int, queue_timeout_s: float):
        self.store = store
        self.key = key
        self.size = size
        self.queue_timeout_s = queue_timeout_s
        self.held: set[str] = set()
        self._waiters: collections.deque[asyncio.Future[str]] = collections.deque()
        self._poller: asyncio.Task[None] | None = None
        self._freed = asyncio.Event()
        self._releases: set[asyncio.Future[None]] = set()  # give-backs of slots taken for cancelled requests

    async def acquire(self) -> str | None:
        """A lease, or None when no slot freed within the queue timeout (the caller answers 429)."""
        if not self._waiters:
            lease = await self._take_now()
            if lease is not None:
                return lease
            if self.queue_timeout_s == 0:
                return None
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                return await asyncio.shield(waiter)
        except BaseException as exc:  # the queue timeout, or the request cancelled (its client left)
            if not waiter.done():
                waiter.cancel()  # the poller skips it
            elif not waiter.cancelled() and waiter.exception() is None:
                await self.release(waiter.result())  # taken in the very moment this request gave up
            if isinstance(exc, TimeoutError):
                return None
            raise

    async def _take_now(self) -> str | None:
        """A free slot's lease, or None. Shielded: a request cancelled while the store takes a slot for it
        (its client left) gives the slot back once the store answers, rather than leave it held, unowned,
        for a lease's whole term."""
        take = asyncio.ensure_future(self.store.take(self.key, self.size))
        try:
            lease = await asyncio.shield(take)
        except asyncio.CancelledError:
            take.add_done_callback(self._give_back_taken)
            raise
        if lease is not None:
            self.held.add(lease)
        return lease

    def _give_back_taken(self, take: asyncio.Future[str | None]) -> None:
        if not take.cancelled() and take.exception() is None and (lease := take.result()) is not None:
            self._releases.add(task := asyncio.ensure_future(self._give_back(lease)))
            task.add_done_callback(self._releases.discard)

    async def release(self, lease: str) -> None:
        """Give `lease` back. Shielded: a request cancelled again while it gives its slot back (a drain
        cancels what is left, and so does each connection it then closes) left the lease in the store
        for its whole term, a slot lost to every gateway."""
        self.held.discard(lease)
        await asyncio.shield(self._give_back(lease))

    async def _give_back(self, lease: str) -> None:
        await self.store.give_back(self.key, lease)
        self._freed.set()  # after the store has it back: woken before, the poller found it still held

    async def release_all(self) -> None:
        for lease in list(self.held):
            await self.release(lease)

    async def _poll(self) -> None:
        """Take slots for the waiters, first come first served, until none waits."""
        backoff = FIRST_BACKOFF_S
        while self._waiters:
            if self._waiters[0].done():
                self._waiters.popleft()  # timed out or cancelled meanwhile
                continue
            try:
                lease = await self.store.take(self.key, self.size)
            except Unavailable as exc:
                while self._waiters:
                    waiter = self._waiters.popleft()
                    if not waiter.done():
                        waiter.set_exception(exc)
                return
            if lease is None:
                self._freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff * (0.5 + random.random())):
                        await self._freed.wait()
                backoff = min(backoff * 2, LAST_BACKOFF_S)
                continue
            backoff = FIRST_BACKOFF_S
            self.held.add(lease)
            head = self._waiters.popleft()
            if head.done():
                await self.release(lease)  # its request gave up while the slot was being taken
            else:
                head.set_result(lease)
