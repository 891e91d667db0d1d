"""Aesthetic guidance loss (paper Sec. 5.2, Table 4): |a(x₀) − target| with a score predictor a."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class AestheticObjective(nn.Module):
    """L(x₀) = |a(x₀) − target| per sample (B,); the paper pushes the LAION score to 10.

    Args:
        score_fn: images in [0, 1] -> score (B,) (CLIP embedding + :class:`AestheticMLP`, or the
            embedded stroke-thickness predictor).
        target: the score to reach.
    """

    def __init__(self, score_fn: Callable[[Tensor], Tensor], target: float = 10.0) -> None:
        super().__init__()
        self.score_fn, self.target = score_fn, target

    def forward(self, images: Tensor) -> Tensor:
        return (self.score_fn(images) - self.target).abs()
