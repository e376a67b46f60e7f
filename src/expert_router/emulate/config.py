"""One emulated engine's settings: what it runs on (GPU, TP), what it runs (model, format) and its limits.

Built from a preset (profiles/presets.yaml, e.g. the paper's Table I configurations) with explicit
settings on top, so that `--preset paper-e --max-batch-size 64` means "E, but batch 64".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from expert_router.emulate import profiles
from expert_router.emulate.outputs import DEFAULT_OUTPUT_LENGTHS, OutputLengths, parse_output_lengths
from expert_router.emulate.scheduler import POLICIES, Policy
from expert_router.errors import UserError

GPU_MEMORY_UTILIZATION = 0.9
"""Share of GPU memory an engine takes when no KV size is given (vLLM's --gpu-memory-utilization default)."""

DEFAULTS: dict[str, Any] = {
    "model": "llama-3-8b",
    "dtype": "fp16",
    "gpu": "h100-sxm",
    "tp": 1,
    "kv_dtype": "fp16",
    "kv_cache_gb": None,
    "max_batch_size": 256,
    "max_num_tokens": 8192,
    "chunked_prefill": True,
    "policy": "guaranteed_no_evict",
    "block_size": 64,
    "output_lengths": DEFAULT_OUTPUT_LENGTHS,
    "efficiency": "default",
    "seed": 0,
    "instances": 1,
}
"""max_num_tokens 8192 and 64-token blocks are TensorRT-LLM's defaults (the paper's engine); the batch
cap of 256 is vLLM's max_num_seqs default."""


@dataclass(frozen=True)
class EngineConfig:
    model: profiles.Model
    dtype: profiles.Dtype
    gpu: profiles.Gpu
    tp: int = 1
    kv_dtype: str = "fp16"
    kv_cache_gb: float | None = None
    """KV memory of the whole engine (all its GPUs); None: what is left of 90% of GPU memory."""
    max_batch_size: int = 256
    max_num_tokens: int = 8192
    chunked_prefill: bool = True
    policy: Policy = "guaranteed_no_evict"
    block_size: int = 64
    output_lengths: OutputLengths = field(default_factory=lambda: parse_output_lengths(DEFAULT_OUTPUT_LENGTHS))
    efficiency: profiles.Efficiency = field(default_factory=profiles.efficiency)
    seed: int = 0

    @property
    def kv_bytes(self) -> float:
        return profiles.kv_bytes(self.kv_dtype)

    def kv_capacity_bytes(self, weight_bytes: float) -> float:
        if self.kv_cache_gb is not None:
            return self.kv_cache_gb * 1e9
        free = self.tp * self.gpu.memory_bytes * GPU_MEMORY_UTILIZATION - weight_bytes
        if free <= 0:
            raise UserError(
                f"{self.model.name} in {self.dtype.name} ({weight_bytes / 1e9:.1f} GB) does not fit "
                f"on {self.tp} x {self.gpu.name}; raise --tp or choose a smaller --dtype"
            )
        return free

    def describe(self) -> str:
        tp = f" TP{self.tp}" if self.tp > 1 else ""
        return f"{self.model.name} {self.dtype.name} on {self.gpu.name}{tp}"


def build_config(preset: str | None = None, **settings: Any) -> tuple[EngineConfig, int]:
    """An engine config and the number of instances, from a preset and settings (None = not given)."""
    merged = {**DEFAULTS, **(profiles.preset(preset) if preset else {})}
    merged.update({k: v for k, v in settings.items() if v is not None})
    unknown = set(merged) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown engine setting(s): {', '.join(sorted(unknown))}")
    if merged["policy"] not in POLICIES:
        raise UserError(f"unknown --policy {merged['policy']!r}: choose one of {', '.join(POLICIES)}")
    instances = int(merged.pop("instances"))
    if instances < 1:
        raise UserError("--instances must be at least 1")
    config = EngineConfig(
        model=profiles.model(merged["model"]),
        dtype=profiles.dtype(merged["dtype"]),
        gpu=profiles.gpu(merged["gpu"]),
        tp=int(merged["tp"]),
        kv_dtype=str(merged["kv_dtype"]),
        kv_cache_gb=merged["kv_cache_gb"],
        max_batch_size=int(merged["max_batch_size"]),
        max_num_tokens=int(merged["max_num_tokens"]),
        chunked_prefill=bool(merged["chunked_prefill"]),
        policy=merged["policy"],
        block_size=int(merged["block_size"]),
        output_lengths=parse_output_lengths(str(merged["output_lengths"])),
        efficiency=profiles.efficiency(str(merged["efficiency"])),
        seed=int(merged["seed"]),
    )
    profiles.kv_bytes(config.kv_dtype)  # an unknown KV precision fails here, named
    return config, instances
