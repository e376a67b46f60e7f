"""The c-BTM prompt classifier: which expert answers a prompt."""

from expert_router.classifier.model import (
    Classifier,
    ClassifierSettings,
    Routes,
    fit_pipeline,
)

__all__ = ["Classifier", "ClassifierSettings", "Routes", "fit_pipeline"]
