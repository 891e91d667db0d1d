"""Gradients of the sampler against references that do not share its mechanism (float64, tiny UNets).

- full == checkpoint == finite differences, for x_T and for the network weights;
- SDO == autograd of an independent loop in which every model output except step k's is a constant tensor
  recorded by a graph-free pass (no ``no_grad`` switching), on a nonlinear class-guided UNet, every scheduler,
  k > 0, fixed and random k, from x_T and from ``start_step > 0``;
- SDO's weight gradient == c_k · VJP of step k's model call (paper Eq. 20; c_k in closed form for DDIM);
- gradients to the text embedding through classifier-free guidance at the kept step.

The guided model functions here call the raw network twice (conditional, null) instead of the adapter's
batched call, so the adapter's guidance is checked too: other shapes, hence float64 tolerances. Bit for bit
only where the arithmetic is the same by construction: a run continued from its own trajectory.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import make_tiny_unet
from diffusers import UNet2DConditionModel
from test_sampling import ddim_coefficients
from torch import Tensor, nn

from lit_sdo.sampling import (
    SCHEDULERS,
    GradientPolicy,
    LatentUNetDenoiser,
    PixelUNetDenoiser,
    build_scheduler,
    sample,
)

NUM_STEPS = 4
SHAPE = (1, 8, 8)
GUIDANCE, NULL_CLASS = 2.0, 10
LABELS = torch.tensor([1, 4])
ModelFn = Callable[[Tensor, Tensor], Tensor]


def scheduler_for(name: str, steps: int = NUM_STEPS):
    """Stable Diffusion's β schedule (Euler's σ_max ≈ 14.6; with the digits DDPM's cosine one it is 2·10⁴)."""
    config = {} if name == "flow_euler" else {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                              "beta_end": 0.012}
    return build_scheduler(name, steps, base_config=config)


def pixel_unet() -> nn.Module:
    return make_tiny_unet(num_class_embeds=11).double().eval()


def unit_noise(shape: tuple[int, ...] = (2, *SHAPE), seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def weights_like(x: Tensor) -> Tensor:
    """The objective J(x₀) = Σ w ⊙ x₀, so ∂J/∂x₀ = w."""
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)


def guided_pixel_fn(unet: nn.Module) -> ModelFn:
    """uncond + s·(cond − uncond), from two separate network calls."""
    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        t_batch = t.reshape(-1).expand(x.shape[0])
        conditioned = unet(x, t_batch, class_labels=LABELS).sample
        uncond = unet(x, t_batch, class_labels=torch.full_like(LABELS, NULL_CLASS)).sample
        return uncond + GUIDANCE * (conditioned - uncond)
    return model_fn


def sdo_reference(model_fn: ModelFn, name: str, x: Tensor, k: int, start_step: int = 0) -> Tensor:
    """x₀ of the same run, differentiable only through step k's model call and every solver step.

    Pass 1 records each step's model output without a graph; pass 2 replays the run with those outputs as
    constants, except at step k where the model is called with its graph. Autograd of pass 2 is SDO's
    gradient by definition (Eq. 18). ``x`` is unit noise for start_step 0, else the scheduler-space latent.
    """
    outputs = []
    for replay in (False, True):
        scheduler = scheduler_for(name)  # no set_begin_index: the step index comes from the timestep lookup
        noise = torch.Generator().manual_seed(3)
        x_i = x * getattr(scheduler, "init_noise_sigma", 1.0) if start_step == 0 else x
        for i, t in enumerate(scheduler.timesteps[start_step:]):
            if replay and i != k:
                u = outputs[i]
            else:
                with torch.set_grad_enabled(replay):
                    scaled = scheduler.scale_model_input(x_i, t) if hasattr(scheduler, "scale_model_input") else x_i
                    u = model_fn(scaled, t)
                if not replay:
                    outputs.append(u)
            x_i = scheduler.step(u, t, x_i, generator=noise).prev_sample
    return x_i


