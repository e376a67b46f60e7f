"""GPU, model, weight-format and efficiency profiles, read from the YAML files beside this module.

Profiles are data, not code, so that every number can carry its source (a spec sheet, a config file, a
published measurement) and a user can add a GPU without touching the engine. Unknown names and missing
keys raise `UserError` naming the file and key.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from expert_router.errors import UserError


@dataclass(frozen=True)
class Gpu:
    key: str
    name: str
    memory_mib: float
    """The card's total memory as nvidia-smi and CUDA report it, in MiB: what an engine's memory share
    is taken of. Not the datasheet's "80GB": read as 80e9 bytes, that was 6.5% less than an H100 has."""
    bandwidth_tbs: float
    tflops: dict[str, float]
    link_gbs: float
    link_latency_us: float
    link_efficiency: float
    """Share of the link rate NCCL's ring collectives reach (protocol overhead)."""
    source: str

    matmul_share: dict[str, float]
    """Per compute type: the share of `tflops` the best large matrix product reaches (measured)."""

    def flops(self, compute: str) -> float:
        """Dense tensor-core rate in FLOP/s for a compute type (fp16, fp8)."""
        if compute not in self.tflops:
            raise UserError(
                f"{self.name} has no {compute} tensor cores (it offers {', '.join(self.tflops)}); "
                f"choose another --dtype"
            )
        return self.tflops[compute] * 1e12

    def matmul_flops(self, compute: str) -> float:
        """The achievable matrix-product rate: the dense peak times its measured share."""
        return self.flops(compute) * self.matmul_share.get(compute, 1.0)

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_tbs * 1e12

    @property
    def memory_bytes(self) -> float:
        return self.memory_mib * 2**20


@dataclass(frozen=True)
class Model:
    key: str
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_position: int
    """The longest context, prompt and answer together (config.json's max_position_embeddings): a
    server refuses a request past it, as vLLM does."""
    source: str

    @property
    def layer_params(self) -> int:
        """Linear-layer weights of one decoder layer: q, k, v, o projections and the gated MLP."""
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return q_and_o + k_and_v + 3 * self.hidden * self.intermediate

    @property
    def linear_params(self) -> int:
        """Every weight a matrix product reads per token (all layers; not the embedding or LM head)."""
        return self.layers * self.layer_params

    @property
    def head_params(self) -> int:
        """The LM head (untied from the embedding in Llama 3)."""
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """All parameters: embedding, layers (norms included), final norm, LM head."""
        norms = self.layers * 2 * self.hidden + self.hidden
        return self.linear_params + norms + 2 * self.vocab * self.hidden

    def kv_bytes_per_token(self, kv_bytes: float) -> float:
        """K and V of one token across all layers, at `kv_bytes` per element."""
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_bytes


@dataclass(frozen=True)
class Dtype:
    key: str
    name: str
    weight_bytes: float
    compute: str
    source: str


@dataclass(frozen=True)
class Efficiency:
    """Fractions of peak an engine reaches, and its fixed cost per iteration (see efficiency.yaml)."""

    compute: float
    memory: float
    step_overhead_ms: float
    source: str


KV_BYTES = {"fp16": 2.0, "fp8": 1.0}
"""Bytes per KV-cache element for the KV precisions engines offer."""


@cache
def load_table(name: str) -> dict[str, Any]:
    text = resources.files("expert_router.emulate").joinpath("profiles", f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise UserError(f"profiles/{name}.yaml: expected a mapping")
    return data


def names(table: str) -> list[str]:
    """The keys a profile file offers (for --help and error messages)."""
    return sorted(load_table(table))


def _entry(table: str, key: str) -> dict[str, Any]:
    data = load_table(table)
    if key not in data:
        raise UserError(f"unknown {table[:-1]} {key!r}: choose one of {', '.join(sorted(data))}")
    entry = data[key]
    if not isinstance(entry, dict):
        raise UserError(f"profiles/{table}.yaml: {key} must be a mapping")
    return entry


def _build(cls: type[Any], table: str, name: str, **extra: Any) -> Any:
    entry = {**_entry(table, name), **extra}
    try:
        return cls(**entry)
    except TypeError as exc:
        raise UserError(f"profiles/{table}.yaml: {name}: {exc}") from None


def gpu(key: str) -> Gpu:
    result: Gpu = _build(Gpu, "gpus", key, key=key)
    return result


def model(key: str) -> Model:
    result: Model = _build(Model, "models", key, key=key)
    return result


def dtype(key: str) -> Dtype:
    result: Dtype = _build(Dtype, "dtypes", key, key=key)
    return result


def efficiency(key: str = "default") -> Efficiency:
    result: Efficiency = _build(Efficiency, "efficiency", key)
    return result


def preset(key: str) -> dict[str, Any]:
    """Engine settings of a named configuration (the paper's Table I: paper-a .. paper-e)."""
    return dict(_entry("presets", key))


def kv_bytes(kv_dtype: str) -> float:
    if kv_dtype not in KV_BYTES:
        raise UserError(f"unknown KV-cache precision {kv_dtype!r}: choose one of {', '.join(KV_BYTES)}")
    return KV_BYTES[kv_dtype]
