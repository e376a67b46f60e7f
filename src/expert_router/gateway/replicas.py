"""The experts and their replicas: which are up, which is least busy, how many requests may be in flight.

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
from expert_router.errors import Saturated

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


class Expert:
    """One expert: its configuration, its replicas and its in-flight slots (admission control)."""

    def __init__(self, config: ExpertConfig, settings: GatewaySettings):
        self.config = config
        self.settings = settings
        self.replicas = [Replica(url, url + config.health_path) for url in config.base_urls()]
        self._slots = asyncio.Semaphore(settings.max_inflight_per_expert)
        self.inflight = 0

    @property
    def model(self) -> str:
        return self.config.model

    def healthy(self) -> list[Replica]:
        """Healthy replicas, least requests in flight first."""
        return sorted((r for r in self.replicas if r.healthy), key=lambda r: r.inflight)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Admission control: wait up to the queue timeout for one of the expert's in-flight slots."""
        if not self._slots.locked():
            await self._slots.acquire()  # free slot: no waiting, and no timer to set up
        elif self.settings.queue_timeout_s == 0:
            raise self._saturated()
        else:
            try:
                await asyncio.wait_for(self._slots.acquire(), self.settings.queue_timeout_s)
            except TimeoutError:
                raise self._saturated() from None
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1
            self._slots.release()


    def _saturated(self) -> Saturated:
        s = self.settings
        return Saturated(f"expert {self.model} (cluster {self.config.cluster}) has {s.max_inflight_per_expert} "
                         f"requests in flight and no slot freed up within {s.queue_timeout_s:g} s",
                         headers={"Retry-After": str(max(1, round(s.queue_timeout_s))),
                                  "X-Expert-Cluster": str(self.config.cluster)})


class Experts:
    """Every expert by cluster, plus the background health checks of their replicas."""

    def __init__(self, experts: list[ExpertConfig], settings: GatewaySettings):
        self.settings = settings
        self.by_cluster = {e.cluster: Expert(e, settings) for e in experts}
        self._task: asyncio.Task[None] | None = None

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
