"""Continuous batching: which sequences run in the next iteration, and how many tokens each.

Every sequence is described the way vLLM's v1 scheduler does it: `length` tokens are known (prompt and
generated), `computed` of them have K and V in the cache, and an iteration may compute any number of the
rest. A new prompt needs its whole prompt (in chunks when chunked prefill is on), a decoding sequence
needs one token, a preempted one needs everything again (recompute). So prefill, decode, chunking and
recompute are one rule.

Each iteration: running sequences first, in admission order, then waiting ones (first come, first
served) while the batch-size cap, the token budget (`max_num_tokens`) and the KV cache allow.
Admission follows TensorRT-LLM's two capacity policies:
  guaranteed_no_evict  a sequence is admitted only when blocks for prompt + max_tokens are free, and
                       keeps them: the cache never runs out, nothing is preempted (TensorRT-LLM default).
  max_utilization      blocks are taken as tokens are computed; when none are left, the most recently
                       admitted sequence is preempted: its blocks are freed and it waits to be recomputed
                       (vLLM's policy).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from expert_router.emulate.kvcache import BlockManager
from expert_router.emulate.perfmodel import Iteration
from expert_router.errors import UserError

Policy = Literal["guaranteed_no_evict", "max_utilization"]
POLICIES: tuple[Policy, ...] = ("guaranteed_no_evict", "max_utilization")


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    id: int
    prompt_tokens: int
    max_tokens: int
    stop_after: int
    """Output tokens after which it ends: the drawn end of sequence, or max_tokens."""
    generated: int = 0
    computed: int = 0
    preemptions: int = 0
    length: int = 0
    """Tokens known: prompt plus generated (kept as a field: it is read on every step)."""
    kv_tokens: int = 0
    """Tokens its KV blocks can hold now (a cache of the block manager's count, for the hot path)."""

    def __post_init__(self) -> None:
        self.length = self.prompt_tokens + self.generated

    @property
    def remaining(self) -> int:
        """Tokens this sequence still has to run through the model before its next output token."""
        return self.length - self.computed

    def advance(self, n: int) -> bool:
        """`n` more tokens computed; True when that produced an output token (the sequence grew by one)."""
        self.computed += n
        if self.computed < self.length:
            return False
        self.generated += 1
        self.length += 1
        return True

    @property
    def finish_reason(self) -> str:
        return "length" if self.stop_after >= self.max_tokens else "stop"


@dataclass
class Batch:
    """What one iteration runs: (sequence, tokens to compute) pairs, and who was preempted for it."""

    items: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    decoders: int = 0
    """Running sequences decoding one token each that `items` leaves out (the engine's `DecodeSet`)."""
    decoders_computed: int = 0
    """Their computed tokens, summed."""

    def __bool__(self) -> bool:
        return bool(self.items) or self.decoders > 0

    def work(self) -> Iteration:
        # a decode at context c: one token, one output, c + 1 query-key pairs and cached tokens read
        tokens = outputs = self.decoders
        pairs = kv_read = self.decoders_computed + self.decoders
        for seq, n in self.items:
            cached = seq.computed
            tokens += n
            pairs += n * cached + n * (n + 1) // 2
            kv_read += cached + n
            outputs += cached + n == seq.length
        return Iteration(tokens=tokens, outputs=outputs, attention_pairs=pairs, kv_tokens_read=kv_read)


class Scheduler:
    def __init__(
        self,
        blocks: BlockManager,
        max_batch_size: int,
        max_num_tokens: int,
        chunked_prefill: bool = True,
        policy: Policy = "guaranteed_no_evict",
    ):
        if max_batch_size < 1 or max_num_tokens < 1:
            raise UserError("--max-batch-size and --max-num-tokens must be at least 1")
        if policy not in POLICIES:
            raise UserError(f"unknown --policy {policy!r}: choose one of {', '.join(POLICIES)}")
        self.blocks = blocks
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.chunked_prefill = chunked_prefill
        self.policy = policy
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def check(self, seq: Sequence) -> str | None:
        """Why `seq` could never run here (too long for the cache or the token budget), or None.

        Under either policy a sequence may grow to prompt + max_tokens, and must then fit the cache
        alone (vLLM's rule: the longest sequence must fit the KV cache): admitted on its prompt alone
        (`max_utilization`), one that outgrows the cache preempted everything, then itself, for ever.
        Without chunked prefill, a preempted sequence is recomputed in one pass, so under
        `max_utilization` all it may have generated must fit the token budget with its prompt.
        """
        worst = seq.prompt_tokens + seq.max_tokens
        if self.blocks.blocks_for(worst) > self.blocks.num_blocks:
            return (
                f"this request needs up to {worst} tokens of KV cache but the cache holds "
                f"{self.blocks.capacity_tokens}; send a shorter prompt or fewer max_tokens"
            )
        one_pass = seq.prompt_tokens + (seq.max_tokens - 1 if self.policy == "max_utilization" else 0)
        if not self.chunked_prefill and one_pass > self.max_num_tokens:
            return (
                f"without chunked prefill this request needs {one_pass} tokens in one pass"
                f"{' (a recompute after preemption)' if self.policy == 'max_utilization' else ''}, "
                f"more than max_num_tokens {self.max_num_tokens}"
            )
        return None

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        """Drop a sequence wherever it is (its client went away), freeing its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)

    def schedule(self, decoders: int = 0, decoders_computed: int = 0) -> Batch:
        """The next iteration. The first `decoders` running sequences decode one token each and are
        counted, not listed (the engine keeps them as a group); the rest are scheduled one by one."""
        batch = Batch(decoders=decoders, decoders_computed=decoders_computed)
        budget = self._schedule_running(batch, self.max_num_tokens - decoders, decoders)
        self._admit_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: Batch, budget: int, index: int = 0) -> int:
        items = batch.items
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            remaining = seq.length - seq.computed
            n = remaining if remaining < budget else budget
            if n < remaining and not self.chunked_prefill:
                index += 1
                continue
            if seq.computed + n > seq.kv_tokens and not self._grow_or_preempt(seq, seq.computed + n, batch):
                break  # seq itself was preempted: everything after it already was
            items.append((seq, n))
            budget -= n
            index += 1
        return budget

    def _grow(self, seq: Sequence, tokens: int) -> bool:
        if not self.blocks.grow(seq.id, tokens):
            return False
        seq.kv_tokens = self.blocks.owned(seq.id) * self.blocks.block_size
        return True

    def _grow_or_preempt(self, seq: Sequence, tokens: int, batch: Batch) -> bool:
        """Blocks for `tokens` tokens of `seq`, preempting the newest sequences until they fit."""
        while not self._grow(seq, tokens):
            victim = self.running.pop()
            self._release(victim)
            victim.computed = 0
            victim.preemptions += 1
            self.waiting.appendleft(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        return True

    def _release(self, seq: Sequence) -> None:
        self.blocks.release(seq.id)
        seq.kv_tokens = 0

    def _admit_waiting(self, batch: Batch, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            n = min(seq.remaining, budget)
            if not self.chunked_prefill and n < seq.remaining:
                return
            reserve = seq.prompt_tokens + seq.max_tokens if self.policy == "guaranteed_no_evict" else seq.computed + n
            if not self._grow(seq, reserve):
                return  # first come, first served: the head of the queue waits for blocks
            self.waiting.popleft()
            self.running.append(seq)
            batch.items.append((seq, n))
            budget -= n
