"""Initial noise from per-sample seeds, and its scale in a scheduler's space.

The same (seed, shape) gives the same x_T on any machine or rank. x_T is drawn as UNIT noise; the scheduler's
``init_noise_sigma`` (σ_max for Euler-type schedulers, 1 for DDIM/DDPM/DPM/LCM/flow) is applied by
:func:`~lit_sdo.sampling.sample` through :func:`scale_initial_noise`, as diffusers' pipelines do before their
loop, so callers that perturb or optimise x_T work in the same unit space for every scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor


def noise_for_seeds(seeds: Sequence[int] | Tensor, shape: Sequence[int], device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """Unit-noise x_T (B, *shape): row i is ``randn(shape)`` from a CPU generator seeded with ``seeds[i]``.

    Drawn on the CPU and then moved, so a sample's noise does not depend on the device, the batch it
    lands in, or the DDP rank that processes it. Row i equals the noise diffusers' pipelines draw for
    sample i from ``generator=[torch.Generator().manual_seed(s) for s in seeds]`` (before scaling).
    """
    rows = [torch.randn(*shape, generator=torch.Generator().manual_seed(int(seed)), dtype=dtype) for seed in seeds]
    return torch.stack(rows).to(device)


def scale_initial_noise(scheduler: SchedulerMixin, noise: Tensor) -> Tensor:
    """Unit noise -> x_T in the scheduler's space: ``noise * scheduler.init_noise_sigma`` (keeps the graph).

    ``init_noise_sigma`` depends on the timesteps (Euler: σ_max, or √(σ_max² + 1) for "leading" spacing),
    so the scheduler must have them set. Schedulers without the attribute (flow matching) start at 1.
    """
    sigma = getattr(scheduler, "init_noise_sigma", 1.0)
    return noise if isinstance(sigma, float) and sigma == 1.0 else noise * sigma
