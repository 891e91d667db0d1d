"""Objectives: images (+ condition) -> per-sample loss (B,). They know nothing of sampling."""

from lit_sdo.objectives.aesthetic import AestheticObjective
from lit_sdo.objectives.classifier import ClassifierObjective
from lit_sdo.objectives.rewards import ClassLogProbReward, EmbeddingMLPReward, InkReward, PreferenceReward
from lit_sdo.objectives.style import GramStyleObjective, gram_matrix
from lit_sdo.objectives.text import TextEditObjective, check_lambda, text_image_distance

__all__ = [
    "AestheticObjective",
    "ClassLogProbReward",
    "ClassifierObjective",
    "EmbeddingMLPReward",
    "GramStyleObjective",
    "InkReward",
    "PreferenceReward",
    "TextEditObjective",
    "check_lambda",
    "gram_matrix",
    "text_image_distance",
]
