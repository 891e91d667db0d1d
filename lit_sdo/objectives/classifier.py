"""Classifier objectives for attacks: margin or cross-entropy, untargeted or targeted."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """logit of ``labels`` minus the largest other logit (B,): > 0 means the classifier picks ``labels``."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return true - others.amax(dim=1)


class ClassifierObjective(nn.Module):
    """Per-sample attack loss on a classifier's logits; minimising it moves the prediction.

    Untargeted: push the prediction away from the true label y (margin: m_y = z_y − max_{j≠y} z_j,
    clamped at −κ; ce: −CE(z, y)). Targeted: pull it to the target t (margin: −m_t clamped at −κ;
    ce: CE(z, t)). Success: untargeted argmax ≠ y; targeted argmax = t.

    Args:
        loss: ``margin`` (C&W-style, bounded, the default) or ``ce``.
        targeted: attack towards ``targets`` instead of away from ``labels``.
        kappa: confidence κ ≥ 0 of the margin loss: stop pushing once the margin passes −κ.
    """

    def __init__(self, loss: Literal["margin", "ce"] = "margin", targeted: bool = False, kappa: float = 0.0) -> None:
        super().__init__()
        if loss not in ("margin", "ce"):
            raise ValueError(f"loss={loss!r} is unknown; allowed values: margin, ce")
        if kappa < 0:
            raise ValueError(f"kappa={kappa} must be >= 0")
        self.loss, self.targeted, self.kappa = loss, targeted, kappa

    def forward(self, logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
        if self.targeted:
            if targets is None:
                raise ValueError("a targeted objective needs targets")
            if self.loss == "ce":
                return F.cross_entropy(logits, targets, reduction="none")
            return (-margin(logits, targets)).clamp(min=-self.kappa)
        if self.loss == "ce":
            return -F.cross_entropy(logits, labels, reduction="none")
        return margin(logits, labels).clamp(min=-self.kappa)

    def success(self, logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
        """Bool (B,): did the attack reach its goal on these logits."""
        predicted = logits.argmax(dim=1)
        return predicted == targets if self.targeted else predicted != labels

    @staticmethod
    def draw_targets(labels: Tensor, num_classes: int, seeds: Tensor) -> Tensor:
        """A target ≠ label per sample, drawn reproducibly from its seed."""
        offsets = torch.stack([torch.randint(1, num_classes, (1,), generator=torch.Generator().manual_seed(int(s) + 1))
                               for s in seeds.tolist()]).view(-1).to(labels.device)
        return (labels + offsets) % num_classes
