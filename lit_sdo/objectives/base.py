"""The one objective contract: ``objective(images_01, batch) -> loss (B,)``, an ``nn.Module``.

Objectives are injected into tasks with ``class_path`` / ``init_args``, so the networks they hold are
registered modules that Lightning moves and casts with the task. A task never asks what an objective
is: it calls the methods below, and what it measures is what the objective (and the measures it
is given) return.

Success, for an objective with a goal (an attack): a sample succeeds when its goal is reached (:meth:`evaluate`)
at the kept δ and it counts (:meth:`counts`, read on its clean image); the best-δ tracker keeps the first success
(:class:`lit_sdo.optim.BestTracker`), and an attack's report reads the same rule from the published images'
predictions (:func:`lit_sdo.metrics.attack_successes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from lit_sdo.records import SampleRecords

Batch = dict[str, Any]  # "index", "seed", "label" (B,) and, where the data has them, "prompt", "image", "target"


@dataclass
class Report:
    """What a task publishes: aggregate numbers, one row per sample, and the line printed at the end."""

    summary: dict[str, Any]
    samples: list[dict[str, Any]]
    headline: str


class Objective(nn.Module):
    """Base class: per-sample loss of images in [0, 1] given their batch; lower is better.

    Subclasses implement :meth:`forward`; :meth:`evaluate` adds a goal where the task has one (an attack) and
    :meth:`counts` which samples count in its success rate, :meth:`measure` adds the per-sample numbers a report
    shows, and :meth:`prepare` adapts to (and validates) the generator it will score before any work is done.
    """

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        raise NotImplementedError

    def evaluate(self, images: Tensor, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """(loss (B,), reached (B,) bool or None): the loss and, for a task with a goal, whether each image reaches
        it (None: no goal); one forward of the networks for both. A sample whose goal is reached keeps that δ."""
        return self(images, batch), None

    def counts(self, images: Tensor, batch: Batch) -> Tensor | None:
        """Bool (B,): whether each sample counts in the success rate, judged on its clean image (δ = 0); None:
        every sample counts. A sample succeeds when it counts and its goal is reached at the kept δ."""
        return None

    def measure(self, images: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Per-sample numbers for the results, each (B,) (or (B, D) features); the loss always."""
        return {"loss": self(images, batch)}

    def summarize(self, records: SampleRecords) -> Report | None:
        """The task's own report from every sample's records (the images before and after and what
        :meth:`measure` and the measures returned for each), or None for the generic one (means of every
        per-sample number, before and after)."""
        return None

    def reference_images(self, batch_size: int) -> dict[str, Tensor]:
        """Images shown beside every sample in the results grid (e.g. the style image), by column name."""
        return {}

    def prepare(self, image_size: int, channels: int, num_classes: int | None) -> None:
        """Adapt to the generator whose images will be scored (e.g. size a style image to them), or raise a
        one-line error when they cannot be scored. Called once, when the task is built."""


class Measure(nn.Module):
    """A per-sample measurement that is not the loss (label agreement, stroke width): ``(images, batch) -> dict``."""

    def forward(self, images: Tensor, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError
