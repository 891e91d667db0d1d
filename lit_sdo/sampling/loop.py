"""The sampling loop with an explicit gradient policy (paper Fig. 4/5, Sec. 4.3).

Before the first step, unit noise x_T is scaled by ``scheduler.init_noise_sigma`` (as diffusers' pipelines
do). Per step: ``scale_model_input`` -> denoiser call (graph or not, by the policy) -> ``scheduler.step``.
Following Sec. 4.3 / Eq. 18 (not the Fig. 4 listing), the scheduler step ALWAYS keeps its graph
under SDO: x_{t-1} = a_t·x_t + b_t·sg(u(x_t)) still depends on x_t, so gradient reaches x_T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lit_sdo.sampling.baselines import sample_baseline
from lit_sdo.sampling.denoisers import DenoiserAdapter
from lit_sdo.sampling.noise import scale_initial_noise
from lit_sdo.sampling.policies import BASELINE_NAMES, CallMode, GradientPolicy, as_policy
from lit_sdo.sampling.precision import Precision, no_grad_denoiser
from lit_sdo.sampling.schedulers import fresh_scheduler, warn_if_clipping

Generators = torch.Generator | list[torch.Generator] | None  # diffusers' convention: one, or one per sample


@dataclass
class SampleOutput:
    """Result of one sampling run.

    Attributes:
        sample: x₀ in the model's space (latents for latent models; see ``denoiser.decode``).
        trajectory: [x_start, x after step 0, ...] when requested, else None.
        modes: the call mode used at each step (which step kept the graph).
        partner: DOODL over both EDICT images (``doodl``, ``images=both``): the second image y₀, with its exact
            gradient; DOODL's loss is the mean of the losses at ``sample`` and ``partner``. None otherwise.
    """

    sample: Tensor
    trajectory: list[Tensor] | None
    modes: list[CallMode]
    partner: Tensor | None = None

    @property
    def graph_steps(self) -> list[int]:
        return [i for i, mode in enumerate(self.modes) if mode in (CallMode.GRAPH, CallMode.CHECKPOINT)]


def sample(
    denoiser: DenoiserAdapter,
    scheduler: SchedulerMixin,
    x: Tensor,
    cond: Tensor | None = None,
    *,
    policy: GradientPolicy | str = "sdo",
    start_step: int = 0,
    generator: Generators = None,
    policy_generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    precision: Precision | str | None = None,
) -> SampleOutput:
    """Run the sampler from ``x`` to x₀.

    What ``x`` is, as in diffusers' pipelines (their ``latents`` argument and img2img):

    - ``start_step == 0``: unit Gaussian noise x_T ~ N(0, I) (e.g. from :func:`noise_for_seeds`). The loop
      multiplies it by ``scheduler.init_noise_sigma`` (σ_max ≈ 14.6 for Euler with SD's β schedule, 1 for
      DDIM/DDPM/DPM/LCM/flow), so a perturbation of ``x`` lives in the same unit space for every scheduler.
    - ``start_step > 0``: the latent at ``scheduler.timesteps[start_step]`` in the scheduler's own space
      (``trajectory[start_step]`` of an earlier run, ``scheduler.add_noise``, or DDIM inversion); not rescaled.

    So ``sample(..., x=out.trajectory[i], start_step=i)`` continues a run ``out`` from step i, for every i,
    bit for bit with single-step solvers (DDIM, DDPM, Euler, LCM, flow); a multistep solver (DPM) restarts
    its history there (first order at step i), as it would in diffusers' img2img.

    Forward values never depend on ``policy``: the policy draws from ``policy_generator`` (or its own
    seeded generator), never from ``generator`` or torch's global RNG.

    Args:
        denoiser: an adapter from :mod:`lit_sdo.sampling.denoisers` (or any callable with its contract).
        scheduler: a diffusers scheduler with timesteps set; it is copied, never mutated.
        x: initial latent (B, C, H, W), see above.
        cond: class labels (B,) or text embeddings (B, L, D), or None.
        policy: which model calls keep a graph (:class:`GradientPolicy` or its name).
        start_step: index into ``scheduler.timesteps`` to start from (intermediate-latent editing).
        generator: noise for stochastic schedulers (DDPM, LCM), exactly as diffusers uses it (one generator,
            or one per sample; None: torch's global RNG).
        policy_generator: randomness of the policy (SDO's random k, random truncation); must not be
            ``generator``, or the policy's draws would shift the scheduler's noise.
        return_trajectory: also return every intermediate latent (``trajectory[0]`` is ``x`` as given).
        precision: how the no-grad (SKIP/OFF) model calls run, e.g. ``"bf16"`` or a
            :class:`~lit_sdo.sampling.precision.Precision`; graph-keeping calls and the scheduler
            arithmetic stay as they are. None (default) is the plain float32 call.
    """
    policy = as_policy(policy)
    scheduler = fresh_scheduler(scheduler)
    if not 0 <= start_step < len(scheduler.timesteps):
        raise ValueError(f"start_step={start_step} is outside [0, {len(scheduler.timesteps)}) for this scheduler")
    if policy_generator is not None and any(policy_generator is g for g in _as_list(generator)):
        raise ValueError("policy_generator is also the sampler's generator: pass a separate torch.Generator, "
                         "or the policy's draws change the scheduler's noise")
    check = getattr(denoiser, "check_latent", None)
    if check is not None:
        check(x)
    timesteps = scheduler.timesteps[start_step:]
    modes = policy.plan(len(timesteps), policy_generator)
    if policy.name in BASELINE_NAMES:  # AdjointDPM / DOODL run their own sampler with their own backward
        if return_trajectory:
            raise ValueError(f"return_trajectory is not available for policy {policy.name!r} (it keeps no trajectory)")
        x_start = scale_initial_noise(scheduler, x) if start_step == 0 else x  # the same contract as below
        x0, partner = sample_baseline(denoiser, scheduler, x_start, cond, policy, start_step)
        return SampleOutput(x0, None, modes, partner)
    grad_allowed = torch.is_grad_enabled()  # an outer no_grad (validation) wins over the policy
    if grad_allowed and policy.name != "none":
        warn_if_clipping(scheduler)
    if start_step > 0 and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_step)

    fast = no_grad_denoiser(denoiser, precision, x.device)  # the denoiser itself for float32
    trajectory = [x] if return_trajectory else None
    if start_step == 0:
        x = scale_initial_noise(scheduler, x)
    for t, mode in zip(timesteps, modes, strict=True):
        with torch.set_grad_enabled(grad_allowed and mode is not CallMode.OFF):
            x = _denoise_step(denoiser, scheduler, x, t, cond, mode, generator=generator, fast=fast)
        if trajectory is not None:
            trajectory.append(x)
    return SampleOutput(sample=x, trajectory=trajectory, modes=modes)


def _as_list(generator: Generators) -> list[torch.Generator]:
    if generator is None:
        return []
    return list(generator) if isinstance(generator, (list, tuple)) else [generator]


def _denoise_step(denoiser: DenoiserAdapter, scheduler: SchedulerMixin, x: Tensor, t: Tensor,
                  cond: Tensor | None, mode: CallMode, *, generator: Generators,
                  fast: Callable[..., Tensor] | None = None) -> Tensor:
    """One solver step x_t -> x_{t-1}; only the model call's graph depends on ``mode``.

    ``fast`` runs the no-grad (SKIP/OFF) calls, e.g. in bfloat16 (:mod:`lit_sdo.sampling.precision`).
    """
    fast = fast if fast is not None else denoiser
    scale = getattr(scheduler, "scale_model_input", None)  # Euler-type schedulers scale x_t; others lack it
    model_input = scale(x, t) if scale is not None else x
    if mode is CallMode.SKIP:
        with torch.no_grad():
            model_output = fast(model_input, t, cond)  # sg(u_θ(x_t, t)), Eq. 18
    elif mode is CallMode.CHECKPOINT and torch.is_grad_enabled():
        model_output = checkpoint(denoiser, model_input, t, cond, use_reentrant=False)
    else:
        model_output = (fast if mode is CallMode.OFF else denoiser)(model_input, t, cond)
    return scheduler.step(model_output, t, x, generator=generator, return_dict=False)[0]
