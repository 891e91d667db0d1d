"""Shortcut-model sampling as a diffusers-style scheduler plus a denoiser adapter (Frans et al. 2024, Alg. 2).

The paper samples with N = 1, 2, 4, ..., M steps of size d = 1/N: x_{t+d} = x_t + d · s(x_t, t, d). Two
objects carry this into :func:`lit_sdo.sampling.sample` unchanged:

- :class:`ShortcutScheduler` has the surface of a diffusers scheduler (``set_timesteps``, ``timesteps``,
  ``num_inference_steps``, ``step``, ``config``). Its timesteps follow the diffusers flow convention,
  noise level σ = 1 - t scaled by ``num_train_timesteps`` (1000 = pure noise), so they decrease as in
  every other scheduler and :func:`~lit_sdo.sampling.start_step_for` works.
- :class:`ShortcutDenoiser` turns a timestep into the paper's t and passes the step size d to the
  network. It reads N from the scheduler it was built with, so the pair stays consistent after
  ``scheduler.set_timesteps(N)``; :func:`build_shortcut_sampler` builds such a pair.

Classifier-free guidance is applied only when the network is queried at the flow level d = 1/M (the
paper's d = 0, Sec. 3.1: "we use CFG when evaluating the shortcut model at d = 0 but forgo it elsewhere").
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor, nn

from lit_sdo.sampling.denoisers import DenoiserAdapter


def check_step_count(num_steps: int, max_steps: int) -> None:
    """One-line error unless ``num_steps`` is a power of two in [1, max_steps]."""
    if not isinstance(num_steps, int) or num_steps < 1 or num_steps & (num_steps - 1) or num_steps > max_steps:
        raise ValueError(f"num_steps={num_steps!r} must be a power of two between 1 and {max_steps} "
                         "(the step sizes the shortcut model was trained for)")


class ShortcutScheduler(SchedulerMixin, ConfigMixin):
    """Deterministic N-step shortcut sampler (the Euler step of size d = 1/N), diffusers-style.

    Args:
        max_steps: M, the most steps the model was trained for (powers of two up to M are allowed).
        num_train_timesteps: scale of the timesteps: timestep = σ · num_train_timesteps, σ = 1 - t.
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, max_steps: int = 128, num_train_timesteps: int = 1000) -> None:
        check_step_count(max_steps, max_steps)
        self.timesteps: Tensor | None = None
        self.num_inference_steps: int | None = None

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Timesteps for N steps: σ_k = 1 - k/N, k = 0..N-1 (paper time t_k = k/N), scaled by T."""
        check_step_count(num_inference_steps, self.config.max_steps)
        self.num_inference_steps = num_inference_steps
        sigmas = 1.0 - torch.arange(num_inference_steps, dtype=torch.float64) / num_inference_steps
        self.timesteps = (sigmas * self.config.num_train_timesteps).to(device=device, dtype=torch.float32)

    @property
    def step_size(self) -> float:
        """d = 1/N of the current schedule."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(N) before sampling (N a power of two up to max_steps)")
        return 1.0 / self.num_inference_steps

    def time_of(self, timestep: Tensor | float) -> Tensor:
        """Scheduler timestep -> the paper's t in [0, 1] (0 = noise, 1 = data)."""
        return 1.0 - torch.as_tensor(timestep, dtype=torch.float32) / self.config.num_train_timesteps

    def step(self, model_output: Tensor, timestep: Tensor | float, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple[Tensor]:
        """x_{t+d} = x_t + d · s(x_t, t, d) (paper Alg. 2). ``generator`` is unused: the sampler is deterministic."""
        d = self.step_size
        if not torch.isclose(self.timesteps.cpu(), torch.as_tensor(timestep, dtype=torch.float32).cpu()).any():
            raise ValueError(f"timestep={float(timestep)} is not one of this {self.num_inference_steps}-step "
                             "schedule's timesteps; use scheduler.timesteps")
        prev_sample = sample + d * model_output  # (B, C, H, W), keeps the graph to sample and model_output
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """x_t = (1 - t) noise + t x₁ at the given scheduler timesteps (intermediate-latent editing)."""
        t = self.time_of(timesteps).to(original_samples).reshape(-1, *[1] * (original_samples.dim() - 1))
        return (1 - t) * noise + t * original_samples

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class ShortcutDenoiser(DenoiserAdapter):
    """Adapter for a shortcut network ``network(x, t, d, labels)`` (e.g. :class:`~lit_sdo.models.shortcut.ShortcutDiT`).

    Args:
        network: module with ``step_conditioned``, ``max_steps``, ``null_class``, ``in_channels``, ``sample_size``.
        scheduler: the :class:`ShortcutScheduler` this adapter is paired with; d = 1/N is read from it.
        guidance_scale: classifier-free guidance scale, applied only at the flow level d = 1/M.
        vae: decoder for latent models (None for pixels).
        flow_only: query the network at d = 1/M whatever N is (plain Euler flow sampling). Needed for a
            network trained without d-conditioning (the flow-matching baseline).
    """

    def __init__(self, network: nn.Module, scheduler: ShortcutScheduler, guidance_scale: float = 1.0,
                 vae: nn.Module | None = None, flow_only: bool = False) -> None:
        if not hasattr(network, "step_conditioned") or not hasattr(network, "max_steps"):
            raise ValueError(f"{type(network).__name__} is not a shortcut network (needs step_conditioned and "
                             "max_steps); load one with lit_sdo.models.shortcut.load_shortcut")
        if not network.step_conditioned and not flow_only:
            raise ValueError("this network was trained without step-size (d) conditioning, so it cannot take "
                             "shortcut steps; sample it with build_shortcut_sampler(..., flow_only=True)")
        if not isinstance(scheduler, ShortcutScheduler):
            raise ValueError(f"scheduler is a {type(scheduler).__name__}; a shortcut model needs ShortcutScheduler")
        if scheduler.config.max_steps > network.max_steps:
            raise ValueError(f"scheduler max_steps={scheduler.config.max_steps} exceeds the network's trained "
                             f"maximum {network.max_steps}")
        size = network.sample_size
        super().__init__(network, (network.in_channels, size, size), guidance_scale, vae=vae)
        self.scheduler = scheduler  # a plain attribute: shared with the caller, not copied
        self.flow_only = flow_only
        self.null_class = network.null_class

    @property
    def step_size(self) -> float:
        """d passed to the network: 1/N of the paired scheduler, or 1/M in flow-only mode."""
        return 1.0 / self.network.max_steps if self.flow_only else self.scheduler.step_size

    @property
    def guided(self) -> bool:
        """Whether guidance applies: only at the flow level d = 1/M (paper Sec. 3.1)."""
        return self.step_size == 1.0 / self.network.max_steps

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if not self.guided:
            return self._call_network(x, t, cond)  # conditional prediction, no CFG at d > 1/M
        return super().forward(x, t, cond)

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        time = self.scheduler.time_of(t).to(x)  # (B,) paper t
        d = torch.full_like(time, self.step_size)  # (B,)
        return self.network(x, time, d, cond)

    def null_condition(self, cond: Tensor) -> Tensor:
        return torch.full_like(cond, self.null_class)


def build_shortcut_sampler(network: nn.Module, num_steps: int, *, guidance_scale: float = 1.0,
                           vae: nn.Module | None = None, flow_only: bool = False,
                           **scheduler_config: Any) -> tuple[ShortcutDenoiser, ShortcutScheduler]:
    """A consistent (denoiser, scheduler) pair for ``num_steps`` steps: pass both to :func:`sample`.

    ``flow_only=True`` samples with Euler steps of size 1/N while querying the network at d = 1/M:
    the flow-matching baseline, or a shortcut model used as a plain flow model.
    """
    max_steps = getattr(network, "max_steps", None)
    if max_steps is None:
        raise ValueError(f"{type(network).__name__} is not a shortcut network (it has no max_steps)")
    check_step_count(num_steps, max_steps)
    scheduler = ShortcutScheduler(max_steps=max_steps, **scheduler_config)
    scheduler.set_timesteps(num_steps)
    denoiser = ShortcutDenoiser(network, scheduler, guidance_scale=guidance_scale, vae=vae, flow_only=flow_only)
    return denoiser, scheduler
