"""The scheduler and engine on hand-made cases: batch cap, KV exhaustion and preemption, prefill chunks."""

from __future__ import annotations

import pytest

from expert_router.emulate import build_config
from expert_router.emulate.engine import Engine
from expert_router.emulate.kvcache import BlockManager
from expert_router.emulate.scheduler import Scheduler, Sequence
from expert_router.errors import UserError


def seq(i: int, prompt: int, out: int, max_tokens: int | None = None) -> Sequence:
    return Sequence(i, prompt, max_tokens or out, out)


def advance(scheduler: Scheduler, batch) -> list[int]:
    """What the engine does after a step: returns ids that produced a token, finishing the done ones."""
    produced = []
    for s, n in batch.items:
        if s.advance(n):
            produced.append(s.id)
            if s.generated >= s.stop_after:
                scheduler.finish(s)
    return produced


def test_batch_size_cap_holds_back_the_rest():
    scheduler = Scheduler(BlockManager(1000, 16), max_batch_size=2, max_num_tokens=1000)
    for i in range(5):
        scheduler.add(seq(i, 10, 3))
    batch = scheduler.schedule()
    assert [s.id for s, _ in batch.items] == [0, 1]
    assert len(scheduler.running) == 2 and len(scheduler.waiting) == 3
    advance(scheduler, batch)
    assert [n for _, n in scheduler.schedule().items] == [1, 1]  # decodes, still capped at two


def test_prefill_is_chunked_by_the_token_budget():
    scheduler = Scheduler(BlockManager(1000, 16), max_batch_size=8, max_num_tokens=100)
    long = seq(0, 250, 2)
    scheduler.add(long)
    chunks = []
    for _ in range(3):
        batch = scheduler.schedule()
        chunks.append([n for _, n in batch.items])
        advance(scheduler, batch)
    assert chunks == [[100], [100], [50]]
    assert long.generated == 1  # the first token comes with the last chunk


def test_decodes_go_first_and_prefill_takes_the_rest_of_the_budget():
    scheduler = Scheduler(BlockManager(1000, 16), max_batch_size=8, max_num_tokens=64)
    scheduler.add(seq(0, 10, 5))
    advance(scheduler, scheduler.schedule())
    scheduler.add(seq(1, 200, 5))
    batch = scheduler.schedule()
    assert [(s.id, n) for s, n in batch.items] == [(0, 1), (1, 63)]
    work = batch.work()
    assert work.tokens == 64 and work.outputs == 1
    assert work.attention_pairs == 11 + 63 * 64 // 2  # decode at context 10, chunk from position 0
    assert work.kv_tokens_read == 11 + 63


def test_whole_prefill_waits_when_the_budget_cannot_hold_the_prompt():
    scheduler = Scheduler(BlockManager(1000, 16), max_batch_size=8, max_num_tokens=64, chunked_prefill=False)
    scheduler.add(seq(0, 40, 5))
    scheduler.add(seq(1, 40, 5))
    assert [s.id for s, _ in scheduler.schedule().items] == [0]
    assert scheduler.check(seq(2, 65, 1)) is not None


def test_guaranteed_no_evict_reserves_the_whole_answer():
    blocks = BlockManager(10, 16)  # 160 tokens
    scheduler = Scheduler(blocks, max_batch_size=8, max_num_tokens=1000, policy="guaranteed_no_evict")
    scheduler.add(seq(0, 40, 40, max_tokens=60))  # reserves 100 tokens: 7 blocks
    scheduler.add(seq(1, 40, 40, max_tokens=60))
    batch = scheduler.schedule()
    assert [s.id for s, _ in batch.items] == [0] and blocks.free == 3
    while scheduler.running:
        batch = scheduler.schedule()
        assert not batch.preempted
        advance(scheduler, batch)
    assert [s.id for s in scheduler.running] == [] and scheduler.waiting[0].id == 1


def test_a_request_that_could_outgrow_the_cache_or_a_recompute_pass_is_refused_under_either_policy():
    """Admitted on its prompt alone (max_utilization), a sequence that grew past the whole cache
    preempted everything, then itself, for ever; without chunked prefill, one preempted past the token
    budget could never be recomputed."""
    for policy in ("guaranteed_no_evict", "max_utilization"):
        scheduler = Scheduler(BlockManager(4, 16), max_batch_size=8, max_num_tokens=1000, policy=policy)
        assert scheduler.check(seq(0, 30, 34)) is None  # 64 tokens: fits
        assert "KV cache" in (scheduler.check(seq(1, 30, 35)) or "")
    whole = Scheduler(BlockManager(100, 16), 8, max_num_tokens=100, chunked_prefill=False, policy="max_utilization")
    assert whole.check(seq(2, 60, 41)) is None  # prompt + 40 generated: one pass of 100
    assert "one pass" in (whole.check(seq(3, 60, 42)) or "")
    evicting = Scheduler(BlockManager(100, 16), 8, max_num_tokens=100, chunked_prefill=False)
    assert evicting.check(seq(3, 60, 42)) is None  # never preempted: its prompt is all it computes at once


