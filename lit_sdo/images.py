"""Image helpers shared by every task: range conversion, grids for TensorBoard and PNG files."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from lit_sdo.io import atomic_path


def to_unit_range(images: Tensor) -> Tensor:
    """[-1, 1] (the samplers' range) -> [0, 1] (classifiers', metrics' and files' range)."""
    return ((images + 1) / 2).clamp(0, 1)


def image_grid(images: Tensor, nrow: int = 8, padding: int = 1) -> Tensor:
    """Images in [0, 1] (B, C, H, W) -> one grid image (3, H', W') in [0, 1]."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    return grid


def save_png(path: str | os.PathLike[str], image: Tensor, scale: int = 1) -> Path:
    """Write one image (C, H, W) in [0, 1] as PNG, atomically; ``scale`` enlarges small digits for viewing."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if array.shape[0] == 1:
        pil = Image.fromarray(array[0].numpy(), mode="L")
    else:
        pil = Image.fromarray(array.permute(1, 2, 0).numpy())
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")
    return Path(path)
