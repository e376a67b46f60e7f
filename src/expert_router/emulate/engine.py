"""The emulated engine's spine: schedule -> step time -> emit tokens, one iteration per `step()`.

The engine has no clock. `step()` returns how long the iteration takes on the emulated GPU and which
tokens it produced; whoever drives it decides what that duration means. The real-time server
(`realtime.py`) sleeps for it and then streams the tokens; a virtual-time simulation would advance its
clock by it. Both therefore run exactly the same scheduling and timing code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from expert_router.emulate.config import EngineConfig
from expert_router.emulate.decoding import DecodeSet
from expert_router.emulate.kvcache import BlockManager
from expert_router.emulate.perfmodel import PerfModel, StepTime
from expert_router.emulate.scheduler import Batch, Scheduler, Sequence
from expert_router.errors import UserError


class TokenEvent(NamedTuple):
    """Output token `position` (0-based) of request `request_id`; the last one carries its finish reason.
    A named tuple, not a dataclass: one is made per emitted token, and tuples are several times cheaper."""

    request_id: int
    position: int
    finish_reason: str | None = None


@dataclass
class StepResult:
    duration: float
    """Seconds the iteration takes on the emulated GPU."""
    events: list[TokenEvent] = field(default_factory=list)
    """Every output token (left empty by `step(events=False)`)."""
    parts: StepTime | None = None
    tokens: int = 0
    """Tokens run through the model (prefill and decode)."""
    preempted: int = 0
    outputs: int = 0
    """Output tokens produced."""
    started: list[int] = field(default_factory=list)
    """Requests whose first output token this is."""
    finished: list[tuple[int, str]] = field(default_factory=list)
    """Requests that ended with this step's token, and why."""


@dataclass
class EngineStats:
    """Counters that the metrics endpoint exports (vLLM's names are given in metrics.py)."""

    steps: int = 0
    busy_s: float = 0.0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: int = 0
    preemptions: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)


class Engine:
    """One inference engine (one model on `tp` GPUs) with continuous batching."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.perf = PerfModel(config.model, config.dtype, config.gpu, config.tp, config.efficiency, config.kv_bytes)
        self.blocks = BlockManager.from_bytes(
            config.kv_capacity_bytes(self.perf.weight_bytes), self.perf.kv_bytes_per_token(), config.block_size
        )
        self.scheduler = Scheduler(
            self.blocks, config.max_batch_size, config.max_num_tokens, config.chunked_prefill, config.policy
        )
        self.stats = EngineStats()
        self._rng = np.random.default_rng(config.seed)
        self._sequences: dict[int, Sequence] = {}
        self.steps = 0
        # decoders kept as a group when each is sure to produce one token per step (see decoding.py)
        grouped = config.policy == "guaranteed_no_evict" and config.max_batch_size <= config.max_num_tokens
        self._decoders = DecodeSet() if grouped else None

    # -- requests in and out -----------------------------------------------------------------------
    def submit(self, request_id: int, prompt_tokens: int, max_tokens: int, ignore_eos: bool = False) -> Sequence:
        """Queue a request; its end of sequence is drawn now. Raises UserError if it can never fit."""
        if prompt_tokens < 1 or max_tokens < 1:
            raise UserError("a request needs at least one prompt token and max_tokens of at least 1")
        stop_after = max_tokens if ignore_eos else min(max_tokens, self.config.output_lengths.sample(self._rng))
        seq = Sequence(request_id, prompt_tokens, max_tokens, stop_after)
        problem = self.scheduler.check(seq)
        if problem is not None:
            raise UserError(problem)
        self._sequences[request_id] = seq
        self.scheduler.add(seq)
        return seq

    def abort(self, request_id: int) -> None:
        seq = self._sequences.pop(request_id, None)
        if seq is not None:
            if self._decoders is not None and seq in self._decoders:
                self._decoders.leave(seq, self.steps)
            self.scheduler.abort(seq)

    @property
    def grouped(self) -> bool:
        """Whether decoders are kept as a group: each running request gets exactly one token per step
        from its first token to its last (what a virtual-time driver may rely on)."""
        return self._decoders is not None

    @property
    def has_work(self) -> bool:
        return bool(self._sequences)

    @property
    def running(self) -> int:
        return len(self.scheduler.running)

    @property
    def waiting(self) -> int:
        return len(self.scheduler.waiting)

    # -- the spine ---------------------------------------------------------------------------------
    def step(self, events: bool = True) -> StepResult | None:
        """Run one iteration: None when there is nothing to run (idle, or all waiting on the cache).
        With `events` False the result names only the requests that started and finished, not every
        token (a virtual-time driver knows every running request gets one token per step)."""
        decoders = self._decoders
        if decoders is None:
            batch = self.scheduler.schedule()
        else:
            batch = self.scheduler.schedule(len(decoders), decoders.computed)
        if not batch:
            return None
        work = batch.work()
        parts = self.perf.step(work)
        result = StepResult(parts.total, parts=parts, tokens=work.tokens, preempted=len(batch.preempted))
        if decoders is not None:
            self._emit_decoders(decoders, result, events)
        self._emit(batch, result, events or decoders is None)
        self._account(result)
        self.steps += 1
        return result

    def _emit_decoders(self, decoders: DecodeSet, result: StepResult, events: bool) -> None:
        """Every grouped decoder produces one token; those at their drawn end finish."""
        step = self.steps
        ending = decoders.ending(step)
        if events:
            last = {seq.id for seq in ending}
            result.events = [
                TokenEvent(seq.id, decoders.position(seq, step), seq.finish_reason if seq.id in last else None)
                for seq in decoders.members.values()
            ]
        result.outputs += len(decoders)
        decoders.advance()
        for seq in ending:
            decoders.leave(seq, step + 1)
            self._finish(seq, result)

    def _emit(self, batch: Batch, result: StepResult, events: bool) -> None:
        """Advance every listed sequence; those that reach their end produce one token each."""
        append = result.events.append
        decoders = self._decoders
        for seq, n in batch.items:
            # Sequence.advance inlined: without grouped decoders this runs once per token of a sweep
            seq.computed += n
            if seq.computed < seq.length:
                continue  # a prefill chunk that is not the last
            seq.generated += 1
            seq.length += 1
            index = seq.generated - 1
            result.outputs += 1
            if index == 0:
                self.stats.prompt_tokens += seq.prompt_tokens
                result.started.append(seq.id)
            done = seq.generated >= seq.stop_after
            if events:
                append(TokenEvent(seq.id, index, seq.finish_reason if done else None))
            if done:
                self._finish(seq, result)
            elif decoders is not None:
                decoders.join(seq, self.steps + 1)

    def _finish(self, seq: Sequence, result: StepResult) -> None:
        self.scheduler.finish(seq)
        del self._sequences[seq.id]
        result.finished.append((seq.id, seq.finish_reason))

    def _account(self, result: StepResult) -> None:
        stats = self.stats
        stats.steps += 1
        stats.busy_s += result.duration
        stats.preemptions += result.preempted
        stats.generation_tokens += result.outputs
        for _, reason in result.finished:
            stats.finished += 1
            stats.finish_reasons[reason] = stats.finish_reasons.get(reason, 0) + 1
