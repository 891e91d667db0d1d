"""DDIM inversion: a real image x₀ -> the latent that the deterministic DDIM sampler maps back to it.

Text-guided editing (paper Sec. 5.1, Table 1) and aesthetic guidance of a real image start from
such a latent. The DDIM step x_{s} = √ᾱ_s · x̂₀ + √(1-ᾱ_s) · ε̂ (s < t) is run backwards, with ε̂
evaluated at the lower-noise latent instead of the unknown x_t (the usual approximation, exact when
ε̂ does not depend on x; the error shrinks with the step size). Inverting to ``start_step`` gives the
latent at ``scheduler.timesteps[start_step]``, so ``sample(..., start_step=start_step)`` from it
reconstructs x₀ (intermediate-latent editing from t = 600).
"""

from __future__ import annotations

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from lit_sdo.sampling.denoisers import DenoiserAdapter


def alpha_levels(scheduler: SchedulerMixin) -> Tensor:
    """ᾱ at each level the sampler passes through: [ᾱ(t_0), ..., ᾱ(t_{N-1}), ᾱ_final] (N + 1,).

    Level i is the input of sampling step i; the last entry is the output of the final step
    (``final_alpha_cumprod``: 1 when the scheduler sets α to one at the end, else ᾱ_0).
    """
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None or getattr(scheduler, "timesteps", None) is None:
        raise ValueError(f"DDIM inversion needs a scheduler with alphas_cumprod and timesteps set (ddim, ddpm, dpm, "
                         f"lcm); {type(scheduler).__name__} has none: use build_scheduler('ddim', N, ...)")
    timesteps = scheduler.timesteps.long().cpu()
    final = getattr(scheduler, "final_alpha_cumprod", alphas[0])
    return torch.cat([alphas[timesteps].double(), torch.as_tensor(final, dtype=torch.float64).view(1)])


def epsilon_from_output(output: Tensor, x: Tensor, alpha: float, prediction_type: str) -> Tensor:
    """The model's output (ε, v or x₀ prediction for a latent at level ᾱ) as a noise estimate ε̂."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x₀  ->  ε = √ᾱ v + √(1−ᾱ) x
        return alpha ** 0.5 * output + (1 - alpha) ** 0.5 * x
    if prediction_type == "sample":
        return (x - alpha ** 0.5 * output) / (1 - alpha) ** 0.5
    raise ValueError(f"prediction_type={prediction_type!r} cannot be inverted; allowed: epsilon, v_prediction, sample")


@torch.no_grad()
def invert_ddim(denoiser: DenoiserAdapter, scheduler: SchedulerMixin, x0: Tensor, cond: Tensor | None = None,
                start_step: int = 0, return_trajectory: bool = False) -> Tensor | list[Tensor]:
    """Latent at ``scheduler.timesteps[start_step]`` that DDIM sampling maps back to ``x0``.

    Args:
        denoiser: adapter with the ``denoiser(x, t, cond)`` contract (its guidance scale is used as is).
        scheduler: the scheduler the latent will be sampled with (DDIM for a faithful reconstruction);
            only its ᾱ table, timesteps and prediction type are read.
        x0: clean sample in the model's space (B, C, H, W): images in [-1, 1] for pixel models, VAE
            latents (already scaled) for latent models.
        cond: the condition the reconstruction will be sampled with.
        start_step: invert up to this step's input level (0 = x_T).
        return_trajectory: return [x₀, ..., x_{t_start}] (lowest noise first) instead of the latent.
    """
    num_steps = len(scheduler.timesteps)
    if not 0 <= start_step < num_steps:
        raise ValueError(f"start_step={start_step} is outside [0, {num_steps}) for this scheduler")
    check = getattr(denoiser, "check_latent", None)
    if check is not None:
        check(x0)
    levels = alpha_levels(scheduler)  # (N + 1,)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    x = x0
    trajectory = [x]
    for i in reversed(range(start_step, num_steps)):
        t = scheduler.timesteps[i]
        a_low, a_high = float(levels[i + 1]), float(levels[i])  # ᾱ of x (input) and of the step's output
        # 1. noise estimate at the lower level, read as the model's estimate at t_i (the approximation)
        eps = epsilon_from_output(denoiser(x, t, cond), x, a_high, prediction_type)
        # 2. x̂₀ implied by (x, ε̂) at level ᾱ_low, then 3. re-noised to level ᾱ_high along ε̂
        x0_hat = (x - (1 - a_low) ** 0.5 * eps) / a_low ** 0.5
        x = a_high ** 0.5 * x0_hat + (1 - a_high) ** 0.5 * eps
        trajectory.append(x)
    return trajectory if return_trajectory else x
