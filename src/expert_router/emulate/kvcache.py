"""The paged KV cache: fixed-size blocks, counted per sequence.

Only the count matters for timing and admission, so blocks are not given identities: a sequence owns
ceil(tokens / block_size) blocks, and the cache knows how many are free. That is what vLLM's and
TensorRT-LLM's block managers decide admission and preemption on (prefix sharing is not modelled).
"""

from __future__ import annotations

from expert_router.errors import UserError


class BlockManager:
    """`num_blocks` blocks of `block_size` tokens, handed to sequences by id."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise UserError(
                "the KV cache must hold at least one block of at least one token: "
                "raise --kv-cache-gb or lower --block-size"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free = num_blocks
        self._owned: dict[int, int] = {}

    @classmethod
    def from_bytes(cls, capacity_bytes: float, bytes_per_token: float, block_size: int) -> BlockManager:
        """As many whole blocks as fit in `capacity_bytes` of KV memory."""
        return cls(int(capacity_bytes // (bytes_per_token * block_size)), block_size)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def owned(self, seq_id: int) -> int:
        return self._owned.get(seq_id, 0)

    def grow(self, seq_id: int, tokens: int) -> bool:
        """Make `seq_id` own enough blocks for `tokens` tokens; False (and nothing taken) if too few are free."""
        needed = self.blocks_for(tokens) - self._owned.get(seq_id, 0)
        if needed <= 0:
            return True
        if needed > self.free:
            return False
        self.free -= needed
        self._owned[seq_id] = self._owned.get(seq_id, 0) + needed
        return True

    def release(self, seq_id: int) -> None:
        self.free += self._owned.pop(seq_id, 0)

    @property
    def usage(self) -> float:
        """Share of blocks in use, 0..1 (what vLLM exports as kv_cache_usage_perc)."""
        return 1.0 - self.free / self.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size
