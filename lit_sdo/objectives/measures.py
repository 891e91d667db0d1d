"""Measures: per-sample numbers a task reports beside its objective, injected the same way."""

from __future__ import annotations

from torch import Tensor

from lit_sdo.models import Classifier, load_classifier
from lit_sdo.models.hub import as_module
from lit_sdo.objectives.base import Batch, Measure


class LabelAgreement(Measure):
    """1 where a frozen classifier labels the image as the sample's class, else 0 (B,): does an edit keep y?

    Args:
        classifier: a name for :func:`lit_sdo.models.load_classifier` or a built :class:`~lit_sdo.models.Classifier`.
    """

    def __init__(self, classifier: str | Classifier = "embedded:digits-resnet") -> None:
        super().__init__()
        self.classifier = as_module(classifier, load_classifier, Classifier)

    def forward(self, images: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"label_agreement": (self.classifier(images).argmax(1) == batch["label"]).float()}
