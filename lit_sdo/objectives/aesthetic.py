"""Aesthetic guidance loss (paper Sec. 5.1.3, Table 4): |a(x₀) − target| with a score predictor a."""

from __future__ import annotations

from torch import Tensor, nn

from lit_sdo.models.aesthetic import load_aesthetic
from lit_sdo.models.hub import as_module
from lit_sdo.objectives.base import Batch, Objective


class AestheticObjective(Objective):
    """L(x₀) = |a(x₀) − target| per sample (B,); the paper pushes the LAION score to 10.

    Args:
        predictor: ``embedded:digits-thickness`` (a stroke-width stand-in, see lit_sdo.models.aesthetic), the
            path of LAION's aesthetic MLP weights (then ``clip`` is needed), or a built module images in [0, 1]
            -> scores (B,).
        clip: the CLIP whose image embeddings the LAION MLP reads (ViT-L/14 for the published weights); only
            with a LAION weights file.
        target: the score to reach.
    """

    def __init__(self, predictor: str | nn.Module = "embedded:digits-thickness", clip: str | None = None,
                 target: float = 10.0) -> None:
        super().__init__()
        if clip is not None and not isinstance(predictor, str):
            raise ValueError(f"clip={clip!r} is read only with a LAION weights file, but the predictor is a built "
                             f"{type(predictor).__name__} that scores images itself: drop clip")
        self.score, self.target = as_module(predictor, lambda name: load_aesthetic(name, clip)), target

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        return (self.score(images) - self.target).abs()

    def measure(self, images: Tensor, batch: Batch) -> dict[str, Tensor]:
        score = self.score(images)
        scores = {"loss": (score - self.target).abs(), "aesthetic_score": score}
        ground_truth = getattr(self.score, "measure", None)  # a stand-in predictor knows what it predicts
        if ground_truth is not None:
            scores |= ground_truth(images)
        return scores
