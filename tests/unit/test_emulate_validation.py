"""The validation set-up: the published engines' KV memory and the calibration rows."""

from __future__ import annotations

import pytest

from expert_router.emulate import validation


def row(model: str, gpu: str, dtype: str, tp: int) -> validation.Row:
    return validation.Row(model, gpu, dtype, tp, 128, 128, published=1.0)


def test_every_gpu_of_a_tp_engine_keeps_the_embedding_and_the_fp32_logits():
    config = validation.engine_for(row("llama-3-70b", "h100-sxm", "fp8", 8))
    linear = 80 * (2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672)  # FP8: one byte each
    head = embedding = 128256 * 8192 * 2
    logits = 8192 * 128256 * 4  # max_batch_size 8192 rows of FP32 logits
    per_gpu = (linear + head) / 8 + embedding + logits
    assert config.kv_cache_gb == pytest.approx(0.99 * 8 * (81559 * 2**20 - per_gpu) / 1e9)  # nvidia-smi's total


def test_calibration_uses_only_the_single_gpu_h100_rows():
    rows = validation.calibration_rows()
    assert len(rows) == 8
    assert {(r.gpu, r.tp, r.model) for r in rows} == {("h100-sxm", 1, "llama-3-8b")}
