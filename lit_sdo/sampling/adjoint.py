"""AdjointDPM (Pan et al., ICLR 2024): gradients through the probability-flow ODE by the adjoint method.

Forward: the ODE of :mod:`lit_sdo.sampling.flow_ode` solved without a graph (torchdiffeq ``odeint_adjoint``,
as in the official code). Backward: the adjoint ODE solved from σ_end back to σ_start, re-computing the
state on the way, with one vector-Jacobian product of the denoiser per solver evaluation. Only the two
end states are stored, so memory does not grow with the number of steps. Gradients reach the start
latent (x_T or an intermediate latent), every trainable parameter of the denoiser (LoRA included) and a
floating-point condition (text embeddings) that requires grad.

The official code integrates over the sigmas of the inference timesteps with torchdiffeq's ``euler``
(its scheduler's default ``solver_type``), i.e. one solver step per sampling step: the defaults here.
With ``euler`` the forward is the scheduler's DDIM / Euler chain; the adjoint's gradient of it is exact
only as the solver steps grow (``substeps``), which is the method's known trade-off.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from lit_sdo.sampling.denoisers import DenoiserAdapter
from lit_sdo.sampling.flow_ode import ProbabilityFlow, probability_flow, refine_levels

FIXED_GRID_SOLVERS: tuple[str, ...] = ("euler", "midpoint", "rk4", "heun3")
ADAPTIVE_SOLVERS: tuple[str, ...] = ("dopri5", "bosh3", "adaptive_heun", "dopri8")
ADJOINT_SOLVERS: tuple[str, ...] = FIXED_GRID_SOLVERS + ADAPTIVE_SOLVERS


class _FlowField(nn.Module):
    """The right-hand side f(σ, y) = dy/dσ for torchdiffeq (which calls it as ``func(t, y)``)."""

    def __init__(self, denoiser: DenoiserAdapter, flow: ProbabilityFlow, cond: Tensor | None) -> None:
        super().__init__()
        self.denoiser, self.flow, self.cond = denoiser, flow, cond

    def forward(self, sigma: Tensor, y: Tensor) -> Tensor:
        velocity = self.flow.velocity(self.denoiser, y, sigma, self.cond)
        if torch.is_grad_enabled() and y.requires_grad and not velocity.requires_grad:
            velocity = velocity + 0 * y  # a model that ignores y: torchdiffeq's vector-Jacobian product needs a graph
        return velocity


def _grid_constructor(levels: Tensor) -> Callable[[object, Tensor, Tensor], Tensor]:
    """A fixed grid through every level, in whichever direction/sign torchdiffeq asks for it.

    torchdiffeq negates decreasing time spans and flips them again for the adjoint pass; the span it
    hands over is always (±levels[0], ±levels[-1]) or its reverse, and the grid must hit both ends exactly.
    """

    def construct(func: object, y0: Tensor, t: Tensor) -> Tensor:
        grid = levels.to(t)
        for candidate in (grid, -grid, grid.flip(0), -grid.flip(0)):
            if candidate[0] == t[0] and candidate[-1] == t[-1]:
                return candidate
        raise RuntimeError(f"time span {t.tolist()} does not match the solver grid's ends")

    return construct


def adjoint_sample(denoiser: DenoiserAdapter, scheduler: SchedulerMixin, x: Tensor, cond: Tensor | None,
                   *, start_step: int = 0, solver: str = "euler", substeps: int = 1, rtol: float = 1e-5,
                   atol: float = 1e-5) -> Tensor:
    """x₀ from ``x`` by the probability-flow ODE; its backward is the adjoint ODE (constant memory in N).

    Args:
        denoiser, scheduler, x, cond, start_step: as for :func:`lit_sdo.sampling.sample`.
        solver: a torchdiffeq method: fixed-grid ``euler``, ``midpoint``, ``rk4``, ``heun3`` step on the
            scheduler's levels (each cut into ``substeps`` pieces); adaptive ``dopri5``, ``bosh3``,
            ``adaptive_heun``, ``dopri8`` choose their own steps within ``rtol``/``atol``.
        substeps: fixed-grid solver steps per sampling step.
    """
    if solver not in ADJOINT_SOLVERS:
        raise ValueError(f"adjoint solver={solver!r} is unknown; allowed values: {', '.join(ADJOINT_SOLVERS)}")
    flow = probability_flow(scheduler, start_step)
    levels = refine_levels(flow.sigmas, substeps).to(device=x.device, dtype=x.dtype)  # (N·m + 1,)
    span = levels[[0, -1]]  # (2,): only the end states are kept
    options = {"grid_constructor": _grid_constructor(levels)} if solver in FIXED_GRID_SOLVERS else None
    field = _FlowField(denoiser, flow, cond)
    y0 = flow.to_state(x)  # (B, C, H, W)
    if not torch.is_grad_enabled():
        return flow.from_state(odeint(field, y0, span, method=solver, options=options, rtol=rtol, atol=atol)[-1])
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    if cond is not None and cond.is_floating_point() and cond.requires_grad:
        trainable.append(cond)
    y = odeint_adjoint(field, y0, span, method=solver, options=options, rtol=rtol, atol=atol,
                       adjoint_params=tuple(trainable))[-1]
    return flow.from_state(y)
