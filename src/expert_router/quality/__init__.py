"""Answer quality of the experts: does a prompt routed to its cluster's expert get a better model?

The spine: `heldout` (documents kept out of training at build time, with their cluster and label)
-> `perplexity` (every expert and the base model on every cluster's held-out text) -> `evaluate`
(the matrix and its summary: diagonal-lowest rows, routed vs base and vs a random other expert,
routing accuracy) -> `figures` (the heat map and the table the report shows).
"""

from typing import TYPE_CHECKING

from expert_router.quality.evaluate import Evaluation, evaluate_experts
from expert_router.quality.heldout import HeldOut, is_held_out, read_held_out, write_held_out

if TYPE_CHECKING:
    from expert_router.quality.figures import QualitySection, answer_quality_section


def __getattr__(name: str) -> object:
    """`figures` (matplotlib, ~0.4 s to import) on first use: `demo` and `experts` import this package
    for the held-out split, and every CLI command imports those."""
    if name in ("QualitySection", "answer_quality_section"):
        from expert_router.quality import figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Evaluation",
    "HeldOut",
    "QualitySection",
    "answer_quality_section",
    "evaluate_experts",
    "is_held_out",
    "read_held_out",
    "write_held_out",
]
