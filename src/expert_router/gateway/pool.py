"""Replicas of each expert: which are up, which is least busy, and how many requests may be in flight.

State lives in one process (one gateway instance or worker); instances share nothing, which is what
lets them scale out behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp

from expert_router.config import ExpertConfig, GatewaySettings

log = logging.getLogger("expert_router.gateway")


class Replica:
    """One expert server. Starts healthy; `failures_to_down` consecutive failures mark it down."""

    def __init__(self, url: str, health_url: str):
        self.url = url
        self.health_url = health_url
        self.inflight = 0
        self.healthy = True
        self.failures = 0

    def record_failure(self, failures_to_down: int, why: str) -> None:
        self.failures += 1
        if self.healthy and self.failures >= failures_to_down:
            self.healthy = False
            log.warning("replica %s marked down: %s", self.url, why)

    def record_success(self) -> None:
        if not self.healthy:
            log.warning("replica %s is back up", self.url)
        self.failures = 0
        self.healthy = True


class Saturated(Exception):
    """No slot freed up within the queue timeout: the client gets 429."""


class ExpertPool:
    def __init__(self, expert: ExpertConfig, settings: GatewaySettings):
        self.expert = expert
        self.settings = settings
        self.replicas = [Replica(url, url + expert.health_path) for url in expert.base_urls()]
        self._slots = asyncio.Semaphore(settings.max_inflight_per_expert)
        self.inflight = 0

    @property
    def cluster(self) -> int:
        return self.expert.cluster

    def healthy(self) -> list[Replica]:
        """Healthy replicas, least requests in flight first."""
        return sorted((r for r in self.replicas if r.healthy), key=lambda r: r.inflight)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Admission control: wait up to the queue timeout for one of the expert's in-flight slots."""
        if not self._slots.locked():
            await self._slots.acquire()  # free slot: no waiting, and no timer to set up
        elif self.settings.queue_timeout_s == 0:
            raise Saturated
        else:
            try:
                await asyncio.wait_for(self._slots.acquire(), self.settings.queue_timeout_s)
            except TimeoutError:
                raise Saturated from None
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            self._slots.release()


class Pools:
    """Every expert's pool, plus the background health checks."""

    def __init__(self, experts: list[ExpertConfig], settings: GatewaySettings):
        self.settings = settings
        self.by_cluster = {e.cluster: ExpertPool(e, settings) for e in experts}
        self.by_model = {e.model: e.cluster for e in experts}
        self._task: asyncio.Task | None = None

    def start_health_checks(self, session: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self._check_forever(session))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _check_forever(self, session: aiohttp.ClientSession) -> None:
        replicas = [r for pool in self.by_cluster.values() for r in pool.replicas]
        while True:
            await asyncio.gather(*(self._check(session, r) for r in replicas))
            await asyncio.sleep(self.settings.health_interval_s)

    async def _check(self, session: aiohttp.ClientSession, replica: Replica) -> None:
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.settings.health_interval_s))
        try:
            async with session.get(replica.health_url, timeout=timeout) as response:
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok = False
            why = f"health check failed: {exc.__class__.__name__}"
        else:
            why = "health check answered an error"
        if ok:
            replica.record_success()
        else:
            replica.record_failure(self.settings.failures_to_down, why)
