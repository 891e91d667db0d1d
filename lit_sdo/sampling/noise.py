"""Initial noise from per-sample seeds: the same (seed, shape) gives the same x_T on any machine or rank."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def noise_for_seeds(seeds: Sequence[int] | Tensor, shape: Sequence[int], device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """x_T (B, *shape): row i is ``randn(shape)`` from a CPU generator seeded with ``seeds[i]``.

    Drawn on the CPU and then moved, so a sample's noise does not depend on the device, the batch it
    lands in, or the DDP rank that processes it.
    """
    rows = [torch.randn(*shape, generator=torch.Generator().manual_seed(int(seed)), dtype=dtype) for seed in seeds]
    return torch.stack(rows).to(device)
