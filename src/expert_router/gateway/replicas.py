"""The experts and their replicas: which are up, which is least busy, how many requests may be in flight.

State lives in one process (one gateway instance or worker). With `load_aware` (the default) each
replica's own load report (`gateway.load`) is read on a short interval (where an expert has more than
one replica), so instances and workers in front of the same experts pick replicas by the same
numbers. With `limit_scope: shared` the per-expert limit is counted in a Redis store every gateway
uses (`gateway.shared_limit`); nothing else is shared, which is what lets them scale out behind a
load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from expert_router.config import ExpertConfig, GatewaySettings
from expert_router.errors import Saturated
from expert_router.gateway.load import ReportedLoad
from expert_router.gateway.shared_limit import LimitStore, SharedLimit

log = logging.getLogger("expert_router.gateway")


class Replica:
    """One expert server. Starts healthy; `failures_to_down` consecutive failures mark it down."""

    def __init__(self, url: str, health_url: str):
        self.url = url
        self.health_url = health_url
        self.metrics_url = url + "/metrics"
        self.inflight = 0
        self.healthy = True
        self.failures = 0
        self.load = ReportedLoad()

    def busy(self) -> float:
        """How loaded the replica is: its own report when it gives one, never less than our own count."""
        return max(float(self.inflight), self.load.requests()) if self.load.reporting else float(self.inflight)

    def sent(self) -> None:
        self.inflight += 1
        self.load.sent += 1

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

    def __init__(
        self,
        config: ExpertConfig,
        settings: GatewaySettings,
        shared: SharedLimit | None = None,
        on_inflight: Callable[[int], None] | None = None,
    ):
        self.config = config
        self.settings = settings
        self.replicas = [Replica(url, url + config.health_path) for url in config.base_urls()]
        self._slots = asyncio.Semaphore(settings.max_inflight_per_expert)
        self.shared = shared
        self.inflight = 0
        self.on_inflight = on_inflight
        """Told every change of `inflight` (the gauge: set at each change, not at a scrape, since with
        several workers a scrape reaches one of them and the others' last values would be summed)."""

    @property
    def model(self) -> str:
        return self.config.model

    def any_healthy(self) -> bool:
        """Whether a replica is up: `healthy()` without its ranking (a check before waiting for a slot)."""
        return any(r.healthy for r in self.replicas)

    def healthy(self) -> list[Replica]:
        """Healthy replicas, least busy first (then least KV cache in use)."""
        if len(self.replicas) == 1:
            return self.replicas if self.replicas[0].healthy else []
        return sorted((r for r in self.replicas if r.healthy), key=lambda r: (r.busy(), r.load.kv_usage))

    def slot(self) -> Slot:
        """Admission control: `async with expert.slot():` waits up to the queue timeout for one of the
        expert's in-flight slots.

        `limit_scope: process` counts this process's requests (a semaphore); `shared` takes a lease in
        the limit store every gateway uses, so the limit holds across workers and instances.
        """
        return Slot(self)

    async def _admit(self) -> str | None:
        """Take a slot; returns its lease where the limit is shared."""
        lease = None
        if self.shared is not None:
            lease = await self.shared.acquire()
            if lease is None:
                raise self._saturated()
        elif not self._slots.locked():
            await self._slots.acquire()  # free slot: no waiting, and no timer to set up
        elif self.settings.queue_timeout_s == 0:
            raise self._saturated()
        else:
            try:  # not wait_for: on 3.11 it can swallow a cancellation that comes as the slot frees
                async with asyncio.timeout(self.settings.queue_timeout_s):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._saturated() from None
        self._count(1)
        return lease

    def _leave(self) -> None:
        self._count(-1)
        self._slots.release()

    async def _give_back(self, lease: str) -> None:
        self._count(-1)
        assert self.shared is not None  # only a shared limit gives leases
        await self.shared.release(lease)

    def _count(self, change: int) -> None:
        self.inflight += change
        if self.on_inflight is not None:
            self.on_inflight(self.inflight)

    def _saturated(self) -> Saturated:
        s = self.settings
        return Saturated(
            f"expert {self.model} (cluster {self.config.cluster}) has {s.max_inflight_per_expert} "
            f"requests in flight and no slot freed up within {s.queue_timeout_s:g} s",
            headers={
                "Retry-After": str(max(1, round(s.queue_timeout_s))),
                "X-Expert-Cluster": str(self.config.cluster),
            },
        )


class Slot:
    """One request's hold on an expert's slot (a plain class: an async generator context costs more)."""

    __slots__ = ("expert", "lease")

    def __init__(self, expert: Expert):
        self.expert = expert
        self.lease: str | None = None

    async def __aenter__(self) -> None:
        self.lease = await self.expert._admit()

    async def __aexit__(self, *exc: object) -> None:
        if self.lease is None:
            self.expert._leave()  # no await on the process-scope path: it runs once per request
        else:
            await self.expert._give_back(self.lease)


class Experts:
    """Every expert by cluster, plus the background health checks and load reads of their replicas, and
    the limit store where limits are shared."""

    def __init__(
        self,
        experts: list[ExpertConfig],
        settings: GatewaySettings,
        on_inflight: Callable[[int, int], None] | None = None,
    ):
        """`on_inflight(cluster, n)` is told each change of an expert's requests in flight."""
        self.settings = settings
        self.store: LimitStore | None = None
        if settings.limit_scope == "shared":
            assert settings.limit_store is not None  # the settings' own check
            self.store = LimitStore(settings.limit_store, settings.lease_s)
        self.by_cluster = {
            e.cluster: Expert(e, settings, self._shared(e), _for_cluster(on_inflight, e.cluster)) for e in experts
        }
        self._tasks: list[asyncio.Task[None]] = []

    def _shared(self, config: ExpertConfig) -> SharedLimit | None:
        if self.store is None:
            return None
        return self.store.limit(config.model, self.settings.max_inflight_per_expert, self.settings.queue_timeout_s)

    def start(self, session: aiohttp.ClientSession) -> None:
        """Start the background work: health checks, load reads where they decide something, lease renewal."""
        self._tasks.append(asyncio.create_task(self._check_forever(session)))
        if self.reads_load():
            self._tasks.append(asyncio.create_task(self._read_load_forever(session)))
        if self.store is not None:
            self.store.start()

    def reads_load(self) -> bool:
        """Whether replicas' /metrics are read: only where the reports decide something (a choice between
        replicas). vLLM takes milliseconds to render its metrics, time its own event loop then spends on
        nothing else."""
        return self.settings.load_aware and any(len(e.replicas) > 1 for e in self.by_cluster.values())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.store is not None:
            await self.store.stop()  # gives back what this process still holds

    async def _read_load_forever(self, session: aiohttp.ClientSession) -> None:
        """Every replica's /metrics once per load interval, each server on a loop of its own. A server (one
        vLLM holding several LoRA experts) is read once and its report shared by every expert it serves."""
        timeout = aiohttp.ClientTimeout(total=max(1.0, 4 * self.settings.load_interval_s))
        interval = self.settings.load_interval_s
        servers = self._grouped(lambda replica: replica.url)
        await asyncio.gather(*(_every(interval, self._read_load, session, rs, timeout) for rs in servers))

    def _grouped(self, key: Callable[[Replica], str]) -> list[list[Replica]]:
        """Every replica, grouped by what one request reads for all of a group (a server's URL)."""
        groups: dict[str, list[Replica]] = {}
        for expert in self.by_cluster.values():
            for replica in expert.replicas:
                groups.setdefault(key(replica), []).append(replica)
        return list(groups.values())

    @staticmethod
    async def _read_load(
        session: aiohttp.ClientSession, replicas: list[Replica], timeout: aiohttp.ClientTimeout
    ) -> None:
        sent_before = [replica.load.sent for replica in replicas]
        try:
            async with session.get(replicas[0].metrics_url, timeout=timeout) as response:
                text = await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            text = ""
        for replica, sent in zip(replicas, sent_before, strict=True):
            replica.load.update(text, sent)  # an unreadable report: back to this gateway's own counts

    async def _check_forever(self, session: aiohttp.ClientSession) -> None:
        """One loop per server: a server whose /health hangs delays its own next check, not every other's
        (checked in rounds, one hung replica held every round, and a failed one stayed marked for seconds).
        A server holding several experts (one vLLM with a LoRA adapter each) is checked once per interval
        and its answer holds for each of them, as its load report does."""
        interval = self.settings.health_interval_s
        servers = self._grouped(lambda replica: replica.health_url)
        await asyncio.gather(*(_every(interval, self._check, session, rs) for rs in servers))

    async def _check(self, session: aiohttp.ClientSession, replicas: list[Replica]) -> None:
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.settings.health_interval_s))
        try:
            async with session.get(replicas[0].health_url, timeout=timeout) as response:
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok = False
            why = f"health check failed: {exc.__class__.__name__}"
        else:
            why = "health check answered an error"
        for replica in replicas:
            if ok:
                replica.record_success()
            else:
                replica.record_failure(self.settings.failures_to_down, why)


def _for_cluster(on_inflight: Callable[[int, int], None] | None, cluster: int) -> Callable[[int], None] | None:
    return None if on_inflight is None else functools.partial(on_inflight, cluster)


async def _every(interval_s: float, step: Callable[..., Awaitable[None]], *args: Any) -> None:
    """`step(*args)`, then a pause of `interval_s`, for ever: one background loop of its own."""
    while True:
        await step(*args)
        await asyncio.sleep(interval_s)
