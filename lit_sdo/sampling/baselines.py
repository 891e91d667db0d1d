"""The paper's memory-saving baselines behind :func:`lit_sdo.sampling.sample`'s policy switch."""

from __future__ import annotations

from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from lit_sdo.sampling.adjoint import adjoint_sample
from lit_sdo.sampling.denoisers import DenoiserAdapter
from lit_sdo.sampling.edict import check_edict_scheduler, doodl_sample
from lit_sdo.sampling.flow_ode import probability_flow
from lit_sdo.sampling.policies import BASELINE_NAMES, GradientPolicy


def check_baseline(scheduler: SchedulerMixin, policy: GradientPolicy, start_step: int = 0) -> None:
    """One-line ValueError if ``policy`` is a baseline whose sampler cannot run on ``scheduler`` (timesteps set).

    The same checks the samplers run first, so a task can refuse the combination when it is built instead
    of at its first optimisation step: DOODL needs a deterministic single-step scheduler with an exact
    EDICT inverse; AdjointDPM needs a noise schedule (or flow sigmas) to read the probability-flow ODE from.
    """
    if policy.name not in BASELINE_NAMES:
        return
    if policy.name == "doodl":
        check_edict_scheduler(scheduler)
    try:
        probability_flow(scheduler, start_step)
    except ValueError as err:
        raise ValueError(f"policy {policy.name!r} cannot run on {type(scheduler).__name__}: {err}") from None


def sample_baseline(denoiser: DenoiserAdapter, scheduler: SchedulerMixin, x: Tensor, cond: Tensor | None,
                    policy: GradientPolicy, start_step: int = 0) -> tuple[Tensor, Tensor | None]:
    """x₀ by AdjointDPM (``adjoint``) or DOODL (``doodl``), with that method's own backward, and DOODL's second
    EDICT image y₀ where its loss is over both (None otherwise)."""
    if policy.name == "adjoint":
        return adjoint_sample(denoiser, scheduler, x, cond, start_step=start_step, solver=policy.solver,
                              substeps=policy.substeps, states=policy.states, rtol=policy.rtol, atol=policy.atol), None
    if policy.name == "doodl":
        return doodl_sample(denoiser, scheduler, x, cond, start_step=start_step, mixing=policy.mixing,
                            leapfrog=policy.leapfrog, states=policy.states, images=policy.images)
    raise ValueError(f"policy {policy.name!r} is not a baseline sampler; baselines: adjoint, doodl")
