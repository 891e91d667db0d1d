"""AdjointDPM and DOODL as their official code runs them (HanshuYAN/AdjointDPM, salesforce/DOODL).

- adjoint: the solver defaults by model family (pixel: ``explicit_adams``, latent: ``euler``); the pixel ODE is
  the official code's (its time variable and state re-expressed); with every level kept, each backward step
  starts from the forward's stored state (checked against the hand-written adjoint recursion); model calls
  counted; the official default's gradient against the exact DDIM one;
- doodl: keeping each step's inputs costs two model calls per step fewer than rebuilding them (counted);
  :func:`doodl_pair` gives the exact gradient of a nonlinear loss of both EDICT images.

Bit for bit, by construction: the default adjoint solver against the same solver named (one code path).
The references (hand-written adjoint recursion, exact DDIM gradient) are other arithmetic: stated tolerances.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_unet
from torch import Tensor, nn
from torch.nn.functional import cosine_similarity
from torchdiffeq import odeint

from lit_sdo.sampling import DenoiserAdapter, PixelUNetDenoiser, build_scheduler, sample
from lit_sdo.sampling.adjoint import default_solver
from lit_sdo.sampling.edict import EdictChain, doodl_pair
from lit_sdo.sampling.flow_ode import probability_flow

SHAPE = (1, 8, 8)
LABELS = torch.tensor([0, 1])


class CountingDenoiser(PixelUNetDenoiser):
    """Counts network calls (each one model evaluation of the batch)."""

    calls = 0

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        self.calls += 1
        return super().predict(x, t, cond)


def denoiser() -> CountingDenoiser:
    return CountingDenoiser(make_tiny_unet(num_class_embeds=3).double()).requires_grad_(False)


def latent(seed: int = 0) -> Tensor:
    return torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def weights() -> Tensor:
    return latent(seed=7)


def latent_gradient(model: nn.Module, steps: int, policy: str) -> Tensor:
    """d<w, x₀>/dx_T of one DDIM-``steps`` run."""
    x = latent().requires_grad_()
    out = sample(model, build_scheduler("ddim", steps, {}), x, LABELS, policy=policy)
    return torch.autograd.grad((out.sample * weights()).sum(), x)[0]


def calls_forward_backward(model: CountingDenoiser, steps: int, policy: str) -> tuple[int, int]:
    model.calls = 0
    out = sample(model, build_scheduler("ddim", steps, {}), latent().requires_grad_(), LABELS, policy=policy)
    forward = model.calls
    (out.sample * weights()).sum().backward()
    return forward, model.calls - forward


# ---------------------------------------------------------------- adjoint
def test_adjoint_solver_defaults_to_the_official_one_of_the_model_family() -> None:
    pixel = denoiser()
    assert default_solver(pixel) == "explicit_adams"
    assert default_solver(DenoiserAdapter(nn.Identity(), SHAPE, vae=nn.Identity())) == "euler"
    scheduler = build_scheduler("ddim", 5, {})

    def x0(policy: str) -> Tensor:
        return sample(pixel, scheduler, latent().requires_grad_(), LABELS, policy=policy).sample.detach()

    assert torch.equal(x0("adjoint"), x0("adjoint-solver=explicit_adams"))
    pixel.vae = nn.Identity()  # the same network seen as a latent model: euler, the scheduler's own chain
    assert torch.equal(x0("adjoint"), x0("adjoint-solver=euler"))
    assert not torch.equal(x0("adjoint-solver=explicit_adams"), x0("adjoint-solver=euler"))


def test_adjoint_official_default_gradient_is_close_to_the_exact_ddim_gradient() -> None:
    """Cosine to full backprop through DDIM at N = 10: 0.983 on this tiny UNet (the digits DDPM, measured
    once in float64 with batch 2: 0.9375, where euler with the end states only gives 0.736)."""
    model = denoiser()
    exact = latent_gradient(model, 10, "full")
    adjoint = latent_gradient(model, 10, "adjoint")
    assert float(cosine_similarity(adjoint.flatten(), exact.flatten(), dim=0)) >= 0.95


@pytest.mark.parametrize("solver", ["explicit_adams", "rk4"])
def test_adjoint_integrates_the_official_pixel_codes_ode(solver: str) -> None:
    """The official pixel sampler's arithmetic, re-expressed: time ρ = α_T·σ − σ_T, state Y = (α_T/α_t)·x,
    dY/dρ = ε̂(x, t), every level as ``t``, x₀ = (α_end/α_T)·Y_end (α_t = √ᾱ, σ_t = √(1−ᾱ), σ = σ_t/α_t; T the
    first level). t(σ) is read through our ProbabilityFlow, so only the variable and state differ: an affine change
    of time and a scaling of the state, which fixed-grid steps carry through exactly; float64 rounding only."""
    model, scheduler = denoiser(), build_scheduler("ddim", 10, {})
    flow = probability_flow(scheduler)
    sigmas = flow.sigmas  # (N + 1,) float64, decreasing
    alpha = (1 + sigmas**2).rsqrt()  # (N + 1,) α_t at each level
    alpha_T, sigma_T = alpha[0], sigmas[0] * alpha[0]
    rho = alpha_T * sigmas - sigma_T  # (N + 1,) the official time at the levels

    def official_field(r: Tensor, y: Tensor) -> Tensor:
        sigma = (r + sigma_T) / alpha_T
        return model((1 + sigma**2).rsqrt() / alpha_T * y, flow.timestep(sigma), LABELS)

    x = latent()
    with torch.no_grad():
        expected = alpha[-1] / alpha_T * odeint(official_field, x, rho, method=solver)[-1]
        got = sample(model, scheduler, x, LABELS, policy=f"adjoint-solver={solver}").sample
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("start_step", [0, 2])
def test_adjoint_with_every_level_kept_restarts_each_backward_step_from_the_stored_state(start_step: int) -> None:
    """Euler on the levels: y_{i+1} = y_i + h_i·f(σ_i, y_i) forward, and backward one Euler step of the adjoint
    ODE per interval, from σ_{i+1} at the forward's own y_{i+1}: a_i = a_{i+1} + h_i·J(σ_{i+1}, y_{i+1})ᵀa_{i+1}."""
    model, scheduler = denoiser(), build_scheduler("ddim", 6, {})
    x = latent()
    flow = probability_flow(scheduler, start_step)
    sigmas = flow.sigmas.to(x)  # (N + 1,)
    with torch.no_grad():
        states = [flow.to_state(x)]
        for i in range(flow.num_steps):
            states.append(states[-1] + (sigmas[i + 1] - sigmas[i]) * flow.velocity(model, states[-1], sigmas[i],
                                                                                    LABELS))
    adjoint = weights() / (1 + sigmas[-1] ** 2).sqrt()  # d<w, x₀>/dy_N
    for i in reversed(range(flow.num_steps)):
        y = states[i + 1].clone().requires_grad_()
        with torch.enable_grad():
            velocity = flow.velocity(model, y, sigmas[i + 1], LABELS)
            adjoint = adjoint + (sigmas[i + 1] - sigmas[i]) * torch.autograd.grad(velocity, y, adjoint)[0]
    expected = adjoint * (1 + sigmas[0] ** 2).sqrt()  # dy_0/dx

    x_in = x.clone().requires_grad_()
    out = sample(model, scheduler, x_in, LABELS, policy="adjoint-solver=euler", start_step=start_step)
    (got,) = torch.autograd.grad((out.sample * weights()).sum(), x_in)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)  # float64, the same operations


