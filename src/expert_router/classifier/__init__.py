"""The c-BTM prompt classifier: which expert answers a prompt."""

from expert_router.classifier.model import Classifier, Routes, fit_pipeline
from expert_router.classifier.settings import ClassifierSettings

__all__ = ["Classifier", "ClassifierSettings", "Routes", "fit_pipeline"]
