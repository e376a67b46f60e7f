"""The real-time driver in process: tokens arrive on the emulated timeline, k times slower with dilation."""

from __future__ import annotations

import asyncio
import time

import pytest

from expert_router.emulate import RealtimeDriver, build_config, scale_times
from expert_router.emulate.engine import Engine
from expert_router.loadgen.records import RequestRecord


async def _one_request(dilation: float) -> tuple[list[float], float, float]:
    config, _ = build_config(output_lengths="fixed:10", model="llama-3-70b", dtype="fp16", tp=8)
    engine = Engine(config)
    driver = RealtimeDriver(engine, dilation)
    task = asyncio.create_task(driver.run())
    start = time.monotonic()
    stream = driver.submit(prompt_tokens=200, max_tokens=100)
    arrivals = [time.monotonic() - start async for _ in stream.events()]
    task.cancel()
    return arrivals, engine.stats.busy_s, driver.lateness.worst


@pytest.mark.parametrize("dilation", [1.0, 3.0])
def test_tokens_follow_the_emulated_timeline(dilation):
    arrivals, busy, _ = asyncio.run(_one_request(dilation))
    assert len(arrivals) == 10
    # the last token arrives when the emulated GPU has worked `busy` seconds, stretched k times;
    # loose bounds: the event loop may wake late on a shared machine, never early by more than 1 ms
    assert arrivals[-1] >= busy * dilation - 0.001
    assert arrivals[-1] < busy * dilation + 0.25
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) > 0


def test_records_scale_back():
    record = RequestRecord(
        request_id=0,
        workload_id=0,
        user_id=0,
        cluster_drawn=0,
        prompt_tokens=1,
        max_tokens=2,
        t_scheduled=3.0,
        t_start=3.0,
        t_first_token=6.0,
        t_end=9.0,
        chunk_times=[6.0, 9.0],
        chunk_tokens=[1, 1],
        output_tokens=2,
    )
    scaled = scale_times(record, 3.0)
    assert (scaled.t_start, scaled.t_first_token, scaled.t_end, scaled.chunk_times) == (1.0, 2.0, 3.0, [2.0, 3.0])
    assert scaled.output_tokens == 2 and record.t_start == 3.0


def test_load_series_exist_before_the_first_request():
    """A scrape of a fresh engine found no `num_requests_running`: a gateway read it as not reporting."""
    from expert_router.emulate.metrics import EngineMetrics

    text = EngineMetrics("m", 1.0).exposition().decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert f'{name}{{model_name="m"}} 0.0' in text