@pytest.mark.parametrize(("policy", "forward", "backward"), [
    # explicit Adams: 2 RK4 start-up steps (4 calls) + 8 one-call steps; each backward interval is a fresh
    # solve, so an RK4 step: 4 calls, each with a VJP
    ("adjoint", 2 * 4 + 8, 10 * 4),
    ("adjoint-states=ends", 16, 16),  # one Adams solve back over the whole run
    ("adjoint-solver=euler", 10, 10),
    ("adjoint-solver=rk4", 40, 40),
])
def test_adjoint_model_calls(policy: str, forward: int, backward: int) -> None:
    assert calls_forward_backward(denoiser(), 10, policy) == (forward, backward)


# ---------------------------------------------------------------- doodl
@pytest.mark.parametrize("steps", [3, 6])
def test_doodl_keeping_inputs_saves_two_model_calls_per_step(steps: int) -> None:
    """Each EDICT step calls the model twice; the backward re-runs it from the kept inputs (2 calls), where the
    rebuild first inverts it (2 more)."""
    model = denoiser()
    kept = calls_forward_backward(model, steps, "doodl")
    rebuilt = calls_forward_backward(model, steps, "doodl-states=ends")
    assert kept == (2 * steps, 2 * steps)
    assert rebuilt == (2 * steps, 4 * steps)


@pytest.mark.parametrize("states", ["all", "ends"])
def test_doodl_pair_gives_the_exact_gradient_of_a_nonlinear_loss_of_both_images(states: str) -> None:
    """DOODL's loss is over both EDICT images; with both returned, the gradient is exact for any loss."""
    model, scheduler = denoiser(), build_scheduler("ddim", 5, {})

    def loss(x0: Tensor, y0: Tensor) -> Tensor:
        return (torch.tanh(x0) * weights()).sum() + (y0**2 * weights()).sum()

    x = latent().requires_grad_()
    (got,) = torch.autograd.grad(loss(*doodl_pair(model, scheduler, x, LABELS, states=states)), x)
    chain = EdictChain(model, probability_flow(scheduler), LABELS)
    y_start = chain.flow.to_state(x)
    x0, y0 = (chain.flow.from_state(z) for z in chain.run(y_start, y_start))  # the same chain, by autograd
    (expected,) = torch.autograd.grad(loss(x0, y0), x)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-10)  # float64: only the order of sums differs
