"""Style guidance loss (paper Sec. 5.2, Table 2): Gram matrices of an image encoder's intermediate features."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

FeatureFn = Callable[[Tensor], Tensor]  # images in [0, 1] -> features (B, C, N): C channels at N positions


def gram_matrix(features: Tensor) -> Tensor:
    """G = F Fᵀ / N per sample: (B, C, N) -> (B, C, C), the channel co-activations (Gatys et al.)."""
    return features @ features.transpose(1, 2) / features.shape[-1]


class GramStyleObjective(nn.Module):
    """L(x₀) = mean over entries of (G(f(x₀)) − G(f(style)))², per sample (B,).

    ``feature_fn`` is the encoder layer (paper: CLIP's vision encoder, 3rd layer; embedded: the LiT
    image tower's 2nd block, see :func:`lit_sdo.models.text_image.layer_features`). The style image's
    Gram matrix is computed once; one style image serves the batch, or one per sample.

    Args:
        feature_fn: images in [0, 1] -> (B, C, N).
        style_images: (1 or B, C, H, W) in [0, 1].
    """

    def __init__(self, feature_fn: FeatureFn, style_images: Tensor) -> None:
        super().__init__()
        if style_images.dim() != 4:
            raise ValueError(f"style_images have shape {tuple(style_images.shape)}; expected (1 or B, C, H, W)")
        self.feature_fn = feature_fn
        self.register_buffer("style_gram", gram_matrix(feature_fn(style_images)).detach(), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        gram = gram_matrix(self.feature_fn(images))  # (B, C, C)
        return (gram - self.style_gram.to(gram)).flatten(1).pow(2).mean(1)
