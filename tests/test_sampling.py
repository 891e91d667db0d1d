"""The sampler and its gradient policies: forward values, policies, schedulers, adapters, errors.

- forward: every policy gives the same x₀, bit for bit, for every scheduler, stochastic ones included, with
  and without a generator (equality with diffusers' own pipelines: test_pipeline_reference.py); by
  construction: a policy switches grad mode and what is kept, never the operations or their shapes (the same
  holds for last_k(K=N) vs full, a reused scheduler, and the loop against the same calls written out);
- policies: random k and K are uniform (chi-square with a fixed generator), seeded, and never touch the
  global RNG; last_k(K=N) == full; SDO == closed form on a 3-channel linear denoiser;
Gradient references (finite differences, an independent SDO loop, Eq. 20): test_sampling_gradients.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTTransformer2DModel,
    PixArtTransformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)
from torch import Tensor, nn

from lit_sdo.sampling import (
    SCHEDULERS,
    CallMode,
    DenoiserAdapter,
    GradientPolicy,
    LatentUNetDenoiser,
    PixelUNetDenoiser,
    TransformerDenoiser,
    as_policy,
    build_scheduler,
    sample,
    start_step_for,
)

NUM_STEPS = 4
SHAPE = (1, 8, 8)  # (C, H, W)


def tiny_unet(num_class_embeds: int | None = 11) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds,
    ).double()


class LinearDenoiser(DenoiserAdapter):
    """u(x, t) = W x + bias[step]: a denoiser whose Jacobians are known in closed form.

    ``bias`` has one row per sampling step, so a parameter gradient shows which call produced it.
    """

    def __init__(self, timesteps: Tensor, channels: int = 1, scale: float = 0.5) -> None:
        super().__init__(nn.Identity(), (channels, 8, 8))
        torch.manual_seed(1)
        self.weight = nn.Parameter(scale * torch.randn(channels, channels, dtype=torch.float64))
        self.bias = nn.Parameter(0.1 * torch.randn(len(timesteps), channels, dtype=torch.float64))
        self.register_buffer("timesteps", timesteps.clone())

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        step = int((self.timesteps == t).nonzero()[0])
        return torch.einsum("oc,bchw->bohw", self.weight, x) + self.bias[step].view(1, -1, 1, 1)


def latent(batch: int = 2, seed: int = 0, shape: tuple[int, ...] = SHAPE) -> Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def make_scheduler(name: str, num_steps: int = NUM_STEPS):
    """diffusers' default β schedule, on purpose (``base_config={}``: no warning)."""
    return build_scheduler(name, num_steps, base_config={})


