"""The probability-flow ODE behind a diffusers scheduler, in the coordinates where DDIM is Euler's method.

The paper's baselines (AdjointDPM, EDICT/DOODL) treat sampling as an ODE, not as ``scheduler.step``. For a
VP model with x = √ᾱ·x₀ + √(1-ᾱ)·ε, the state y = x/√ᾱ and the level σ = √((1-ᾱ)/ᾱ) turn the probability-flow
ODE into dy/dσ = ε̂(y/√(1+σ²), t(σ)) (DDIM, Song et al. 2021, Eq. 14; AdjointDPM, Pan et al. 2024, Eq. 9).
Euler's method on the scheduler's own σ levels is DDIM, bit for bit up to rounding. Euler-type (VE)
schedulers already sample y; flow-matching schedulers sample x = (1-σ)·x₀ + σ·ε with dx/dσ = v, the
model's output. A :class:`ProbabilityFlow` reads one of these three views off a scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from lit_sdo.sampling.denoisers import DenoiserAdapter
from lit_sdo.sampling.inversion import alpha_levels, epsilon_from_output

FlowKind = Literal["vp", "ve", "flow"]


@dataclass
class ProbabilityFlow:
    """dy/dσ of one sampling run, from the level of its first step to the level after its last.

    Attributes:
        kind: ``vp`` (DDIM, DDPM, DPM-Solver, LCM: the sampler's x is y·√ᾱ), ``ve`` (Euler-type: x is y)
            or ``flow`` (flow matching: x is y, dy/dσ is the model's velocity).
        sigmas: (N + 1,) float64, σ at the input of each step and after the last one (decreasing).
        timesteps: (N,) the scheduler's model timestep at each step.
        prediction_type: what the model outputs (``epsilon``, ``v_prediction``, ``sample``; ignored for flow).
        log_sigma_table: (T,) log σ of every training timestep (VP/VE), to find t(σ) between levels.
        num_train_timesteps: T, the timestep scale of flow models (t = σ·T).
    """

    kind: FlowKind
    sigmas: Tensor
    timesteps: Tensor
    prediction_type: str
    log_sigma_table: Tensor | None
    num_train_timesteps: int

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def timestep(self, sigma: Tensor) -> Tensor:
        """Model timestep at level σ: the scheduler's own at its levels, interpolated in log σ in between."""
        hit = (self.sigmas[:-1].to(sigma.device, sigma.dtype) == sigma).nonzero()
        if len(hit):
            return self.timesteps[int(hit[0])]
        if self.kind == "flow":
            return sigma * self.num_train_timesteps
        table = self.log_sigma_table.to(sigma.device)  # (T,), increasing in t
        log_sigma = sigma.double().clamp_min(1e-12).log().clamp(table[0], table[-1])
        upper = torch.searchsorted(table, log_sigma.reshape(1)).clamp(1, len(table) - 1)[0]
        frac = (log_sigma - table[upper - 1]) / (table[upper] - table[upper - 1])
        return (upper - 1 + frac).to(sigma.dtype)

    def to_state(self, x: Tensor) -> Tensor:
        """The sampler's latent at the first level -> the ODE state y."""
        return x * (1 + self.sigmas[0] ** 2).sqrt().to(x) if self.kind == "vp" else x

    def from_state(self, y: Tensor) -> Tensor:
        """The ODE state at the last level -> the sampler's output x₀."""
        return y / (1 + self.sigmas[-1] ** 2).sqrt().to(y) if self.kind == "vp" else y

    def velocity(self, denoiser: DenoiserAdapter, y: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        """dy/dσ at level σ: one denoiser call (ε̂ for VP/VE models, the velocity for flow models)."""
        t = self.timestep(sigma)
        if self.kind == "flow":
            return denoiser(y, t, cond)
        alpha = 1 / (1 + sigma**2)  # ᾱ at level σ
        x = y * alpha.sqrt()  # (B, C, H, W): the model's input, x_t of the VP process
        return epsilon_from_output(denoiser(x, t, cond), x, alpha, self.prediction_type)


def probability_flow(scheduler: SchedulerMixin, start_step: int = 0) -> ProbabilityFlow:
    """The ODE view of ``scheduler`` (timesteps set) from ``scheduler.timesteps[start_step]`` to the end."""
    timesteps = scheduler.timesteps[start_step:]
    num_train = int(scheduler.config.get("num_train_timesteps", 1000))
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        sigmas = scheduler.sigmas.double()[start_step:]
        return ProbabilityFlow("flow", sigmas.cpu(), timesteps, "flow", None, num_train)
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise ValueError(f"{type(scheduler).__name__} has no noise schedule (alphas_cumprod) or flow sigmas to read "
                         "a probability-flow ODE from; use ddim, ddpm, dpm, euler, lcm or flow_euler")
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type={prediction_type!r} has no probability-flow ODE here; "
                         "allowed: epsilon, v_prediction, sample")
    alphas = alphas.double().cpu()
    log_table = (0.5 * ((1 - alphas) / alphas).log()).cpu()  # (T,) log σ_t
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0 and getattr(scheduler, "sigmas", None) is not None:
        sigmas = scheduler.sigmas.double().cpu()[start_step:]  # Euler-type: x_T ~ N(0, σ_max² + 1)
        return ProbabilityFlow("ve", sigmas, timesteps, prediction_type, log_table, num_train)
    levels = alpha_levels(scheduler)[start_step:]  # (N + 1,) ᾱ at each level
    sigmas = ((1 - levels) / levels).sqrt()
    return ProbabilityFlow("vp", sigmas, timesteps, prediction_type, log_table, num_train)


def refine_levels(sigmas: Tensor, substeps: int) -> Tensor:
    """(N·m + 1,) levels: each of the N intervals of ``sigmas`` cut into ``substeps`` equal pieces in σ."""
    if substeps == 1:
        return sigmas
    frac = torch.arange(substeps, dtype=sigmas.dtype) / substeps  # (m,)
    inner = sigmas[:-1, None] + frac[None, :] * (sigmas[1:] - sigmas[:-1])[:, None]  # (N, m)
    return torch.cat([inner.flatten(), sigmas[-1:]])
