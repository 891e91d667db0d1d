"""Image helpers shared by every task: range conversion, grids for TensorBoard and PNG files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
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


def mark_rows(cells: Tensor, success: Tensor, width: int = 1) -> Tensor:
    """Frame every image of a grid row green (success) or red (failure): (rows, columns, C, H, W) in [0, 1]
    -> the same, RGB, with a ``width``-pixel border, so a grid shows which samples an attack fooled."""
    rgb = cells.expand(-1, -1, 3, -1, -1).clone() if cells.shape[2] == 1 else cells.clone()
    colors = torch.tensor([[0.85, 0.1, 0.1], [0.1, 0.75, 0.1]])[success.long()]  # (rows, 3)
    color = colors.view(-1, 1, 3, 1, 1).to(rgb)
    for edge in (np.s_[..., :width, :], np.s_[..., -width:, :], np.s_[..., :, :width], np.s_[..., :, -width:]):
        rgb[edge] = color.expand_as(rgb[edge])
    return rgb
