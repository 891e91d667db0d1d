"""Text-guided editing loss (paper Sec. 5.1, Table 1): λ·(text–image distance) + (1−λ)·fidelity to x_ref."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn


class TextImageModel(Protocol):
    """What the text objective needs: CLIP (``lit_sdo.models.ClipModel``) and the embedded LiT model both fit."""

    def image_embeddings(self, images: Tensor) -> Tensor: ...  # images in [0, 1] -> unit-norm (B, D)

    def text_embeddings(self, prompts: list[str]) -> Tensor: ...  # prompts -> unit-norm (B, D)


def check_lambda(lam: float) -> None:
    """One-line error for a weight λ outside [0, 1]."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} must be in [0, 1] (the weight of the text distance; the paper uses 0.5 or 0.7)")


def text_image_distance(image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
    """1 − cos(image, text) per sample (B,), in [0, 2]: CLIP-score's distance (embeddings unit-norm)."""
    return 1.0 - (image_embeddings * text_embeddings).sum(-1)


class TextEditObjective(nn.Module):
    """L(x₀) = λ·(1 − cos(E_img(x₀), E_txt(prompt))) + (1 − λ)·mean((x₀ − x_ref)²), per sample (B,).

    The fidelity term is the mean squared pixel difference in [0, 1] units (the paper's ‖x₀ − x_ref‖,
    squared and averaged so its size does not depend on the image size and its gradient is finite at
    x₀ = x_ref). Text embeddings are computed once per distinct prompt and cached.

    Args:
        model: a text–image model (CLIP or the embedded LiT model).
        lam: λ in [0, 1], the weight of the text distance.
    """

    def __init__(self, model: TextImageModel, lam: float = 0.5) -> None:
        super().__init__()
        check_lambda(lam)
        self.model, self.lam = model, lam
        self._text_cache: dict[str, Tensor] = {}

    def text(self, prompts: list[str], device: torch.device) -> Tensor:
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            with torch.no_grad():
                for prompt, embedding in zip(missing, self.model.text_embeddings(missing), strict=True):
                    self._text_cache[prompt] = embedding.detach()
        return torch.stack([self._text_cache[p] for p in prompts]).to(device)

    def distance(self, images: Tensor, prompts: list[str]) -> Tensor:
        """Text–image distance (B,) of images in [0, 1]."""
        return text_image_distance(self.model.image_embeddings(images), self.text(prompts, images.device))

    def forward(self, images: Tensor, prompts: list[str], reference: Tensor) -> Tensor:
        if images.shape != reference.shape:
            raise ValueError(f"images {tuple(images.shape)} and reference {tuple(reference.shape)} differ in shape")
        fidelity = (images - reference).flatten(1).pow(2).mean(1)  # (B,)
        return self.lam * self.distance(images, prompts) + (1 - self.lam) * fidelity
