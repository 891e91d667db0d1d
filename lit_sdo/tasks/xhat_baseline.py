"""The FreeDoM/DPS-style baseline of the guided jobs: one sampling pass with per-step x̂₀ guidance of the
task's own objective, no δ and no optimisation loop (benchmarks/guided_policies.py sets it beside SDO)."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_sdo.images import to_unit_range
from lit_sdo.objectives import Batch
from lit_sdo.sampling.xhat_guidance import xhat_guided_sample
from lit_sdo.tasks.latent import LatentOptimizationModule


def xhat_guided_images(module: LatentOptimizationModule, batch: Batch, scale: float) -> Tensor:
    """Images in [0, 1] of ``batch`` guided by ``scale`` × the gradient of the objective at every step's x̂₀."""
    sampler = module.sampler
    x_start, cond = module.start_latent(batch), module.condition(batch)

    def loss_fn(x0_hat: Tensor) -> Tensor:
        return module.objective(to_unit_range(sampler.denoiser.decode(x0_hat)), batch)

    x0 = xhat_guided_sample(sampler.denoiser, sampler.scheduler, x_start, cond, loss_fn, scale=scale,
                            start_step=sampler.start_step, generator=sampler.noise_generator())
    with torch.no_grad():
        return to_unit_range(sampler.denoiser.decode(x0))