def test_max_utilization_preempts_the_newest_when_the_cache_runs_out():
    blocks = BlockManager(4, 16)  # 64 tokens
    scheduler = Scheduler(blocks, max_batch_size=8, max_num_tokens=1000, policy="max_utilization")
    first, second = seq(0, 30, 20), seq(1, 30, 20)
    scheduler.add(first)
    scheduler.add(second)
    advance(scheduler, scheduler.schedule())  # both prefilled: 2 blocks each, cache full
    assert blocks.free == 0
    preempted = []
    for _ in range(5):
        batch = scheduler.schedule()
        preempted += [s.id for s in batch.preempted]
        advance(scheduler, batch)
    assert preempted == [1]  # the newest sequence gives its blocks to the older one
    assert second.computed == 0 and second.preemptions == 1 and scheduler.waiting[0] is second
    while scheduler.running or scheduler.waiting:
        advance(scheduler, scheduler.schedule())
    assert first.generated == 20 and second.generated == 20  # recomputed, then finished
    assert blocks.free == 4


def test_a_request_that_can_never_fit_is_refused():
    config, _ = build_config(kv_cache_gb=0.01)  # 8B FP16: 128 KiB per token, about 76 tokens
    engine = Engine(config)
    with pytest.raises(UserError, match="KV cache"):
        engine.submit(0, 500, 10)


def test_engine_emits_every_token_once_and_ends_at_the_drawn_length():
    config, _ = build_config(output_lengths="fixed:7", max_batch_size=4)
    engine = Engine(config)
    for i in range(10):
        engine.submit(i, 50 + i, 100 if i % 2 else 5, ignore_eos=i == 3)
    seen: dict[int, list[int]] = {}
    finish: dict[int, str] = {}
    steps = 0
    while engine.has_work:
        result = engine.step()
        assert result is not None and result.duration > 0
        steps += 1
        for event in result.events:
            seen.setdefault(event.request_id, []).append(event.position)
            if event.finish_reason:
                finish[event.request_id] = event.finish_reason
    expected = {i: (100 if i == 3 else 5 if i % 2 == 0 else 7) for i in range(10)}
    assert {i: len(v) for i, v in seen.items()} == expected
    assert all(v == list(range(len(v))) for v in seen.values())
    assert finish[3] == "length" and finish[1] == "stop" and finish[0] == "length"
    assert engine.stats.generation_tokens == sum(expected.values())
    assert engine.blocks.usage == 0.0


@pytest.mark.parametrize("budget, chunked", [(8192, True), (300, True), (2000, False)])
def test_grouped_decoders_step_exactly_as_one_by_one(budget: int, chunked: bool):
    """The engine's grouped decoders (emulate/decoding.py) against the same engine scheduling every
    sequence one by one: the same durations, tokens, positions and finishes, step for step, through
    arrivals, chunked prefills, the batch cap and aborts."""
    import numpy as np

    config, _ = build_config("paper-e", instances=1, max_num_tokens=budget, max_batch_size=40, chunked_prefill=chunked)
    grouped, single = Engine(config), Engine(config)
    single._decoders = None  # the one-by-one path
    assert grouped.grouped and not single.grouped
    rng = np.random.default_rng(3)
    next_id = 0
    for step in range(3000):
        for _ in range(int(rng.poisson(0.4))):
            prompt, max_tokens = int(rng.integers(1, 1500)), int(rng.integers(1, 300))
            for engine in (grouped, single):
                engine.submit(next_id, prompt, max_tokens)
            next_id += 1
        if step % 97 == 0 and next_id > 3:
            victim = int(rng.integers(next_id))
            grouped.abort(victim)
            single.abort(victim)
        a, b = grouped.step(), single.step()
        assert (a is None) == (b is None)
        if a is None or b is None:
            continue
        assert a.duration == b.duration and a.tokens == b.tokens
        assert a.events == b.events
        assert (a.outputs, a.started, a.finished) == (b.outputs, b.started, b.finished)
    assert grouped.stats == single.stats and grouped.stats.finished > 100
