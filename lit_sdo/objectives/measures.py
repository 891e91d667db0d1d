"""Measures: per-sample numbers a task reports beside its objective, injected the same way."""

from __future__ import annotations

from torch import Tensor

from lit_sdo.models import load_classifier
from lit_sdo.objectives.base import Batch, Measure


class LabelAgreement(Measure):
    """1 where a frozen classifier labels the image as the sample's class, else 0 (B,): does an edit keep y?

    Args:
        classifier: classifier name for :func:`lit_sdo.models.load_classifier`.
    """

    def __init__(self, classifier: str = "embedded:digits-resnet") -> None:
        super().__init__()
        self.classifier = load_classifier(classifier).requires_grad_(False)

    def forward(self, images: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"label_agreement": (self.classifier(images).argmax(1) == batch["label"]).float()}
