"""argparse types shared by the commands and the packages that add options of their own (`emulate.options`)."""

from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """A number, not nan or inf: a nan duration or rate made runs that never end."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value
