"""The paper's memory-saving baselines behind :func:`lit_sdo.sampling.sample`'s policy switch."""

from __future__ import annotations

from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from lit_sdo.sampling.adjoint import adjoint_sample
from lit_sdo.sampling.denoisers import DenoiserAdapter
from lit_sdo.sampling.edict import doodl_sample
from lit_sdo.sampling.policies import GradientPolicy


def sample_baseline(denoiser: DenoiserAdapter, scheduler: SchedulerMixin, x: Tensor, cond: Tensor | None,
                    policy: GradientPolicy, start_step: int = 0) -> Tensor:
    """x₀ by AdjointDPM (``adjoint``) or DOODL (``doodl``), with that method's own backward."""
    if policy.name == "adjoint":
        return adjoint_sample(denoiser, scheduler, x, cond, start_step=start_step, solver=policy.solver,
                              substeps=policy.substeps, rtol=policy.rtol, atol=policy.atol)
    if policy.name == "doodl":
        return doodl_sample(denoiser, scheduler, x, cond, start_step=start_step, mixing=policy.mixing,
                            leapfrog=policy.leapfrog)
    raise ValueError(f"policy {policy.name!r} is not a baseline sampler; baselines: adjoint, doodl")