def gradients(x0: Tensor, leaves: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad((x0 * weights_like(x0)).sum(), leaves))


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("k", [2, "random"])
def test_sdo_equals_autograd_of_a_loop_with_constant_outputs_off_step_k(name: str, k: int | str) -> None:
    unet = pixel_unet()
    params = list(unet.parameters())
    x_T = unit_noise().requires_grad_(True)
    out = sample(PixelUNetDenoiser(unet, guidance_scale=GUIDANCE, null_class=NULL_CLASS), scheduler_for(name), x_T,
                 LABELS, policy=GradientPolicy("sdo", k=k), generator=torch.Generator().manual_seed(3),
                 policy_generator=torch.Generator().manual_seed(1))
    (kept,) = out.graph_steps
    assert kept == 2 or k == "random"
    expected_x0 = sdo_reference(guided_pixel_fn(unet), name, x_T, kept)
    torch.testing.assert_close(out.sample, expected_x0, rtol=1e-12, atol=1e-12)
    for got, expected in zip(gradients(out.sample, [x_T, *params]), gradients(expected_x0, [x_T, *params]),
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm"])
def test_sdo_from_an_intermediate_latent_equals_the_reference(name: str) -> None:
    unet = pixel_unet()
    scheduler = scheduler_for(name)
    denoiser = PixelUNetDenoiser(unet, guidance_scale=GUIDANCE, null_class=NULL_CLASS)
    with torch.no_grad():
        run = sample(denoiser, scheduler, unit_noise(), LABELS, policy="none", return_trajectory=True)
    x_s = run.trajectory[1].clone().requires_grad_(True)  # the latent at timesteps[1]
    out = sample(denoiser, scheduler, x_s, LABELS, policy=GradientPolicy("sdo", k=1), start_step=1)
    if name != "dpm":  # a multistep solver restarts its history (first order) at start_step
        torch.testing.assert_close(out.sample, run.sample, rtol=0, atol=0)  # continues the run exactly
    expected_x0 = sdo_reference(guided_pixel_fn(unet), name, x_s, k=1, start_step=1)
    torch.testing.assert_close(gradients(out.sample, [x_s])[0], gradients(expected_x0, [x_s])[0],
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_sdo_weight_gradient_is_c_k_times_the_vjp_of_step_k(k: int) -> None:
    """Eq. 20 for DDIM: ∂J/∂θ = c_k · wᵀ ∂u_θ(x_k, t_k)/∂θ with c_k = b_k Π_{i>k} a_i = ∂x₀/∂u_k."""
    unet = pixel_unet()
    params = list(unet.parameters())
    scheduler = scheduler_for("ddim")
    denoiser = PixelUNetDenoiser(unet)
    out = sample(denoiser, scheduler, unit_noise(), LABELS, policy=GradientPolicy("sdo", k=k), return_trajectory=True)
    sdo = gradients(out.sample, params)

    coefficients = ddim_coefficients(scheduler)
    c_k = coefficients[k][1] * torch.tensor([a for a, _ in coefficients[k + 1:]], dtype=torch.float64).prod()
    t_k = scheduler.timesteps[k]
    u_k = unet(out.trajectory[k].detach(), t_k.expand(2), class_labels=LABELS).sample
    vjp = torch.autograd.grad(u_k, params, grad_outputs=weights_like(u_k))
    for got, expected in zip(sdo, vjp, strict=True):
        torch.testing.assert_close(got, c_k * expected, rtol=1e-5, atol=1e-10)  # √ᾱ tables are float32


def text_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=4).double().eval()


@pytest.mark.parametrize("name", ["euler", "ddpm"])
def test_text_embedding_gradient_through_guidance_at_the_kept_step(name: str) -> None:
    unet = text_unet()
    null = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    text = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64).requires_grad_(True)
    x_T = unit_noise((2, 4, 8, 8)).requires_grad_(True)
    denoiser = LatentUNetDenoiser(unet, vae=None, guidance_scale=3.0, null_embedding=null)
    out = sample(denoiser, scheduler_for(name), x_T, text, policy=GradientPolicy("sdo", k=1),
                 generator=torch.Generator().manual_seed(3))

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        conditioned = unet(x, t, encoder_hidden_states=text).sample
        uncond = unet(x, t, encoder_hidden_states=null.expand(2, -1, -1)).sample
        return uncond + 3.0 * (conditioned - uncond)

    expected_x0 = sdo_reference(model_fn, name, x_T, k=1)
    for got, expected in zip(gradients(out.sample, [x_T, text]), gradients(expected_x0, [x_T, text]), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def objective(denoiser: nn.Module, name: str, x_T: Tensor, policy: str = "none") -> Tensor:
    out = sample(denoiser, scheduler_for(name), x_T, LABELS, policy=policy)
    return (out.sample * weights_like(out.sample)).sum()


@pytest.mark.parametrize("name", ["ddim", "dpm", "euler", "flow_euler"])
def test_full_and_checkpoint_gradients_equal_finite_differences(name: str) -> None:
    """Both x_T and weight gradients: a checkpointed call that loses its weight graph fails here."""
    unet = pixel_unet()
    params = list(unet.parameters())
    denoiser = PixelUNetDenoiser(unet, guidance_scale=GUIDANCE, null_class=NULL_CLASS)
    x_T = unit_noise().requires_grad_(True)
    full = torch.autograd.grad(objective(denoiser, name, x_T, "full"), [x_T, *params])
    ckpt = torch.autograd.grad(objective(denoiser, name, x_T, "checkpoint"), [x_T, *params])
    for got, expected in zip(ckpt, full, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)

    direction_x = unit_noise(seed=11)
    directions_p = [torch.randn(p.shape, generator=torch.Generator().manual_seed(12 + i), dtype=p.dtype)
                    for i, p in enumerate(params)]
    originals = [p.detach().clone() for p in params]

    def along_x(step: float) -> float:
        return float(objective(denoiser, name, x_T.detach() + step * direction_x))

    def along_weights(step: float) -> float:
        with torch.no_grad():
            for p, p0, v in zip(params, originals, directions_p, strict=True):
                p.copy_(p0 + step * v)
            value = float(objective(denoiser, name, x_T.detach()))
            for p, p0 in zip(params, originals, strict=True):
                p.copy_(p0)
        return value

    fd_x, fd_weights = finite_difference(along_x), finite_difference(along_weights)
    # DPM and flow Euler step in float32 even for float64 inputs: that rounding bounds the agreement.
    assert float((full[0] * direction_x).sum()) == pytest.approx(fd_x, rel=2e-4)
    for grads in (full, ckpt):
        along = sum(float((g * v).sum()) for g, v in zip(grads[1:], directions_p, strict=True))
        assert along == pytest.approx(fd_weights, rel=1e-4)


@torch.no_grad()
def finite_difference(f: Callable[[float], float], h: float = 1e-3) -> float:
    """f'(0) by central differences at h and h/2 with Richardson extrapolation (error O(h⁴), not O(h²)).

    h stays large because some schedulers (DPM, flow Euler) compute in float32: smaller steps drown in its
    rounding.
    """
    def central(step: float) -> float:
        return (f(step) - f(-step)) / (2 * step)
    return (4 * central(h / 2) - central(h)) / 3
