"""The c-BTM prompt classifier: which expert answers a prompt."""

from expert_router.classify.clusterer import (
    Clusterer,
    ClustererSettings,
    Routes,
    fit_pipeline,
)

__all__ = ["Clusterer", "ClustererSettings", "Routes", "fit_pipeline"]
