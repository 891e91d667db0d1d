"""Objectives: images in [0, 1] + the batch -> per-sample loss (B,). They know nothing of sampling.

One contract (:class:`Objective`); rewards share its call shape but are maximised (:class:`Reward`).
"""

from lit_sdo.objectives.aesthetic import AestheticObjective
from lit_sdo.objectives.base import Batch, Measure, Objective, Report
from lit_sdo.objectives.classifier import ClassifierObjective, attack_loss, draw_targets, margin
from lit_sdo.objectives.measures import LabelAgreement
from lit_sdo.objectives.rewards import ClassLogProbReward, EmbeddingMLPReward, InkReward, PreferenceReward, Reward
from lit_sdo.objectives.style import GramStyleObjective, gram_matrix
from lit_sdo.objectives.text import TextEditObjective, check_lambda, fidelity, text_image_distance

__all__ = [
    "AestheticObjective",
    "Batch",
    "ClassLogProbReward",
    "ClassifierObjective",
    "EmbeddingMLPReward",
    "GramStyleObjective",
    "InkReward",
    "LabelAgreement",
    "Measure",
    "Objective",
    "PreferenceReward",
    "Report",
    "Reward",
    "TextEditObjective",
    "attack_loss",
    "check_lambda",
    "draw_targets",
    "fidelity",
    "gram_matrix",
    "margin",
    "text_image_distance",
]
