"""AdjointDPM (Pan et al., ICLR 2024): gradients through the probability-flow ODE by the adjoint method.

Forward: the ODE of :mod:`lit_sdo.sampling.flow_ode` solved without a graph by torchdiffeq's ``odeint_adjoint``,
as in the official code (HanshuYAN/AdjointDPM). Backward: the adjoint ODE, one vector-Jacobian product of the
denoiser per solver evaluation. Gradients reach the start latent (x_T or an intermediate latent), every
trainable parameter of the denoiser (LoRA included) and a floating-point condition (text embeddings) that
requires grad.

What the backward starts each piece from (``states``):

- ``all``, the official code's way (its pixel ``NODE_Solver.sample`` and its latent scheduler both pass every
  sampling level as ``t``): the forward keeps the state at every level, N + 1 latents, and torchdiffeq solves
  the adjoint one interval at a time, resetting the state to the stored one at each level;
- ``ends``: only the two end states are kept (memory flat in N), and the backward rebuilds x_t by integrating the
  ODE backwards over the whole run.

The official pixel code integrates this same ODE: its variable ρ = α_T·σ − σ_T and state α_T·y (α_T, σ_T: the
VP coefficients at its first level) are an affine change of time and a scaling of the state, which leave every
fixed-grid torchdiffeq step unchanged; on the same levels its x₀ is ours up to how it interpolates the schedule
between levels (tests/test_official_baselines.py). Its levels are uniform in the diffusion time t (its runner's
``time_uniform``), as DDIM's are, so neither grid is uniform in σ, and torchdiffeq's fixed-grid Adams–Bashforth
applies constant-step coefficients (up to order 11) to derivatives taken at unequally spaced levels.

Measured on the digits DDPM (float64, batch 2, DDIM levels): x₀'s relative L2 distance to DDIM's, N = 10 / 30,
``explicit_adams`` 0.98 / 26 (the official code on its own levels, uniform in t from the same first level:
2.6 / 30), ``rk4`` 0.05 / 0.015; cosine to full backprop through DDIM (all / ends) at N = 10: ``explicit_adams``
0.938 / −0.05, ``rk4`` 0.995 / 0.995, ``euler`` 0.709 / 0.736 (a backward Euler step takes its Jacobian at the
end of the interval the forward step arrives at, whichever state it starts from); at N = 30 (all): 0.42, 0.999,
0.93.

The solver defaults to the official one for the model's family (:func:`default_solver`): ``explicit_adams`` for
pixel models (``NODE_Solver.sample``'s default, not overridden by the pixel runner; torchdiffeq starts
Adams–Bashforth with RK4 steps, and as each backward interval is a fresh solve, each is one RK4 step: 4 model
calls and 4 VJPs), ``euler`` for latent models (the latent scheduler's ``solver_type`` default: the forward is
the scheduler's DDIM / Euler chain up to rounding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from lit_sdo.sampling.denoisers import DenoiserAdapter
from lit_sdo.sampling.flow_ode import ProbabilityFlow, probability_flow, refine_levels
from lit_sdo.sampling.policies import (
    ADJOINT_SOLVERS,
    BASELINE_STATES,
    AdjointSolver,
    BaselineStates,
    check_substeps,
)

FIXED_GRID_SOLVERS: tuple[str, ...] = ("euler", "midpoint", "rk4", "heun3", "explicit_adams")
ADAPTIVE_SOLVERS: tuple[str, ...] = tuple(s for s in ADJOINT_SOLVERS if s not in FIXED_GRID_SOLVERS)


def default_solver(denoiser: DenoiserAdapter) -> AdjointSolver:
    """The official code's solver for the denoiser's family: ``explicit_adams`` for a pixel model (an adapter
    without a VAE; inaccurate on the non-uniform levels, see the module docstring), ``euler`` for a latent one."""
    return "explicit_adams" if getattr(denoiser, "vae", None) is None else "euler"


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
    """The solver grid for any span torchdiffeq asks for: the levels between the span's two ends, in its order.

    torchdiffeq may hand over the span negated or flipped (decreasing spans, the adjoint's reversed ones); with
    every level passed as ``t``, the adjoint asks for one interval at a time.
    """

    def construct(func: object, y0: Tensor, t: Tensor) -> Tensor:
        increasing = bool(t[0] <= t[-1])
        low, high = (t[0], t[-1]) if increasing else (t[-1], t[0])
        for candidate in (levels.to(t), -levels.to(t)):
            grid = candidate.sort().values  # increasing
            inside = grid[(grid >= low) & (grid <= high)]
            if len(inside) >= 2 and inside[0] == low and inside[-1] == high:
                return inside if increasing else inside.flip(0)
        raise RuntimeError(f"time span {t.tolist()} does not start and end on the solver grid's levels")

    return construct


def adjoint_sample(denoiser: DenoiserAdapter, scheduler: SchedulerMixin, x: Tensor, cond: Tensor | None,
                   *, start_step: int = 0, solver: AdjointSolver | None = None, substeps: int = 1,
                   states: BaselineStates = "all", rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """x₀ from ``x`` by the probability-flow ODE; its backward is the adjoint ODE.

    Args:
        denoiser, scheduler, x, cond, start_step: as for :func:`lit_sdo.sampling.sample`.
        solver: a torchdiffeq method: fixed-grid ``euler``, ``midpoint``, ``rk4``, ``heun3``, ``explicit_adams``
            step on the scheduler's levels (the one-step ones cut each into ``substeps`` pieces); adaptive
            ``dopri5``, ``bosh3``, ``adaptive_heun``, ``dopri8`` choose their own steps within ``rtol``/``atol``.
            None: :func:`default_solver`.
        substeps: fixed-grid solver steps per sampling step.
        states: ``all`` keeps the state at every sampling level for the backward (N + 1 latents), ``ends`` the
            two end states only (see the module docstring).
    """
    solver = solver or default_solver(denoiser)
    if solver not in ADJOINT_SOLVERS:
        raise ValueError(f"adjoint solver={solver!r} is unknown; allowed values: {', '.join(ADJOINT_SOLVERS)}")
    if states not in BASELINE_STATES:
        raise ValueError(f"adjoint states={states!r} is unknown; allowed values: {', '.join(BASELINE_STATES)}")
    check_substeps(solver, substeps)
    flow = probability_flow(scheduler, start_step)
    levels = flow.sigmas.to(device=x.device, dtype=x.dtype)  # (N + 1,) the sampling levels
    grid = refine_levels(flow.sigmas, substeps).to(device=x.device, dtype=x.dtype)  # (N·m + 1,) the solver's
    t = levels if states == "all" else levels[[0, -1]]  # the states the forward keeps
    options = {"grid_constructor": _grid_constructor(grid)} if solver in FIXED_GRID_SOLVERS else None
    field = _FlowField(denoiser, flow, cond)
    y0 = flow.to_state(x)  # (B, C, H, W)
    if not torch.is_grad_enabled():
        return flow.from_state(odeint(field, y0, t, method=solver, options=options, rtol=rtol, atol=atol)[-1])
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    if cond is not None and cond.is_floating_point() and cond.requires_grad:
        trainable.append(cond)
    y = odeint_adjoint(field, y0, t, method=solver, options=options, rtol=rtol, atol=atol,
                       adjoint_params=tuple(trainable))[-1]
    return flow.from_state(y)
