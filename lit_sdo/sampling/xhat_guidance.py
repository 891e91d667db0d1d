"""Per-step guidance through the x̂₀ estimate (FreeDoM, Yu et al. 2023; DPS, Chung et al. 2023): the baseline
that SDO is compared against in the guided-generation benchmark.

One sampling pass, no optimisation loop and no backprop through the chain: at every step the loss of the
one-step estimate x̂₀(x_t) is differentiated w.r.t. x_t through ONE model call, and the solver's next
latent is moved against that gradient, x_{t-1} ← x_{t-1} − ρ · g/‖g‖_rms (the step normalised per sample,
as DPS normalises by the residual norm, so ρ is in latent units per step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from lit_sdo.sampling.denoisers import DenoiserAdapter
from lit_sdo.sampling.inversion import alpha_levels, epsilon_from_output
from lit_sdo.sampling.schedulers import fresh_scheduler


def xhat_guided_sample(denoiser: DenoiserAdapter, scheduler: SchedulerMixin, x: Tensor, cond: Tensor | None,
                       loss_fn: Callable[[Tensor], Tensor], *, scale: float = 0.1, start_step: int = 0,
                       generator: torch.Generator | None = None) -> Tensor:
    """Sample from ``x`` (the latent at ``scheduler.timesteps[start_step]``) with per-step x̂₀ guidance.

    Args:
        denoiser: adapter with the ``denoiser(x, t, cond)`` contract.
        scheduler: a scheduler with an ᾱ table (ddim, ddpm, lcm, ...) or lit_sdo's ShortcutScheduler; copied.
        x: start latent (B, C, H, W).
        cond: condition for the denoiser.
        loss_fn: x̂₀ in the model's space -> per-sample loss (B,) (decode inside it for latent models).
        scale: ρ, the guidance step per sampling step (latent units, rms per sample).
        start_step: index of the first step run.
        generator: noise for stochastic schedulers.
    """
    if scale < 0:
        raise ValueError(f"scale={scale} must be >= 0 (the guidance step ρ)")
    scheduler = fresh_scheduler(scheduler)
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        raise ValueError(f"x̂₀ guidance runs on variance-preserving schedulers (ddim, ddpm, dpm, lcm) and the shortcut "
                         f"sampler; {type(scheduler).__name__} scales its latents by σ")
    flow_time = getattr(scheduler, "time_of", None)  # shortcut/flow scheduler: x̂₀ = x_t + (1 − t)·v
    levels = None if flow_time is not None else alpha_levels(scheduler)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if start_step > 0 and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start_step)
    for i, t in enumerate(scheduler.timesteps[start_step:], start=start_step):
        x_in = x.detach().requires_grad_(True)
        with torch.enable_grad():
            output = denoiser(x_in, t, cond)
            if levels is None:
                x0_hat = x_in + (1 - flow_time(t).to(x_in)) * output  # one jump along the predicted velocity
            else:
                alpha = float(levels[i])
                eps = epsilon_from_output(output, x_in, alpha, prediction_type)
                x0_hat = (x_in - (1 - alpha) ** 0.5 * eps) / alpha ** 0.5  # Tweedie's one-step estimate
            (grad,) = torch.autograd.grad(loss_fn(x0_hat).sum(), x_in)
        with torch.no_grad():
            x = scheduler.step(output.detach(), t, x, generator=generator, return_dict=False)[0]
            rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12).view(-1, *([1] * (x.dim() - 1)))
            x = x - scale * grad / rms
    return x
