"""Objectives: images (+ condition) -> per-sample loss (B,). They know nothing of sampling."""

from lit_sdo.objectives.classifier import ClassifierObjective
from lit_sdo.objectives.rewards import ClassLogProbReward, EmbeddingMLPReward, InkReward

__all__ = ["ClassLogProbReward", "ClassifierObjective", "EmbeddingMLPReward", "InkReward"]
