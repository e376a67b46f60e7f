"""The performance model against rooflines computed by hand."""

from __future__ import annotations

import pytest

from expert_router.emulate import profiles
from expert_router.emulate.perfmodel import Iteration, PerfModel
from expert_router.errors import UserError

NO_OVERHEAD = profiles.Efficiency(compute=1.0, memory=1.0, step_overhead_ms=0.0, source="test")


def model(
    name: str = "llama-3-8b",
    dtype: str = "fp16",
    gpu: str = "h100-sxm",
    tp: int = 1,
    efficiency: profiles.Efficiency | None = None,
) -> PerfModel:
    return PerfModel(
        profiles.model(name), profiles.dtype(dtype), profiles.gpu(gpu), tp, efficiency or profiles.efficiency()
    )


def decode(batch: int, context: int) -> Iteration:
    return Iteration(
        tokens=batch, outputs=batch, attention_pairs=batch * (context + 1), kv_tokens_read=batch * (context + 1)
    )


def test_parameter_counts_match_the_published_sizes():
    assert profiles.model("llama-3-8b").params == pytest.approx(8.03e9, rel=0.01)
    assert profiles.model("llama-3-70b").params == pytest.approx(70.6e9, rel=0.01)


@pytest.mark.parametrize(
    "name,dtype,gpu,tp",
    [
        ("llama-3-8b", "fp16", "h100-sxm", 1),
        ("llama-3-8b", "fp8", "l40s", 1),
        ("llama-3-70b", "int4-awq", "h100-sxm", 1),
        ("llama-3-70b", "fp16", "a100-sxm", 8),
        ("llama-3-70b", "fp8", "h200-sxm", 4),
    ],
)
def test_decode_at_batch_one_is_never_faster_than_weights_over_bandwidth(name, dtype, gpu, tp):
    perf = model(name, dtype, gpu, tp)
    m, d, g = profiles.model(name), profiles.dtype(dtype), profiles.gpu(gpu)
    by_hand = (m.linear_params * d.weight_bytes + m.vocab * m.hidden * 2) / (g.bandwidth_tbs * 1e12 * tp)
    assert perf.decode_floor() == pytest.approx(by_hand)
    assert perf.step_time(decode(1, 1)) >= by_hand


def test_decode_of_8b_fp16_on_h100_is_weight_streaming_at_peak():
    perf = model(efficiency=NO_OVERHEAD)
    # 8B FP16: 6.98e9 layer weights + 0.525e9 LM head, 2 bytes each, over 3.35 TB/s
    weights = (32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096) * 2
    kv = 2 * 32 * 8 * 128 * 2 * 101  # K and V of 101 cached tokens
    assert perf.step(decode(1, 100)).linear == pytest.approx(weights / 3.35e12)
    assert perf.step(decode(1, 100)).attention == pytest.approx(kv / 3.35e12)


def test_prefill_is_compute_bound():
    perf = model(efficiency=NO_OVERHEAD)
    n = 4096
    work = Iteration(tokens=n, outputs=1, attention_pairs=n * (n + 1) // 2, kv_tokens_read=n)
    m = profiles.model("llama-3-8b")
    flops = 2 * (m.linear_params * n + m.head_params)
    achievable = 989.4e12 * 0.801  # H100 FP16 dense peak times its measured matmul share
    assert perf.step(work).linear == pytest.approx(flops / achievable)
    assert perf.step(work).attention == pytest.approx(4 * 32 * 32 * 128 * n * (n + 1) / 2 / achievable)


def test_tensor_parallelism_splits_work_and_adds_all_reduces():
    one, eight = (
        model("llama-3-70b", "fp8", tp=1, efficiency=NO_OVERHEAD),
        model("llama-3-70b", "fp8", tp=8, efficiency=NO_OVERHEAD),
    )
    work = decode(64, 500)
    assert eight.step(work).linear == pytest.approx(one.step(work).linear / 8)
    assert one.step(work).allreduce == 0
    # 2 all-reduces per layer: ring of 64 tokens x 8192 x 2 bytes at NCCL's 82% of 450 GB/s, plus 8 us
    # each; then the 16-bit logits of 64 outputs gathered from the 8 vocabulary shards
    bus = 0.82 * 450e9
    ring = 2 * 7 / 8 * 64 * 8192 * 2 / bus
    logits = 7 / 8 * 64 * 128256 * 2 / bus
    assert eight.step(work).allreduce == pytest.approx(2 * 80 * (ring + 8e-6) + logits + 8e-6)


def test_residual_and_norm_traffic_is_not_split_by_tensor_parallelism():
    one, eight = (
        model("llama-3-70b", "fp8", tp=1, efficiency=NO_OVERHEAD),
        model("llama-3-70b", "fp8", tp=8, efficiency=NO_OVERHEAD),
    )
    work = decode(64, 500)
    # 64 tokens x 80 layers x 2 (add + norm, twice a layer) x 4 FP16 vectors of 8192, at 3.35 TB/s
    by_hand = 64 * 80 * 2 * 4 * 8192 * 2 / 3.35e12
    assert one.step(work).elementwise == pytest.approx(by_hand)
    assert eight.step(work).elementwise == pytest.approx(by_hand)


def test_time_grows_with_batch_and_context():
    perf = model()
    assert perf.step_time(decode(64, 100)) >= perf.step_time(decode(1, 100))
    assert perf.step_time(decode(64, 2000)) > perf.step_time(decode(64, 100))


def test_fp8_needs_fp8_tensor_cores():
    with pytest.raises(UserError, match="fp8"):
        model(dtype="fp8", gpu="a100-sxm")
