"""The emulator beside published measurements: same model, GPU, format, lengths and batch policy.

Each published row (profiles/published.yaml) is an offline max-throughput run: every request queued at
once, fixed input and output lengths, end of sequence ignored. The emulator repeats it in virtual time —
the engine's own `step()` loop with a clock that only adds step durations — so validation exercises the
very scheduler and performance model the server uses, without waiting for them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from expert_router.emulate import profiles
from expert_router.emulate.config import EngineConfig, build_config
from expert_router.emulate.engine import Engine
from expert_router.emulate.perfmodel import ACTIVATION_BYTES, PerfModel

KV_FREE_FRACTION = 0.99
"""kv_cache_free_gpu_mem_fraction of the published runs."""

LOGITS_BYTES = 4.0
"""TensorRT-LLM v0.11's Llama engines return logits in FP32 (`logits_dtype` float32)."""


@dataclass(frozen=True)
class Row:
    model: str
    gpu: str
    dtype: str
    tp: int
    input_tokens: int
    output_tokens: int
    published: float
    emulated: float = 0.0

    @property
    def error(self) -> float:
        """Relative error of the emulator against the published figure."""
        return (self.emulated - self.published) / self.published

    @property
    def lengths(self) -> str:
        return f"{self.input_tokens}/{self.output_tokens}"


def offline_throughput(config: EngineConfig, input_tokens: int, output_tokens: int, requests: int) -> float:
    """Output tokens per second of `requests` identical requests all queued at time zero."""
    engine = Engine(config)
    for request_id in range(requests):
        engine.submit(request_id, input_tokens, output_tokens, ignore_eos=True)
    clock = 0.0
    while engine.has_work:
        result = engine.step()
        if result is None:
            raise RuntimeError("the engine stalled with requests waiting")  # cannot happen: check() admits all
        clock += result.duration
    return requests * output_tokens / clock


def published_rows() -> list[Row]:
    table = profiles.load_table("published")
    rows = []
    for model, gpu, dtype, tp, lengths, value in table["rows"]:
        isl, osl = (int(x) for x in lengths.split("/"))
        rows.append(Row(model, gpu, dtype, int(tp), isl, osl, float(value)))
    return rows


def gpu_reserved_bytes(config: EngineConfig, max_batch_size: int) -> float:
    """What one GPU of the published engine holds besides its KV cache, as far as it follows from the
    build: its share of the streamed weights, the whole embedding table (TensorRT-LLM v0.11 leaves
    `use_parallel_embedding` off, so every GPU keeps all of it) and the engine's logits output,
    [max_batch_size, vocab] in FP32 on every GPU (`logits_dtype` float32, gathered over the vocabulary
    shards: models/llama/model.py of that release). Activation workspace is not known and not counted."""
    m = config.model
    streamed = PerfModel(config.model, config.dtype, config.gpu, config.tp, config.efficiency).streamed_bytes
    embedding = m.vocab * m.hidden * ACTIVATION_BYTES
    logits = max_batch_size * m.vocab * LOGITS_BYTES
    return streamed / config.tp + embedding + logits


def engine_for(row: Row, efficiency: profiles.Efficiency | None = None) -> EngineConfig:
    """The engine the published row ran: its limits, KV precision and KV memory."""
    table = profiles.load_table("published")
    limits: dict[str, Any] = table["limits"][row.model]
    settings: dict[str, Any] = dict(
        model=row.model,
        gpu=row.gpu,
        dtype=row.dtype,
        tp=row.tp,
        kv_dtype="fp8" if row.dtype == "fp8" else "fp16",
        **limits,
    )
    config, _ = build_config(**settings)
    free = row.tp * (config.gpu.memory_bytes - gpu_reserved_bytes(config, limits["max_batch_size"]))
    kv_gb = KV_FREE_FRACTION * free / 1e9
    config, _ = build_config(**settings, kv_cache_gb=kv_gb)
    if efficiency is not None:
        config = replace(config, efficiency=efficiency)
    return config


def run(rows: list[Row] | None = None, scale: float = 1.0, efficiency: profiles.Efficiency | None = None) -> list[Row]:
    """Emulate every row; `scale` < 1 sends that share of the published request counts (faster, and
    close while the batch still fills: ramp-up and drain weigh a little more)."""
    requests: dict[str, int] = profiles.load_table("published")["requests"]
    out = []
    for row in rows or published_rows():
        n = max(1, int(requests[row.lengths] * scale))
        emulated = offline_throughput(engine_for(row, efficiency), row.input_tokens, row.output_tokens, n)
        out.append(Row(**{**row.__dict__, "emulated": emulated}))
    return out


def mean_abs_error(rows: list[Row]) -> float:
    return sum(abs(r.error) for r in rows) / len(rows)


def markdown(rows: list[Row]) -> str:
    """The validation table as docs/emulator.md shows it."""
    lines = [
        "| model | GPU | format | TP | ISL/OSL | published tok/s | emulated tok/s | error |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.gpu} | {r.dtype} | {r.tp} | {r.lengths} | {r.published:,.0f} | "
            f"{r.emulated:,.0f} | {r.error:+.1%} |"
        )
    lines.append(f"\nMean absolute error over {len(rows)} rows: {mean_abs_error(rows):.1%}")
    return "\n".join(lines)


CALIBRATION_ROWS = ("h100-sxm", 1)
"""The rows the efficiency factors are chosen on: single-GPU H100 (GPU, TP); every other row is held out."""


def calibration_rows() -> list[Row]:
    gpu, tp = CALIBRATION_ROWS
    return [r for r in published_rows() if r.gpu == gpu and r.tp == tp]


def calibrate(
    compute: tuple[float, ...], memory: tuple[float, ...], overhead_ms: tuple[float, ...], scale: float = 0.5
) -> list[tuple[float, profiles.Efficiency]]:
    """The protocol of profiles/efficiency.yaml: every combination on the calibration rows at `scale` of
    the published request counts, as (mean absolute error, efficiency), best first."""
    results = []
    for c in compute:
        for m in memory:
            for o in overhead_ms:
                candidate = profiles.Efficiency(c, m, o, source="calibration candidate")
                rows = run(calibration_rows(), scale=scale, efficiency=candidate)
                results.append((mean_abs_error(rows), candidate))
    return sorted(results, key=lambda pair: pair[0])
