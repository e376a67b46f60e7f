"""Answer quality of the experts: does a prompt routed to its cluster's expert get a better model?

The spine: `heldout` (documents kept out of training at build time, with their cluster and label)
-> `perplexity` (every expert and the base model on every cluster's held-out text) -> `evaluate`
(the matrix and its summary: diagonal-lowest rows, routed vs base and vs a random other expert,
routing accuracy) -> `figures` (the heat map and the table the report shows).
"""

from expert_router.quality.evaluate import Evaluation, evaluate_experts
from expert_router.quality.figures import QualitySection, answer_quality_section
from expert_router.quality.heldout import HeldOut, is_held_out, read_held_out, write_held_out

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
