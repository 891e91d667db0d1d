"""Classifier objectives: signs, targets, success."""

from __future__ import annotations

import pytest
import torch

from lit_sdo.objectives import ClassifierObjective
from lit_sdo.objectives.classifier import margin

LOGITS = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
LABELS = torch.tensor([0, 1])


def test_margin_is_true_logit_minus_best_other() -> None:
    assert margin(LOGITS, LABELS).tolist() == [2.0, -3.0]


def test_untargeted_margin_loss_and_success() -> None:
    objective = ClassifierObjective("margin", kappa=1.0)
    assert objective(LOGITS, LABELS).tolist() == [2.0, -1.0]  # clamped at -κ once fooled
    assert objective.success(LOGITS, LABELS).tolist() == [False, True]


def test_targeted_losses_pull_towards_the_target() -> None:
    targets = torch.tensor([1, 2])
    objective = ClassifierObjective("margin", targeted=True)
    assert objective(LOGITS, LABELS, targets).tolist() == [2.0, 0.0]
    assert objective.success(LOGITS, LABELS, targets).tolist() == [False, True]
    ce = ClassifierObjective("ce", targeted=True)(LOGITS, LABELS, targets)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(LOGITS, targets, reduction="none"))


def test_drawn_targets_differ_from_labels_and_are_reproducible() -> None:
    labels = torch.arange(10)
    seeds = torch.arange(100, 110)
    first = ClassifierObjective.draw_targets(labels, 10, seeds)
    assert (first != labels).all() and ((first >= 0) & (first < 10)).all()
    assert torch.equal(first, ClassifierObjective.draw_targets(labels, 10, seeds))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="loss='hinge' is unknown"):
        ClassifierObjective("hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs targets"):
        ClassifierObjective(targeted=True)(LOGITS, LABELS)
