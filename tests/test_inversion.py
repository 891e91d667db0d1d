"""DDIM inversion: exact where the approximation is exact, close on a tiny UNet with enough steps.

"Exact" is exact arithmetic: inversion and the scheduler's step order their float32 operations differently,
so an x-blind ε̂ reconstructs x₀ to 1e-5 after 10 + 10 steps and one level to 1e-6; nothing is bitwise."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lit_sdo.sampling import PixelUNetDenoiser, build_scheduler, sample
from lit_sdo.sampling.inversion import alpha_levels, invert_ddim


class ConstantDenoiser(nn.Module):
    """ε̂ independent of x: DDIM inversion is then exact (the one approximation, ε̂(x_s) ≈ ε̂(x_t), is an identity)."""

    sample_shape = (1, 4, 4)

    def __init__(self, t_dependent: bool = True) -> None:
        super().__init__()
        self.eps = torch.randn(1, *self.sample_shape, generator=torch.Generator().manual_seed(3))
        self.t_dependent = t_dependent

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.eps.expand_as(x) * (1 + float(t) / 1000 if self.t_dependent else 1.0)  # never depends on x


class GaussianDataDenoiser(nn.Module):
    """The exact ε-predictor for data x₀ ~ N(0, σ²I): ε̂(x_t) = √(1−ᾱ) x_t / (ᾱσ² + 1 − ᾱ). It depends on x,
    so inversion is approximate, but the probability-flow ODE is smooth and the error vanishes with the step."""

    sample_shape = (1, 4, 4)

    def __init__(self, alphas_cumprod: Tensor, sigma: float = 0.5) -> None:
        super().__init__()
        self.alphas, self.sigma = alphas_cumprod, sigma

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        a = float(self.alphas[int(t)])
        return (1 - a) ** 0.5 * x / (a * self.sigma**2 + 1 - a)


def reconstruct(denoiser, scheduler, x0: Tensor, cond: Tensor | None = None, start_step: int = 0) -> Tensor:
    latent = invert_ddim(denoiser, scheduler, x0, cond, start_step=start_step)
    with torch.no_grad():
        return sample(denoiser, scheduler, latent, cond, policy="none", start_step=start_step).sample


@pytest.mark.parametrize("start_step", [0, 4])
def test_inversion_is_exact_when_the_noise_estimate_ignores_x(start_step: int) -> None:
    scheduler = build_scheduler("ddim", 10)
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(reconstruct(ConstantDenoiser(), scheduler, x0, start_step=start_step), x0,
                               atol=1e-5, rtol=0)


def test_inverted_latent_is_at_the_start_steps_noise_level() -> None:
    """With ε̂ constant, x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε̂ exactly (the forward process with that noise)."""
    denoiser, scheduler = ConstantDenoiser(t_dependent=False), build_scheduler("ddim", 10)
    x0 = torch.zeros(1, 1, 4, 4)
    latent = invert_ddim(denoiser, scheduler, x0, start_step=3)
    alpha = float(alpha_levels(scheduler)[3])
    eps = denoiser(x0, scheduler.timesteps[3])
    torch.testing.assert_close(latent, (1 - alpha) ** 0.5 * eps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("start_step", [0, 20])
def test_x_dependent_model_reconstructs_closely_and_better_with_more_steps(start_step: int) -> None:
    x0 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 0.5
    errors = {}
    for steps in (25, 100):
        scheduler = build_scheduler("ddim", steps, beta_schedule="squaredcos_cap_v2")
        denoiser = GaussianDataDenoiser(scheduler.alphas_cumprod)
        out = reconstruct(denoiser, scheduler, x0, start_step=start_step * steps // 100)
        errors[steps] = float((out - x0).abs().max())
    assert errors[100] < 0.03 and errors[100] < errors[25] / 3, errors  # first order in the step


def test_tiny_unet_round_trip_runs_with_labels_and_keeps_the_shape() -> None:
    from conftest import make_tiny_unet

    denoiser = PixelUNetDenoiser(make_tiny_unet(num_class_embeds=3)).eval()
    scheduler = build_scheduler("ddim", 4)
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    trajectory = invert_ddim(denoiser, scheduler, x0, torch.tensor([0, 1, 2]), return_trajectory=True)
    assert len(trajectory) == 5 and trajectory[0] is x0 and trajectory[-1].shape == x0.shape
    with pytest.raises(ValueError, match=r"latent x has shape \(3, 1, 4, 4\)"):
        invert_ddim(denoiser, scheduler, x0[:, :, :4, :4])


def test_bad_input_is_one_line() -> None:
    denoiser = ConstantDenoiser()
    with pytest.raises(ValueError, match=r"start_step=10 is outside \[0, 10\)"):
        invert_ddim(denoiser, build_scheduler("ddim", 10), torch.zeros(1, 1, 4, 4), start_step=10)
    with pytest.raises(ValueError, match="needs a scheduler with alphas_cumprod"):
        invert_ddim(denoiser, build_scheduler("flow_euler", 10), torch.zeros(1, 1, 4, 4))


def test_xhat_guidance_with_zero_scale_is_plain_sampling_and_lowers_the_loss_otherwise() -> None:
    from conftest import make_tiny_unet

    from lit_sdo.sampling.xhat_guidance import xhat_guided_sample

    denoiser = PixelUNetDenoiser(make_tiny_unet(num_class_embeds=3)).eval().requires_grad_(False)
    scheduler = build_scheduler("ddim", 6)
    x, labels = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2])

    def loss(x0: Tensor) -> Tensor:
        return (x0 - 0.5).pow(2).flatten(1).mean(1)

    with torch.no_grad():
        plain = sample(denoiser, scheduler, x, labels, policy="none").sample
    torch.testing.assert_close(xhat_guided_sample(denoiser, scheduler, x, labels, loss, scale=0.0), plain)
    guided = xhat_guided_sample(denoiser, scheduler, x, labels, loss, scale=0.2)
    assert (loss(guided) < loss(plain)).all()
