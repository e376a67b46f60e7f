"""Where a request's answer ends: the end-of-sequence point, drawn per request from a distribution.

The emulator runs no model, so it cannot know when a real model would stop; it draws the answer length
instead. The default, `exponential:294`, makes end-of-sequence equally likely at every token (a
memoryless stop) with a mean of 294 tokens: the reference tokens per sample of MLPerf Inference's
Llama-2-70B benchmark (its accuracy check accepts 265.0..323.9, i.e. 294.45 ± 10%; MLCommons inference
results, TOKENS_PER_SAMPLE). `max_tokens` still caps it, and `ignore_eos` skips the draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from expert_router.errors import UserError
from expert_router.loadgen.lengths import parse_lengths

DEFAULT_OUTPUT_LENGTHS = "exponential:294"
KINDS = ("exponential", "fixed", "normal", "lognormal", "file")


@dataclass(frozen=True)
class OutputLengths:
    kind: str
    a: float = 0.0
    b: float = 0.0
    values: tuple[int, ...] = ()

    def sample(self, rng: np.random.Generator) -> int:
        value: float
        if self.kind == "exponential":
            value = rng.geometric(min(1.0, 1.0 / self.a))  # support 1, 2, ...; mean self.a
        elif self.kind == "fixed":
            value = self.a
        elif self.kind == "normal":
            value = rng.normal(self.a, self.b)
        elif self.kind == "lognormal":
            value = rng.lognormal(np.log(self.a), self.b)
        else:
            value = self.values[int(rng.integers(len(self.values)))]
        return max(1, int(round(float(value))))


def parse_output_lengths(spec: str) -> OutputLengths:
    """`exponential:MEAN`, `fixed:N`, `normal:MEAN,STD`, `lognormal:MEDIAN,SIGMA` or `file:PATH`."""
    kind, _, rest = spec.partition(":")
    if kind == "file":
        return OutputLengths("file", values=parse_lengths(spec).values)
    if kind not in KINDS or not rest:
        raise UserError(
            f"--output-lengths {spec!r}: use one of exponential:MEAN, fixed:N, normal:MEAN,STD, "
            "lognormal:MEDIAN,SIGMA, file:PATH"
        )
    try:
        numbers = [float(x) for x in rest.split(",")]
    except ValueError:
        raise UserError(f"--output-lengths {spec!r}: {rest!r} is not a number list") from None
    wanted = 2 if kind in ("normal", "lognormal") else 1
    if len(numbers) != wanted or not all(map(math.isfinite, numbers)) or numbers[0] <= 0 or min(numbers) < 0:
        # nan passed `<= 0` and made every request a 500 (cannot convert float NaN to integer)
        raise UserError(f"--output-lengths {spec!r}: {kind} takes {wanted} finite positive number(s)")
    return OutputLengths(kind, numbers[0], numbers[1] if wanted == 2 else 0.0)
