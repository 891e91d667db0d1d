"""Objectives: images (+ condition) -> per-sample loss (B,). They know nothing of sampling."""

from lit_sdo.objectives.classifier import ClassifierObjective

__all__ = ["ClassifierObjective"]
