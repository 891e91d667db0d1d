"""Sinusoidal embeddings of scalars (timesteps, step sizes, positions), shared by the network definitions
(:mod:`lit_sdo.models.adm`, :mod:`lit_sdo.models.shortcut`); a leaf module, so neither borrows from the other."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_embedding(values: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """(B,) scalars in about [0, 1] -> (B, dim) sin/cos features (DDPM/DiT timestep embedding)."""
    half = dim // 2
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32  # never in half precision
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=values.device, dtype=dtype) / half)
    angles = scale * values.to(dtype)[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.cos(), angles.sin()], dim=1)
