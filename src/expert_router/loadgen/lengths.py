"""Input-length distributions for prompts, in tokens.

`mlperf` is the default shape: right-skewed and capped at 1,024 tokens like the inputs of MLPerf
Inference's Llama-2-70B set (OpenOrca samples, the paper's Fig. 2). It is a log-normal with median
380 and shape 0.75, clipped to [16, 1024] — an approximation of that figure's shape, not MLPerf's
data. Users who have the real set pass its lengths with `file:PATH` (a JSON list of lengths, or
one length per line) and get exactly its empirical distribution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expert_router.errors import UserError

MLPERF_MEDIAN = 380
MLPERF_SIGMA = 0.75
MLPERF_MIN, MLPERF_MAX = 16, 1024
MAX_LENGTH = 131_072
"""The longest prompt asked for: a 128k-token context window. Longer is a typo (`--input-mean 1e9`
built a prompt of a billion words for each request, and the run hung)."""


@dataclass(frozen=True)
class LengthDistribution:
    kind: str
    mean: float = 335.0
    std: float = 30.0
    values: tuple[int, ...] = ()

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "mlperf":
            lengths = rng.lognormal(np.log(MLPERF_MEDIAN), MLPERF_SIGMA, n)
            return np.clip(np.rint(lengths), MLPERF_MIN, MLPERF_MAX).astype(int)
        if self.kind == "fixed":
            return np.clip(np.rint(rng.normal(self.mean, self.std, n)), 1, MAX_LENGTH).astype(int)
        return rng.choice(np.asarray(self.values), size=n)


def parse_lengths(spec: str, mean: float = 335.0, std: float = 30.0) -> LengthDistribution:
    """`mlperf`, `fixed` (mean ± std, the paper's 335 ± 30) or `file:PATH`."""
    if spec == "mlperf":
        return LengthDistribution("mlperf")
    if spec == "fixed":
        if not 1 <= mean <= MAX_LENGTH or not 0 <= std <= MAX_LENGTH:
            raise UserError(f"--input-mean must be 1 to {MAX_LENGTH:,} and --input-std 0 to {MAX_LENGTH:,}")
        return LengthDistribution("fixed", mean, std)
    if spec.startswith("file:"):
        path = Path(spec[5:])
        if not path.is_file():
            raise UserError(f"length file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not a text file of lengths ({exc})") from None
        try:
            values = json.loads(text) if text.lstrip().startswith("[") else [int(line) for line in text.split()]
        except ValueError as exc:
            raise UserError(f"{path}: expected a JSON list of lengths or one integer per line ({exc})") from None
        if not values or not all(isinstance(v, int) and 0 < v <= MAX_LENGTH for v in values):
            raise UserError(f"{path}: lengths must be integers from 1 to {MAX_LENGTH:,}")
        return LengthDistribution("file", values=tuple(values))
    raise UserError(f"unknown input-length distribution {spec!r}: use mlperf, fixed or file:PATH")
