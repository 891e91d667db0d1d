"""``sample(..., policy="none")`` against diffusers' own pipelines, same seeds, tiny random models.

The reference is the library's pipeline, not a loop of ours: DDPMPipeline / DDIMPipeline for a pixel
``UNet2DModel``; StableDiffusionPipeline (ddim, ddpm, dpm, euler, with classifier-free guidance) and
LatentConsistencyModelPipeline (lcm, guidance through the w-embedding) for a ``UNet2DConditionModel`` +
VAE + CLIP text encoder, saved as a pipeline folder and loaded back through ``load_diffusion``. A missing
``init_noise_sigma`` (Euler starts ~15× too quiet) or a dropped ``timestep_cond`` (LCM) shows here.

Seeds: the pipelines take ``generator=[Generator().manual_seed(s) for s in seeds]``; their x_T rows equal
``noise_for_seeds(seeds)``, and the same generators then feed the stochastic schedulers' noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    LatentConsistencyModelPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from torch import Tensor

from lit_sdo.models import build_sampler, load_diffusion
from lit_sdo.sampling import LatentUNetDenoiser, PixelUNetDenoiser, build_scheduler, noise_for_seeds, sample

NUM_STEPS = 4
SEEDS = [3, 11]
PROMPTS = ["a b", "b a"]
# Stable Diffusion's β schedule (scheduler_config.json of SD 1.x), so Euler's init_noise_sigma is ≈ 14.6.
SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                "set_alpha_to_one": False, "steps_offset": 1, "num_train_timesteps": 1000}


def generators(seeds: list[int] = SEEDS) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def pixel_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def to_numpy_image(x0: Tensor) -> np.ndarray:
    """What DDPMPipeline / DDIMPipeline return for output_type="np": (B, H, W, C) in [0, 1]."""
    return (x0 / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_pixel_sampling_equals_diffusers_pipeline_bit_for_bit(name: str) -> None:
    unet = pixel_unet()
    scheduler = build_scheduler(name, NUM_STEPS, base_config={"beta_schedule": "squaredcos_cap_v2"})
    shape = (len(SEEDS), 1, 8, 8)
    x_T = torch.stack([torch.randn(shape[1:], generator=g) for g in generators()])
    assert torch.equal(x_T, noise_for_seeds(SEEDS, shape[1:]))
    gens = generators()
    ours_noise = torch.stack([torch.randn(shape[1:], generator=g) for g in gens])  # advance like the pipeline
    with torch.no_grad():
        ours = sample(PixelUNetDenoiser(unet), scheduler, ours_noise, policy="none", generator=gens).sample
    pipeline_class = DDPMPipeline if name == "ddpm" else DDIMPipeline
    pipeline = pipeline_class(unet=unet, scheduler=build_scheduler(name, NUM_STEPS, base_config=dict(scheduler.config)))
    expected = pipeline(batch_size=len(SEEDS), generator=generators(), num_inference_steps=NUM_STEPS,
                        output_type="np").images
    assert np.array_equal(to_numpy_image(ours), expected)


# ---------------------------------------------------------------- latent models, text prompts


def text_unet(time_cond_proj_dim: int | None = None) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=4, time_cond_proj_dim=time_cond_proj_dim)


def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8), latent_channels=4,
                         norm_num_groups=4, sample_size=16)


def text_encoder_and_tokenizer(folder: Path) -> tuple[object, object]:
    """A 6-token CLIP tokenizer and a 1-layer CLIP text encoder of width 8 (no download)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=6)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=6, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=6, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    return CLIPTextModel(config).eval(), tokenizer


def saved_pipeline(folder: Path, pipeline_class: type, unet: UNet2DConditionModel) -> object:
    """Build the pipeline from tiny components and save it, so ``load_diffusion`` reads the same weights."""
    text_encoder, tokenizer = text_encoder_and_tokenizer(folder / "vocab")
    pipeline = pipeline_class(vae=vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
                              requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return pipeline


@pytest.mark.parametrize("name", ["euler", "dpm", "ddim", "ddpm"])
def test_stable_diffusion_sampling_equals_the_pipeline(tmp_path: Path, name: str) -> None:
    pipeline = saved_pipeline(tmp_path / "sd", StableDiffusionPipeline, text_unet())
    model = load_diffusion(str(tmp_path / "sd"), guidance_scale=3.0)
    denoiser, scheduler = build_sampler(model, name, NUM_STEPS)
    assert type(denoiser) is LatentUNetDenoiser and not denoiser.embedded_guidance
    with torch.no_grad():
        ours = sample(denoiser, scheduler, noise_for_seeds(SEEDS, denoiser.sample_shape), model.encode_prompt(PROMPTS),
                      policy="none", generator=generators_after_noise(denoiser.sample_shape)).sample
    pipeline.scheduler = build_scheduler(name, NUM_STEPS, base_config=dict(scheduler.config))
    expected = pipeline(PROMPTS, num_inference_steps=NUM_STEPS, guidance_scale=3.0, generator=generators(),
                        output_type="latent").images
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    if name == "euler":  # the scale x_T needs: √(σ(t₀)² + 1) ≈ 4.2 at t₀ = 751 ("leading" spacing, 4 steps)
        assert float(scheduler.init_noise_sigma) > 4


def generators_after_noise(shape: tuple[int, ...]) -> list[torch.Generator]:
    """The pipeline's generators after they drew x_T: what its stochastic scheduler draws from next."""
    gens = generators()
    for g in gens:
        torch.randn(shape, generator=g)
    return gens


def test_lcm_sampling_with_the_w_embedding_equals_the_pipeline(tmp_path: Path) -> None:
    pipeline = saved_pipeline(tmp_path / "lcm", LatentConsistencyModelPipeline, text_unet(time_cond_proj_dim=8))
    model = load_diffusion(str(tmp_path / "lcm"), guidance_scale=4.0)
    denoiser, scheduler = build_sampler(model, "lcm", NUM_STEPS)
    assert denoiser.embedded_guidance  # auto: the UNet has time_cond_proj_dim
    with torch.no_grad():
        ours = sample(denoiser, scheduler, noise_for_seeds(SEEDS, denoiser.sample_shape), model.encode_prompt(PROMPTS),
                      policy="none", generator=generators_after_noise(denoiser.sample_shape)).sample
    pipeline.scheduler = build_scheduler("lcm", NUM_STEPS, base_config=dict(scheduler.config))
    expected = pipeline(PROMPTS, num_inference_steps=NUM_STEPS, guidance_scale=4.0, generator=generators(),
                        output_type="latent").images
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_w_embedding_without_time_cond_proj_dim_is_one_line() -> None:
    with pytest.raises(ValueError, match="time_cond_proj_dim=None: use guidance='cfg'") as err:
        LatentUNetDenoiser(text_unet(), vae(), guidance_scale=4.0, guidance="embedding")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="guidance='lcm' is unknown; allowed values: auto, cfg, embedding"):
        LatentUNetDenoiser(text_unet(), vae(), guidance="lcm")  # type: ignore[arg-type]
