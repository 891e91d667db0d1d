"""Style guidance loss (paper Sec. 5.1.2, Table 2): Gram matrices of an image encoder's intermediate features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_sdo.datamodules.images import load_style_image
from lit_sdo.models.hub import as_module
from lit_sdo.models.text_image import load_text_image
from lit_sdo.objectives.base import Batch, Objective


def gram_matrix(features: Tensor) -> Tensor:
    """G = F Fᵀ / N per sample: (B, C, N) -> (B, C, C), the channel co-activations (Gatys et al.)."""
    return features @ features.transpose(1, 2) / features.shape[-1]


class GramStyleObjective(Objective):
    """L(x₀) = mean over entries of (G(f(x₀)) − G(f(style)))², per sample (B,).

    f is an encoder layer (paper: CLIP's vision encoder, 3rd layer; embedded: the LiT image tower's
    blocks). The style image is read and sized to the generator's images in :meth:`prepare`; its Gram
    matrix is computed once.

    Args:
        style_image: ``digits:<test index>`` or an image file.
        encoder: the image encoder whose layer gives the features: a name for
            :func:`lit_sdo.models.text_image.load_text_image` (``embedded:digits-lit``, or a CLIP), or a built
            module with ``block_features(images, layer) -> (B, C, N)``.
        layer: the encoder layer (paper: CLIP vision layer 3; embedded: image-tower block 1..3).
    """

    def __init__(self, style_image: str = "digits:0", encoder: str | nn.Module = "embedded:digits-lit",
                 layer: int = 2) -> None:
        super().__init__()
        self.style_spec, self.layer = style_image, layer
        self.encoder = as_module(encoder, load_text_image)
        self.register_buffer("style", torch.zeros(0), persistent=False)
        self.register_buffer("style_gram", torch.zeros(0), persistent=False)

    def features(self, images: Tensor) -> Tensor:
        return self.encoder.block_features(images, self.layer)  # (B, C, N)

    def prepare(self, image_size: int, channels: int, num_classes: int | None) -> None:
        self.style = load_style_image(self.style_spec, image_size, channels)  # (1, C, H, W) in [0, 1]
        with torch.no_grad():
            self.style_gram = gram_matrix(self.features(self.style))

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        if self.style_gram.numel() == 0:
            raise RuntimeError("GramStyleObjective.prepare(image_size, channels, num_classes) was not called")
        gram = gram_matrix(self.features(images))  # (B, C, C)
        return (gram - self.style_gram.to(gram)).flatten(1).pow(2).mean(1)

    def reference_images(self, batch_size: int) -> dict[str, Tensor]:
        """The style image beside every sample in the results grid."""
        return {"style": self.style.expand(batch_size, -1, -1, -1)}
