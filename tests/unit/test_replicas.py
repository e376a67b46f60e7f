import asyncio

import pytest

from expert_router.config import ExpertConfig, GatewaySettings
from expert_router.errors import Saturated
from expert_router.gateway.replicas import Expert, Experts, Replica


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


def test_a_queued_request_cancelled_as_the_slot_frees_is_cancelled():
    """Python 3.11's wait_for returned the slot's acquisition instead of the cancellation when both came
    in one loop pass: the request went on for a client that had gone."""

    async def scenario():
        pool = make_pool(max_inflight_per_expert=1, queue_timeout_s=5.0)
        held = pool.slot()
        await held.__aenter__()

        async def queued() -> None:
            async with pool.slot():
                await asyncio.sleep(10)

        waiter = asyncio.create_task(queued())
        await asyncio.sleep(0)  # it waits for the slot
        await held.__aexit__(None, None, None)
        await asyncio.sleep(0)  # the slot is handed over
        waiter.cancel()  # and the client goes away
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 2)
        assert pool.inflight == 0
        async with pool.slot():  # and the slot is free again
            pass

    asyncio.run(scenario())


def test_a_report_that_is_not_prometheus_text_counts_as_none():
    """A parse error once ended the loop that reads every replica's load: all reports froze."""
    replica = make_pool().replicas[0]
    replica.load.update('vllm:num_requests_running{model_name="m"} 3\n')
    assert replica.load.reporting
    replica.load.update("<html><body>Bad gateway</body></html>")
    assert not replica.load.reporting and replica.busy() == 0


def test_a_replica_reporting_a_queue_comes_after_an_idle_one():
    expert = make_pool()
    busy, idle, silent = expert.replicas
    busy.load.update('vllm:num_requests_running{model_name="m"} 3\nvllm:num_requests_waiting{model_name="m"} 40\n')
    idle.load.update('vllm:num_requests_running{model_name="m"} 1\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n')
    assert busy.load.reporting and busy.busy() == 43 and idle.busy() == 1 and silent.busy() == 0
    assert expert.healthy() == [silent, idle, busy]
    idle.sent()  # our own sends count until the next report
    assert idle.busy() == 2


def test_no_report_falls_back_to_our_own_count():
    replica = Replica("http://127.0.0.1:1", "http://127.0.0.1:1/health")
    replica.load.update("")  # unreadable /metrics
    replica.sent()
    assert not replica.load.reporting and replica.busy() == 1


def test_a_send_during_a_load_read_still_counts_after_the_report():
    """The report may have been made before the request arrived: the send stays counted until a read
    that began after it, else a gateway would admit one more than its limit."""
    replica = Replica("http://127.0.0.1:1", "http://127.0.0.1:1/health")
    before = replica.load.sent  # the read begins
    replica.sent()  # the gateway admits a request while the read is on its way
    replica.load.update("vllm:num_requests_running 2\n", before)
    assert replica.busy() == 3
    replica.load.update("vllm:num_requests_running 3\n", replica.load.sent)  # a read begun after the send
    assert replica.busy() == 3


def test_load_is_read_only_where_it_decides_something():
    one = [ExpertConfig(cluster=c, model=f"m{c}", endpoints=[f"http://a:{c + 1}"]) for c in range(2)]
    two = [*one[:1], ExpertConfig(cluster=1, model="m1", endpoints=["http://a:2", "http://b:2"])]
    assert not Experts(one, GatewaySettings()).reads_load()  # a single replica each: nothing to choose
    assert Experts(two, GatewaySettings()).reads_load()
    assert not Experts(two, GatewaySettings(load_aware=False)).reads_load()


def test_the_inflight_gauge_follows_every_change_not_the_scrape():
    """Set only when a worker answered a scrape, the gauge of the workers not scraped kept their last
    value, and a multiprocess sum added those stale counts up."""
    from expert_router.gateway.metrics import GatewayMetrics

    async def scenario():
        metrics = GatewayMetrics()
        config = ExpertConfig(cluster=3, model="m", endpoints=["http://a:1"])
        experts = Experts([config], GatewaySettings(), metrics.set_inflight)

        def gauge() -> float | None:
            return metrics.registry.get_sample_value("expert_router_inflight", {"cluster": "3"})

        async with experts.by_cluster[3].slot():
            assert gauge() == 1
        assert gauge() == 0

    asyncio.run(scenario())


def test_a_replica_whose_health_check_hangs_does_not_hold_the_others_checks():
    """Checked in rounds, every round waited for the hung replica's timeout (1 s here): another
    replica's failure or recovery was seen a second or more late."""

    class Answer:
        status = 200

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

    class Hung(Answer):
        async def __aenter__(self):
            await asyncio.sleep(3600)

    class Session:
        def __init__(self):
            self.checks: list[str] = []

        def get(self, url, timeout):
            self.checks.append(url)
            return Hung() if url.startswith("http://a:1") else Answer()

    async def scenario() -> int:
        config = ExpertConfig(cluster=0, model="m", endpoints=["http://a:1", "http://b:2"])
        experts = Experts([config], GatewaySettings(health_interval_s=0.05))
        session = Session()
        task = asyncio.create_task(experts._check_forever(session))  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        task.cancel()
        return sum(url.startswith("http://b:2") for url in session.checks)

    assert asyncio.run(scenario()) >= 5


def test_a_server_holding_several_experts_is_health_checked_once_per_interval():
    """One vLLM with a LoRA adapter per expert: checked once per expert, it answered k requests an
    interval for one answer. Its answer still holds for every expert it serves."""

    class Answer:
        def __init__(self, status: int):
            self.status = status

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

    class Session:
        def __init__(self):
            self.checks: list[str] = []
            self.status = 200

        def get(self, url, timeout):
            self.checks.append(url)
            return Answer(self.status)

    async def scenario() -> None:
        configs = [ExpertConfig(cluster=c, model=f"m{c}", endpoints=["http://a:1"]) for c in range(3)]
        experts = Experts(configs, GatewaySettings(health_interval_s=0.05, failures_to_down=1))
        session = Session()
        task = asyncio.create_task(experts._check_forever(session))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert session.checks == ["http://a:1/health"]
        session.status = 503
        await asyncio.sleep(0.06)
        task.cancel()
        assert len(session.checks) == 2
        assert not any(e.any_healthy() for e in experts.by_cluster.values())

    asyncio.run(scenario())
