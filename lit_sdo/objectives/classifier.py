"""Classifier objectives for attacks: margin or cross-entropy, untargeted or targeted (paper Sec. 5.1.4)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_sdo import metrics
from lit_sdo.models import Classifier, load_classifier
from lit_sdo.models.hub import as_module
from lit_sdo.objectives.base import Batch, Objective, Report
from lit_sdo.records import SampleRecords


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """logit of ``labels`` minus the largest other logit (B,): > 0 means the classifier picks ``labels``."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return true - others.amax(dim=1)


def draw_targets(labels: Tensor, num_classes: int, seeds: Tensor) -> Tensor:
    """A target ≠ label per sample, drawn reproducibly from its seed."""
    offsets = torch.stack([torch.randint(1, num_classes, (1,), generator=torch.Generator().manual_seed(int(s) + 1))
                           for s in seeds.tolist()]).view(-1).to(labels.device)
    return (labels + offsets) % num_classes


def attack_loss(logits: Tensor, labels: Tensor, targets: Tensor | None, loss: str, kappa: float) -> Tensor:
    """Per-sample attack loss (B,); minimising it moves the prediction away from y (or towards the target t).

    Untargeted: margin m_y = z_y − max_{j≠y} z_j clamped at −κ, or −CE(z, y). Targeted: −m_t clamped at −κ,
    or CE(z, t).
    """
    if targets is not None:
        if loss == "ce":
            return F.cross_entropy(logits, targets, reduction="none")
        return (-margin(logits, targets)).clamp(min=-kappa)
    if loss == "ce":
        return -F.cross_entropy(logits, labels, reduction="none")
    return margin(logits, labels).clamp(min=-kappa)


class ClassifierObjective(Objective):
    """Fool a frozen classifier: the attack's loss, success rule and per-sample predictions.

    Goal: untargeted argmax ≠ y; targeted argmax = t. A sample counts in the success rate when its clean image
    is labelled y, so a success is the goal reached by a sample the classifier read correctly before the attack
    (:func:`lit_sdo.metrics.attack_successes`). A second classifier (another family) is only measured, never
    attacked: its predictions give the transfer rate and check that an attacked image still shows y.

    Args:
        classifier: the attacked classifier: a name for :func:`lit_sdo.models.load_classifier`
            (``embedded:digits-resnet``, ``timm/<id>``, ``torchvision:<name>``) or a built
            :class:`~lit_sdo.models.Classifier`.
        transfer_classifier: a second classifier (name or built) to measure transfer on, or None.
        loss: ``margin`` (C&W-style, bounded, the default) or ``ce``.
        targeted: attack towards a target class instead of away from the label.
        target: the target class (targeted only; None draws one per sample from its seed).
        kappa: confidence κ ≥ 0 of the margin loss: stop pushing once the margin passes −κ.
        resize_for_classifier: allow generated images of another size than the classifier's input.
    """

    def __init__(self, classifier: str | Classifier = "embedded:digits-resnet",
                 transfer_classifier: str | Classifier | None = None,
                 loss: Literal["margin", "ce"] = "margin", targeted: bool = False, target: int | None = None,
                 kappa: float = 0.0, resize_for_classifier: bool = False) -> None:
        super().__init__()
        if loss not in ("margin", "ce"):
            raise ValueError(f"loss={loss!r} is unknown; allowed values: margin, ce")
        if kappa < 0:
            raise ValueError(f"kappa={kappa} must be >= 0")
        self.loss, self.targeted, self.target, self.kappa = loss, targeted, target, kappa
        self.resize = resize_for_classifier
        self.classifier = as_module(classifier, load_classifier, Classifier)
        if target is not None and not 0 <= target < self.classifier.num_classes:
            raise ValueError(f"target={target} is out of range for a {self.classifier.num_classes}-class classifier")
        self.transfer = None
        if transfer_classifier is not None:
            self.transfer = as_module(transfer_classifier, load_classifier, Classifier)

    def prepare(self, image_size: int, channels: int, num_classes: int | None) -> None:
        """The classifiers' input size must match the generator's images unless a resize is asked for."""
        for classifier in (self.classifier, self.transfer):
            if classifier is not None and classifier.input_size != image_size and not self.resize:
                raise ValueError(
                    f"classifier {classifier.name} takes {classifier.input_size}×{classifier.input_size} images but "
                    f"the generator makes {image_size}×{image_size}; pick a matching classifier or set "
                    "resize_for_classifier: true")

    def targets(self, batch: Batch) -> Tensor | None:
        """The target class of each sample (targeted attacks), else None."""
        if not self.targeted:
            return None
        if "target" in batch:
            return batch["target"]
        if self.target is not None:
            return torch.full_like(batch["label"], self.target)
        return draw_targets(batch["label"], self.classifier.num_classes, batch["seed"])

    def reached(self, logits: Tensor, batch: Batch) -> Tensor:
        """Bool (B,): the attack's goal on these logits (the rule of :func:`lit_sdo.metrics.reaches_goal`)."""
        targets = self.targets(batch)
        predicted = logits.argmax(dim=1)
        return predicted == targets if targets is not None else predicted != batch["label"]

    def counts(self, images: Tensor, batch: Batch) -> Tensor:
        """Bool (B,): the clean images are labelled y (a sample already misread counts in no success rate)."""
        return self.classifier(images).argmax(dim=1) == batch["label"]

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        return self.evaluate(images, batch)[0]

    def evaluate(self, images: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        logits = self.classifier(images)
        loss = attack_loss(logits, batch["label"], self.targets(batch), self.loss, self.kappa)
        return loss, self.reached(logits, batch)

    def measure(self, images: Tensor, batch: Batch) -> dict[str, Tensor]:
        logits = self.classifier(images)
        targets = self.targets(batch)
        out = {"loss": attack_loss(logits, batch["label"], targets, self.loss, self.kappa),
               "pred": logits.argmax(1), "confidence": logits.softmax(1).amax(1),  # shown in the results grid
               "features": self.classifier.features(images),
               "target": targets if targets is not None else torch.full_like(batch["label"], -1)}
        if self.transfer is not None:
            out["transfer_pred"] = self.transfer(images).argmax(1)
        return out

    def summarize(self, records: SampleRecords) -> Report:
        """Success rate among clean-correct samples, image distances, FID and transfer (see the README)."""
        summary, samples = metrics.attack_report(records.columns(), self.targeted, self.classifier.name)
        headline = (f"attack success rate {summary['success_rate']:.2%} ({summary['num_success']}/"
                    f"{summary['num_clean_correct']} clean-correct samples)")
        if summary.get("ssim_mean") is not None:
            headline += f"; image change: mean SSIM {summary['ssim_mean']:.3f}, L2 (rms) {summary['l2_mean']:.4f}"
        if summary.get("num_success") and "success_still_labelled_y_by_transfer" in summary:
            headline += (f"; {summary['success_still_labelled_y_by_transfer']:.1%} of the successes still labelled "
                         f"y by {self.transfer.name}")
        return Report(summary, samples, headline)
