"""How long one engine iteration takes on a GPU: a roofline per operator class, plus TP and overhead.

One iteration runs every scheduled token (prefill chunks and one decode token per running sequence)
through the model once. Its time is the sum of five parts (docs/emulator.md derives each):

  linear       max(2·P·tokens / (F·s·ηc),  weight bytes / (B·ηm))    the matrix products: compute-bound
                                                                      in prefill, weight-streaming in decode
  attention    max(4·L·H·d·pairs / (F16·s16·ηc),  KV bytes / (B·ηm))  query-key pairs and the KV it reads
  elementwise  16·L·h·tokens / (B1·ηm)        residual adds and norms over the full hidden state, which
                                              every GPU does whole under tensor parallelism
  all-reduce   2·L·(2(tp-1)/tp · tokens·h·2 B / (link·e) + latency)   two per layer under tensor
               + (tp-1)/tp · outputs·vocab·2 B / (link·e) + latency   parallelism, and the logits gather
  overhead     a fixed cost per iteration (scheduling, sampling, launches)

F, F16 and B are one GPU's dense tensor-core rates and memory bandwidth times tp (B1: one GPU's), s the
measured share of F that the best large matrix product reaches, link·e the bus bandwidth NCCL reaches
(profiles/gpus.yaml); work and bytes are split evenly over the tp GPUs. ηc, ηm and the overhead come from
profiles/efficiency.yaml. The model is pure arithmetic: no clock, no state, so a real-time server and a
virtual-time simulator get the same durations.
"""

from __future__ import annotations

from dataclasses import dataclass

from expert_router.emulate.profiles import Dtype, Efficiency, Gpu, Model
from expert_router.errors import UserError

ACTIVATION_BYTES = 2.0
"""All-reduces move FP16 activations, whatever the weight format."""

RESIDUAL_BYTES_PER_HIDDEN = 16.0
"""Bytes per token, per layer and per element of the hidden state that every GPU moves outside the
matrix products: twice a layer (after attention, after the MLP) the residual add and RMSNorm read the
residual and the block's output and write the new residual and the normalised input (4 FP16 vectors).
Tensor parallelism splits the heads and the MLP, not the hidden state, so every GPU does this in full."""


@dataclass(frozen=True)
class Iteration:
    """The work of one engine step, summed over its sequences (built by the scheduler)."""

    tokens: int
    """Tokens run through the model: prefill chunk tokens plus one per decoding sequence."""
    outputs: int
    """Sequences whose last position goes through the LM head (decodes, and prefills that finish)."""
    attention_pairs: int
    """Query-key pairs attention computes: a decode token at context c has c+1, a chunk of n tokens after
    s cached ones has n·s + n(n+1)/2."""
    kv_tokens_read: int
    """Cached tokens whose K and V are read (each sequence's whole context, once)."""


@dataclass(frozen=True)
class StepTime:
    """One iteration's duration and its parts, in seconds."""

    linear: float
    attention: float
    allreduce: float
    """Tensor-parallel communication: two all-reduces per layer and the gather of the logits."""
    overhead: float
    elementwise: float = 0.0
    """Residual adds and norms over the full hidden state, on every GPU."""

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.allreduce + self.overhead + self.elementwise


class PerfModel:
    """Iteration times of one model in one weight format on `tp` GPUs of one kind."""

    def __init__(self, model: Model, dtype: Dtype, gpu: Gpu, tp: int, efficiency: Efficiency, kv_bytes: float = 2.0):
        if tp < 1:
            raise UserError("--tp must be at least 1")
        if model.heads % tp:
            raise UserError(f"--tp {tp} does not divide {model.name}'s {model.heads} attention heads")
        self.model, self.dtype, self.gpu, self.tp, self.efficiency = model, dtype, gpu, tp, efficiency
        self.kv_bytes = kv_bytes
        self._linear_flops_rate = gpu.matmul_flops(dtype.compute) * efficiency.compute * tp
        self._attention_flops_rate = gpu.matmul_flops("fp16") * efficiency.compute * tp
        self._bandwidth = gpu.bandwidth * efficiency.memory * tp
        self._gpu_bandwidth = gpu.bandwidth * efficiency.memory
        self._residual_token_bytes = RESIDUAL_BYTES_PER_HIDDEN * model.layers * model.hidden
        self._kv_token_bytes = model.kv_bytes_per_token(kv_bytes)

    @property
    def weight_bytes(self) -> float:
        """All weights: quantised linear layers, 16-bit LM head and 16-bit embedding. The embedding is
        only gathered per token, never streamed, so iterations read `streamed_bytes`."""
        return self.streamed_bytes + self.model.vocab * self.model.hidden * ACTIVATION_BYTES

    @property
    def streamed_bytes(self) -> float:
        """Weight bytes every iteration reads from memory: the layers and the LM head."""
        return self.model.linear_params * self.dtype.weight_bytes + self.model.head_params * ACTIVATION_BYTES

    def kv_bytes_per_token(self) -> float:
        return self._kv_token_bytes

    def step(self, work: Iteration) -> StepTime:
        m = self.model
        linear_flops = 2.0 * (m.linear_params * work.tokens + m.head_params * work.outputs)
        linear = max(linear_flops / self._linear_flops_rate, self.streamed_bytes / self._bandwidth)
        attention_flops = 4.0 * m.layers * m.heads * m.head_dim * work.attention_pairs
        kv_read = work.kv_tokens_read * self._kv_token_bytes
        attention = max(attention_flops / self._attention_flops_rate, kv_read / self._bandwidth)
        elementwise = work.tokens * self._residual_token_bytes / self._gpu_bandwidth
        overhead = self.efficiency.step_overhead_ms / 1000
        return StepTime(linear, attention, self._communication(work), overhead, elementwise)

    def step_time(self, work: Iteration) -> float:
        return self.step(work).total

    def _communication(self, work: Iteration) -> float:
        """Two ring all-reduces of the hidden state per layer and one all-gather of the logits, at the bus
        bandwidth NCCL reaches on the link. TensorRT-LLM splits the LM head by vocabulary and gathers its
        16-bit output on every GPU (`ColumnLinear(..., gather_output=True)`, models/llama/model.py)."""
        if self.tp == 1:
            return 0.0
        bus = self.gpu.link_gbs * self.gpu.link_efficiency * 1e9
        latency = self.gpu.link_latency_us * 1e-6
        message = work.tokens * self.model.hidden * ACTIVATION_BYTES
        ring = 2 * (self.tp - 1) / self.tp * message / bus
        logits = work.outputs * self.model.vocab * ACTIVATION_BYTES * (self.tp - 1) / self.tp / bus
        return 2 * self.model.layers * (ring + latency) + logits + latency

    def decode_floor(self) -> float:
        """The fastest any decode iteration can be: every weight streamed once at full peak bandwidth."""
        return self.streamed_bytes / (self.gpu.bandwidth * self.tp)
