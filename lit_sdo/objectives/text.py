"""Text-guided editing loss (paper Sec. 5.1, Table 1): λ·(text–image distance) + (1−λ)·fidelity to x_ref."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lit_sdo import metrics
from lit_sdo.models.hub import as_module
from lit_sdo.models.text_image import load_text_image
from lit_sdo.objectives.base import Batch, Objective


def check_lambda(lam: float) -> None:
    """One-line error for a weight λ outside [0, 1]."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} must be in [0, 1] (the weight of the text distance; the paper uses 0.5 or 0.7)")


def text_image_distance(image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
    """1 − cos(image, text) per sample (B,), in [0, 2]: CLIP-score's distance (embeddings unit-norm)."""
    return 1.0 - (image_embeddings * text_embeddings).sum(-1)


def fidelity(images: Tensor, reference: Tensor, norm: str) -> Tensor:
    """Distance to the reference per sample (B,), in [0, 1] pixel units.

    ``l2``: the paper's ‖x₀ − x_ref‖ (Table 1), a norm that grows with the image size; ``mse``: its square
    divided by the number of pixels, size-independent and smooth at x₀ = x_ref.
    """
    if images.shape != reference.shape:
        raise ValueError(f"images {tuple(images.shape)} and reference {tuple(reference.shape)} differ in shape")
    squared = (images - reference).flatten(1).pow(2)
    return squared.sum(1).sqrt() if norm == "l2" else squared.mean(1)


class TextEditObjective(Objective):
    """L(x₀) = λ·(1 − cos(E_img(x₀), E_txt(prompt))) + (1 − λ)·fidelity(x₀, x_ref), per sample (B,).

    The prompt and the reference image come from the batch (``prompt``, ``image`` in [-1, 1]). Text
    embeddings are computed once per distinct prompt and cached.

    Args:
        text_image: a name for :func:`lit_sdo.models.text_image.load_text_image` (``embedded:digits-lit``, or a
            CLIP's transformers id or folder), or a built module with ``image_embeddings`` and ``text_embeddings``
            (unit-norm, (B, D)).
        lam: λ in [0, 1], the weight of the text distance (paper: 0.5 for attribute prompts, 0.7 otherwise).
        fidelity_norm: ``l2`` (the paper's ‖x₀ − x_ref‖) or ``mse`` (mean squared pixel difference).
    """

    def __init__(self, text_image: str | nn.Module = "embedded:digits-lit", lam: float = 0.5,
                 fidelity_norm: Literal["l2", "mse"] = "l2") -> None:
        super().__init__()
        check_lambda(lam)
        if fidelity_norm not in ("l2", "mse"):
            raise ValueError(f"fidelity_norm={fidelity_norm!r} is unknown; allowed values: l2, mse")
        self.lam, self.fidelity_norm = lam, fidelity_norm
        self.model = as_module(text_image, load_text_image)
        self._text_cache: dict[str, Tensor] = {}

    def text(self, prompts: list[str], device: torch.device) -> Tensor:
        missing = sorted({p for p in prompts if p not in self._text_cache})
        if missing:
            with torch.no_grad():
                for prompt, embedding in zip(missing, self.model.text_embeddings(missing), strict=True):
                    self._text_cache[prompt] = embedding.detach()
        return torch.stack([self._text_cache[p] for p in prompts]).to(device)

    @staticmethod
    def reference(batch: Batch) -> Tensor:
        if "image" not in batch or "prompt" not in batch:
            raise ValueError("text-guided editing needs reference images with prompts: use data class_path "
                             "lit_sdo.datamodules.ReferenceImageDataModule")
        return ((batch["image"] + 1) / 2).clamp(0, 1)

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        reference = self.reference(batch)  # first: a batch without references is a one-line error, not a KeyError
        distance = text_image_distance(self.model.image_embeddings(images), self.text(batch["prompt"], images.device))
        return self.lam * distance + (1 - self.lam) * fidelity(images, reference, self.fidelity_norm)

    def measure(self, images: Tensor, batch: Batch) -> dict[str, Tensor]:
        reference = self.reference(batch)
        scores = {"loss": self(images, batch),
                  "clip_score": metrics.clip_score(self.model.image_embeddings(images),
                                                   self.text(batch["prompt"], images.device)),
                  "ssim_to_reference": metrics.ssim(images, reference),
                  "l2_to_reference": metrics.lp_distances(images, reference)[0]}
        perceptual = metrics.lpips_distance(images, reference)
        if perceptual is not None:
            scores["lpips_to_reference"] = perceptual
        return scores
