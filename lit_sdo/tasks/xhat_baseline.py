"""The FreeDoM/DPS-style baseline of the guided jobs: one sampling pass with per-step x̂₀ guidance of the
task's own objective, no δ and no optimisation loop (benchmarks/guided_policies.py sets it beside SDO)."""

from __future__ import annotations

from torch import Tensor

from lit_sdo.objectives import Batch
from lit_sdo.tasks.latent import LatentOptimizationModule


def xhat_guided_images(module: LatentOptimizationModule, batch: Batch, scale: float) -> Tensor:
    """Images in [0, 1] of ``batch`` guided by ``scale`` × the gradient of the objective at every step's x̂₀."""
    return module.sampler.xhat_guided(module.start_latent(batch), module.condition(batch),
                                      lambda images: module.objective(images, batch), scale)
