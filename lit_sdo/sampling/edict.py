"""DOODL (Wallace et al., ICCV 2023): exact gradients through EDICT's invertible coupled sampler.

EDICT (Wallace, Gokul, Naik, CVPR 2023, Eq. 14-15) runs two coupled sequences (x, y), both starting at
x_T. One step, with the first-order update z -> z + h·f(w) of the scheduler (h = σ_{i+1} - σ_i in the
coordinates of :mod:`lit_sdo.sampling.flow_ode`; this is DDIM's a_t·z + b_t·ε(w)):

    x' = x + h·f(y);   y' = y + h·f(x');   x'' = p·x' + (1-p)·y';   y'' = p·y' + (1-p)·x''

Each line can be solved for its input, so the step is invertible and (x_i, y_i) is reconstructed exactly
from (x_{i+1}, y_{i+1}). The forward keeps no graph; the backward walks the chain back, re-runs one step at a
time with a graph and takes one vector-Jacobian product. Where each step's inputs come from (``states``):
``all``, as DOODL's official code runs (it sets memcnn's ``keep_input = True``): stored by the forward, 2N
latents, every model call run twice; ``ends``: only the final pair is stored and each pair is rebuilt by the
inverse step, memory flat in N, every model call run three times (and, in float32, the inverse divides by p
twice per step; EDICT itself runs its UNet in float64).

DOODL's loss is over both decoded images, x₀ and y₀ (``optimize_first_edict_image_only`` restricts it to x₀).
:func:`doodl_pair` returns both with their exact gradients; :func:`doodl_sample` returns the sample x₀ and, with
``images="both"``, y₀ as its partner (:attr:`lit_sdo.sampling.loop.SampleOutput.partner`), whose loss a job
averages with x₀'s (:meth:`lit_sdo.models.sampler.Sampler.loss_images`). p = 0.93 is EDICT's and DOODL's
mixing coefficient; ``leapfrog`` alternates which sequence is updated first on odd steps, as EDICT's reference
pipeline does by default. The sample is the x sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from lit_sdo.sampling.denoisers import DenoiserAdapter
from lit_sdo.sampling.flow_ode import ProbabilityFlow, probability_flow
from lit_sdo.sampling.policies import BASELINE_STATES, EDICT_IMAGES, BaselineStates, EdictImages

# Deterministic single-step schedulers whose step is z -> z + h·f(z) in the flow coordinates.
EDICT_SCHEDULERS: tuple[type, ...] = (DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler)


@dataclass
class EdictChain:
    """One EDICT run: the ODE view, the denoiser, the condition and the mixing options."""

    denoiser: DenoiserAdapter
    flow: ProbabilityFlow
    cond: Tensor | None
    mixing: float = 0.93
    leapfrog: bool = True

    def _order(self, i: int) -> tuple[int, int]:
        """(first, second) sequence updated at step i."""
        return (1, 0) if self.leapfrog and i % 2 == 1 else (0, 1)

    def _update(self, z: Tensor, w: Tensor, i: int, sign: float) -> Tensor:
        """z ± h·f(w) at step i's level."""
        sigma = self.flow.sigmas[i].to(w)
        h = (self.flow.sigmas[i + 1] - self.flow.sigmas[i]).to(w)
        return z + sign * h * self.flow.velocity(self.denoiser, w, sigma, self.cond)

    def step(self, x: Tensor, y: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """(x_i, y_i) -> (x_{i+1}, y_{i+1})."""
        pair = [x, y]
        first, second = self._order(i)
        pair[first] = self._update(pair[first], pair[second], i, 1.0)
        pair[second] = self._update(pair[second], pair[first], i, 1.0)
        p = self.mixing
        x = p * pair[0] + (1 - p) * pair[1]
        y = p * pair[1] + (1 - p) * x
        return x, y

    def inverse_step(self, x: Tensor, y: Tensor, i: int) -> tuple[Tensor, Tensor]:
        """(x_{i+1}, y_{i+1}) -> (x_i, y_i): each line of :meth:`step` solved for its input, in reverse."""
        p = self.mixing
        y = (y - (1 - p) * x) / p
        x = (x - (1 - p) * y) / p
        pair = [x, y]
        first, second = self._order(i)
        pair[second] = self._update(pair[second], pair[first], i, -1.0)
        pair[first] = self._update(pair[first], pair[second], i, -1.0)
        return pair[0], pair[1]

    def run(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        for i in range(self.flow.num_steps):
            x, y = self.step(x, y, i)
        return x, y


class _EdictFunction(torch.autograd.Function):
    """x_T (state coordinates) -> the final EDICT pair (x₀, y₀), with DOODL's step-by-step backward; cond and
    params are inputs only so that autograd routes their gradients here.

    ``keep_inputs`` (memcnn's ``keep_input``, which DOODL's ``gen`` sets): every step's input pair is stored and
    the backward re-runs each step from it with a graph. Otherwise only the final pair is stored and each step's
    inputs are rebuilt by :meth:`EdictChain.inverse_step` (two more model calls per step, memory flat in N).
    """

    @staticmethod
    def forward(ctx: Any, chain: EdictChain, keep_inputs: bool, y0: Tensor, cond: Tensor | None,
                *params: Tensor) -> tuple[Tensor, Tensor]:
        inputs: list[Tensor] = []
        with torch.no_grad():
            x, y = y0, y0
            for i in range(chain.flow.num_steps):
                if keep_inputs:
                    inputs += [x, y]
                x, y = chain.step(x, y, i)
        ctx.chain, ctx.keep_inputs, ctx.cond, ctx.params = chain, keep_inputs, cond, params
        ctx.save_for_backward(*(inputs if keep_inputs else [x, y]))  # 2N latents, or 2
        return x.clone(), y.clone()

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        chain: EdictChain = ctx.chain
        saved = ctx.saved_tensors
        cond = ctx.cond if ctx.needs_input_grad[3] else None
        wrt_extra = ([cond] if cond is not None else []) + list(ctx.params)
        extra_grads = [torch.zeros_like(t) for t in wrt_extra]
        x, y = (None, None) if ctx.keep_inputs else saved
        for i in reversed(range(chain.flow.num_steps)):
            if ctx.keep_inputs:
                x, y = saved[2 * i], saved[2 * i + 1]
            else:
                with torch.no_grad():
                    x, y = chain.inverse_step(x, y, i)
            with torch.enable_grad():
                x_in, y_in = x.detach().requires_grad_(), y.detach().requires_grad_()
                x_out, y_out = chain.step(x_in, y_in, i)
                grads = torch.autograd.grad((x_out, y_out), [x_in, y_in, *wrt_extra], (grad_x, grad_y),
                                            allow_unused=True)
            grad_x, grad_y = grads[0], grads[1]
            for acc, g in zip(extra_grads, grads[2:], strict=True):
                if g is not None:
                    acc += g
        grad_cond = extra_grads[0] if cond is not None else None
        grad_params = extra_grads[1:] if cond is not None else extra_grads
        return (None, None, grad_x + grad_y, grad_cond, *grad_params)


def check_edict_scheduler(scheduler: SchedulerMixin) -> None:
    """One-line error unless EDICT can invert the scheduler's step exactly."""
    if not isinstance(scheduler, EDICT_SCHEDULERS):
        allowed = ", ".join(cls.__name__ for cls in EDICT_SCHEDULERS)
        raise ValueError(f"policy 'doodl' cannot run on {type(scheduler).__name__}: EDICT inverts exactly only a "
                         f"deterministic single-step z -> z + h·f(z) update; allowed schedulers: {allowed}")


def doodl_pair(denoiser: DenoiserAdapter, scheduler: SchedulerMixin, x: Tensor, cond: Tensor | None, *,
               start_step: int = 0, mixing: float = 0.93, leapfrog: bool = True,
               states: BaselineStates = "all") -> tuple[Tensor, Tensor]:
    """Both EDICT outputs (x₀, y₀) of the chain started at (x, x), with DOODL's backward (exact for any loss of
    both; ``states`` as in :class:`~lit_sdo.sampling.policies.GradientPolicy`)."""
    check_edict_scheduler(scheduler)
    if states not in BASELINE_STATES:
        raise ValueError(f"doodl states={states!r} is unknown; allowed values: {', '.join(BASELINE_STATES)}")
    chain = EdictChain(denoiser, probability_flow(scheduler, start_step), cond, mixing, leapfrog)
    y_start = chain.flow.to_state(x)  # (B, C, H, W)
    if not torch.is_grad_enabled():
        x0, y0 = chain.run(y_start, y_start)
    else:
        params = [p for p in denoiser.parameters() if p.requires_grad]
        cond_input = cond if cond is not None and cond.is_floating_point() else None
        x0, y0 = _EdictFunction.apply(chain, states == "all", y_start, cond_input, *params)
    return chain.flow.from_state(x0), chain.flow.from_state(y0)


def doodl_sample(denoiser: DenoiserAdapter, scheduler: SchedulerMixin, x: Tensor, cond: Tensor | None, *,
                 start_step: int = 0, mixing: float = 0.93, leapfrog: bool = True, states: BaselineStates = "all",
                 images: EdictImages = "both") -> tuple[Tensor, Tensor | None]:
    """(x₀, y₀) of the EDICT chain started at (x, x) for ``both`` (DOODL's loss over both images), (x₀, None) for
    ``first``; the sample is x₀."""
    if images not in EDICT_IMAGES:
        raise ValueError(f"doodl images={images!r} is unknown; allowed values: {', '.join(EDICT_IMAGES)}")
    x0, y0 = doodl_pair(denoiser, scheduler, x, cond, start_step=start_step, mixing=mixing, leapfrog=leapfrog,
                        states=states)
    return x0, y0 if images == "both" else None