def objective_weights(shape: tuple[int, ...] = SHAPE) -> Tensor:
    return torch.randn(2, *shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def grad_wrt_latent(denoiser: DenoiserAdapter, scheduler_name: str, policy: GradientPolicy | str,
                    x: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
    x_t = (latent() if x is None else x).clone().requires_grad_(True)
    out = sample(denoiser, make_scheduler(scheduler_name), x_t, cond, policy=policy,
                 generator=torch.Generator().manual_seed(3))
    (out.sample * objective_weights()).sum().backward()
    return x_t.grad


POLICIES = ["sdo", GradientPolicy("sdo", k=2), GradientPolicy("sdo", k="random"), "full", "checkpoint",
            GradientPolicy("last_k", last_k=2), "sdo-recompute=true", "last_k=3-recompute=true",
            "random_truncation", GradientPolicy("random_truncation", seed=5)]


@pytest.mark.parametrize("scheduler_name", list(SCHEDULERS))
@pytest.mark.parametrize("seeded", [False, True], ids=["global-rng", "generator"])
def test_forward_is_the_same_for_every_policy(scheduler_name: str, seeded: bool) -> None:
    """DDPM and LCM draw noise every step, from ``generator`` or else torch's global RNG: a policy that drew
    its random k / K from either would change the samples (it did: max |Δ| 12.8 for DDPM)."""
    unet = tiny_unet()
    labels = torch.tensor([3, 7])

    def run(policy: GradientPolicy | str, policy_generator: torch.Generator | None = None) -> Tensor:
        torch.manual_seed(5)
        generator = torch.Generator().manual_seed(3) if seeded else None
        out = sample(PixelUNetDenoiser(unet), make_scheduler(scheduler_name), latent().requires_grad_(True),
                     labels, policy=policy, generator=generator, policy_generator=policy_generator)
        return out.sample.detach()

    reference = run("none")
    for policy in POLICIES:
        assert torch.equal(run(policy), reference), policy
    for policy in POLICIES[2], POLICIES[-1]:
        assert torch.equal(run(policy, torch.Generator().manual_seed(9)), reference), policy


def test_policy_draws_are_seeded_and_leave_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    draws = [GradientPolicy("sdo", k="random", seed=seed).plan(50).index(CallMode.GRAPH) for seed in (1, 1, 2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert draws[0] == draws[1] != draws[2]
    policy = GradientPolicy("sdo", k="random")
    assert len({policy.plan(50).index(CallMode.GRAPH) for _ in range(10)}) > 1  # one stream, not a restart
    assert as_policy("random_truncation") is as_policy("random_truncation")  # a name keeps its stream too
    with pytest.raises(ValueError, match="policy_generator is also the sampler's generator"):
        shared = torch.Generator()
        sample(PixelUNetDenoiser(tiny_unet()), make_scheduler("ddpm"), latent(), torch.tensor([0, 0]),
               policy=policy, generator=shared, policy_generator=shared)


def chi_square(counts: list[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


@pytest.mark.parametrize("name", ["sdo", "random_truncation"])
def test_random_k_and_truncation_are_uniform_over_all_steps(name: str) -> None:
    """k ∈ [0, N) for SDO, K ∈ [1, N] kept steps for random truncation: 1200 draws, N = 6, fixed generator.

    χ² with 5 degrees of freedom exceeds 20.5 with probability 0.001 for a uniform draw; a draw that never
    reaches the last value (k = N − 1) gives χ² ≈ 240.
    """
    policy = GradientPolicy(name, k="random")  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    counts = [0] * 6
    for _ in range(1200):
        modes = policy.plan(6, generator)
        graph = [i for i, mode in enumerate(modes) if mode is CallMode.GRAPH]
        if name == "sdo":
            (k,) = graph
            assert modes.count(CallMode.SKIP) == 5
            counts[k] += 1
        else:
            assert graph == list(range(6 - len(graph), 6))  # the last K steps, the rest OFF
            counts[len(graph) - 1] += 1
    assert min(counts) > 0 and chi_square(counts) < 20.5, counts


@pytest.mark.parametrize("scheduler_name", ["ddim", "ddpm", "dpm", "lcm"])
def test_last_k_over_all_steps_equals_full(scheduler_name: str) -> None:
    denoiser = PixelUNetDenoiser(tiny_unet())
    cond = torch.tensor([2, 5])
    full = grad_wrt_latent(denoiser, scheduler_name, "full", cond=cond)
    last_all = grad_wrt_latent(denoiser, scheduler_name, GradientPolicy("last_k", last_k=NUM_STEPS), cond=cond)
    assert torch.equal(last_all, full)


def test_last_k_short_of_all_steps_passes_no_gradient_to_x_T() -> None:
    denoiser = PixelUNetDenoiser(tiny_unet())
    x_t = latent().requires_grad_(True)
    out = sample(denoiser, make_scheduler("ddim"), x_t, torch.tensor([0, 1]),
                 policy=GradientPolicy("last_k", last_k=1))
    assert out.graph_steps == [NUM_STEPS - 1]
    (grad,) = torch.autograd.grad(out.sample.sum(), x_t, allow_unused=True)
    assert grad is None


def ddim_coefficients(scheduler: DDIMScheduler) -> list[tuple[float, float]]:
    """(a_t, b_t) of x_{t-1} = a_t x_t + b_t ε for DDIM with η = 0 (Song et al., Eq. 12)."""
    coefficients = []
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    for t in scheduler.timesteps.tolist():
        alpha = float(scheduler.alphas_cumprod[t])
        prev = t - stride
        alpha_prev = float(scheduler.alphas_cumprod[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
        a = (alpha_prev / alpha) ** 0.5
        b = (1 - alpha_prev) ** 0.5 - (alpha_prev * (1 - alpha) / alpha) ** 0.5
        coefficients.append((a, b))
    return coefficients


def expected_bias_gradient(denoiser: LinearDenoiser, coefficients: list[tuple[float, float]], k: int,
                           w: Tensor) -> Tensor:
    """SDO's parameter gradient (Eq. 20): only step k's bias row, b_k Π_{i>k} a_i · Σ w per channel."""
    a = torch.tensor([a_i for a_i, _ in coefficients], dtype=torch.float64)
    expected = torch.zeros_like(denoiser.bias)
    expected[k] = coefficients[k][1] * a[k + 1:].prod() * w.sum(dim=(0, 2, 3))
    return expected


@pytest.mark.parametrize("k", [0, 2])
def test_sdo_gradient_equals_closed_form_on_linear_denoiser(k: int) -> None:
    """With x_{i+1} = a_i x_i + b_i u(x_i) and u = W x + bias, SDO keeps only step k's Jacobian:
    dJ/dx_T = Π_{i≠k} a_i · (a_k w + b_k Wᵀ w)   (Eq. 19 for k = 0, the skip path elsewhere).
    Three channels, so W ≠ Wᵀ: a transposed Jacobian fails."""
    scheduler = make_scheduler("ddim")
    denoiser = LinearDenoiser(scheduler.timesteps, channels=3)
    w = objective_weights((3, 8, 8))
    coefficients = ddim_coefficients(scheduler)
    a = torch.tensor([a_i for a_i, _ in coefficients], dtype=torch.float64)
    a_k, b_k = coefficients[k]

    x_t = latent(shape=(3, 8, 8)).requires_grad_(True)
    out = sample(denoiser, scheduler, x_t, policy=GradientPolicy("sdo", k=k))
    (out.sample * w).sum().backward()

    expected = a.prod() / a_k * (a_k * w + b_k * torch.einsum("oc,bohw->bchw", denoiser.weight, w))  # Wᵀ w
    # The scheduler evaluates √ᾱ in float32, hence the tolerance.
    torch.testing.assert_close(x_t.grad, expected, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(denoiser.bias.grad, expected_bias_gradient(denoiser, coefficients, k, w),
                               rtol=1e-5, atol=1e-8)


def test_random_step_parameter_gradient_is_step_k_s_alone_unscaled() -> None:
    """Random k gives exactly the fixed-k gradient of the drawn k (no 1/p or N factor)."""
    scheduler = make_scheduler("ddim", 6)
    denoiser = LinearDenoiser(scheduler.timesteps, channels=3)
    w = objective_weights((3, 8, 8))
    for seed in range(4):
        denoiser.zero_grad()
        out = sample(denoiser, scheduler, latent(shape=(3, 8, 8)), policy=GradientPolicy("sdo", k="random"),
                     policy_generator=torch.Generator().manual_seed(seed))
        (k,) = out.graph_steps
        (out.sample * w).sum().backward()
        torch.testing.assert_close(denoiser.bias.grad,
                                   expected_bias_gradient(denoiser, ddim_coefficients(scheduler), k, w),
                                   rtol=1e-5, atol=1e-8)


def test_sdo_gradient_is_nonzero_on_untrained_unet_and_clipping_warns() -> None:
    denoiser = PixelUNetDenoiser(tiny_unet())
    grad = grad_wrt_latent(denoiser, "ddim", "sdo", cond=torch.tensor([0, 9]))
    assert grad.abs().sum() > 0
    clipping = DDIMScheduler()  # diffusers' default: clip_sample=True
    clipping.set_timesteps(NUM_STEPS)
    with pytest.warns(UserWarning, match="clip_sample"):
        sample(denoiser, clipping, latent().requires_grad_(True), torch.tensor([0, 9]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample(denoiser, make_scheduler("ddim"), latent(), torch.tensor([0, 9]))


def test_start_step_runs_the_tail_of_the_schedule() -> None:
    unet = tiny_unet()
    scheduler = make_scheduler("ddim", 8)
    start = start_step_for(scheduler, 600)
    assert int(scheduler.timesteps[start]) <= 600 < int(scheduler.timesteps[start - 1])
    x = latent()
    out = sample(PixelUNetDenoiser(unet), scheduler, x, torch.tensor([1, 1]), policy="none",
                 start_step=start, return_trajectory=True)
    assert len(out.trajectory) == 8 - start + 1
    reference = x
    with torch.no_grad():
        for t in scheduler.timesteps[start:]:
            noise = unet(reference, t, class_labels=torch.tensor([1, 1])).sample
            reference = scheduler.step(noise, t, reference).prev_sample
    assert torch.equal(out.sample, reference)


def test_scheduler_is_not_mutated_and_serves_many_runs() -> None:
    scheduler = make_scheduler("dpm")
    denoiser = PixelUNetDenoiser(tiny_unet())
    first = sample(denoiser, scheduler, latent(), torch.tensor([1, 2]), policy="none").sample
    second = sample(denoiser, scheduler, latent(), torch.tensor([1, 2]), policy="none").sample
    assert scheduler.step_index is None
    assert torch.equal(first, second)


def test_outer_no_grad_wins_over_the_policy() -> None:
    with torch.no_grad():
        out = sample(PixelUNetDenoiser(tiny_unet()), make_scheduler("ddim"),
                     latent().requires_grad_(True), torch.tensor([0, 0]), policy="full")
    assert not out.sample.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "adjoin"}, "policy name='adjoin' is unknown"),
        ({"policy": GradientPolicy("sdo", k=4)}, r"k=4 is outside \[0, 4\)"),
        ({"policy": GradientPolicy("last_k", last_k=5)}, "last_k=5 exceeds"),
        ({"start_step": 4}, r"start_step=4 is outside \[0, 4\)"),
        ({"x": torch.zeros(2, 3, 8, 8)}, r"latent x has shape \(2, 3, 8, 8\); this denoiser expects \(B, 1, 8, 8\)"),
    ],
)
def test_bad_input_gives_one_line_value_error(kwargs: dict, message: str) -> None:
    arguments = {"x": latent(), "policy": "sdo"} | kwargs
    with pytest.raises(ValueError, match=message):
        sample(PixelUNetDenoiser(tiny_unet()), make_scheduler("ddim"), cond=torch.tensor([0, 0]),
               **arguments)


def test_scheduler_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="scheduler name='heun' is unknown; allowed values: ddim"):
        build_scheduler("heun", 10)
    with pytest.raises(ValueError, match="not configured with timesteps"):
        sample(PixelUNetDenoiser(tiny_unet()), DDIMScheduler(clip_sample=False), latent())
    with pytest.raises(ValueError, match="timestep=-1 is outside the schedule"):
        start_step_for(make_scheduler("ddim", 10), -1)
    with pytest.raises(ValueError, match="timestep=1500 is outside the schedule"):
        start_step_for(make_scheduler("ddim", 10), 1500)
    with pytest.raises(ValueError, match="k='first' must be"):
        GradientPolicy("sdo", k="first")  # type: ignore[arg-type]


def test_guidance_combines_conditional_and_null_predictions() -> None:
    unet = tiny_unet()
    x, t = latent(), torch.tensor(500)
    labels = torch.tensor([2, 6])
    guided = PixelUNetDenoiser(unet, guidance_scale=3.0, null_class=10)(x, t, labels)
    with torch.no_grad():
        cond = unet(x, t, class_labels=labels).sample
        uncond = unet(x, t, class_labels=torch.full_like(labels, 10)).sample
    torch.testing.assert_close(guided.detach(), uncond + 3.0 * (cond - uncond))
    with pytest.raises(ValueError, match="needs null_class"):
        PixelUNetDenoiser(unet, guidance_scale=3.0)(x, t, labels)


def test_dit_learned_sigma_output_is_split_to_epsilon() -> None:
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=11).eval()
    denoiser = TransformerDenoiser(dit, guidance_scale=1.5, null_class=10)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = sample(denoiser, make_scheduler("ddim", 3), x, torch.tensor([1, 2]), policy="sdo")
    assert out.sample.shape == x.shape
    out.sample.sum().backward()
    assert x.grad.abs().sum() > 0
    raw = dit(x.detach(), timestep=torch.tensor([500, 500]), class_labels=torch.tensor([1, 2])).sample
    single = TransformerDenoiser(dit)(x.detach(), torch.tensor(500), torch.tensor([1, 2]))
    torch.testing.assert_close(single, raw[:, :4])


def test_pixart_text_conditioned_transformer_runs_with_guidance() -> None:
    torch.manual_seed(0)
    pixart = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                      num_layers=1, sample_size=8, patch_size=2, cross_attention_dim=16,
                                      caption_channels=12, use_additional_conditions=False)
    denoiser = TransformerDenoiser(pixart, guidance_scale=4.5, null_embedding=torch.zeros(1, 5, 12))
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = sample(denoiser, make_scheduler("dpm", 3), x, torch.randn(2, 5, 12))
    out.sample.sum().backward()
    assert out.sample.shape == x.shape and x.grad.abs().sum() > 0


def test_latent_unet_decodes_through_the_vae_with_gradient() -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=12, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, layers_per_block=1, sample_size=16)
    denoiser = LatentUNetDenoiser(unet, vae, guidance_scale=7.5, null_embedding=torch.zeros(1, 5, 12))
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = sample(denoiser, make_scheduler("euler", 3), x, torch.randn(1, 5, 12), policy="sdo")
    image = denoiser.decode(out.sample)
    assert image.shape == (1, 3, 16, 16)
    image.mean().backward()
    assert x.grad.abs().sum() > 0
