"""``sample(..., policy="none")`` against diffusers' own pipelines, same seeds, tiny random models.

The reference is the library's pipeline, not a loop of ours: DDPMPipeline / DDIMPipeline for a pixel
``UNet2DModel``; StableDiffusionPipeline (ddim, ddpm, dpm, euler, with classifier-free guidance) and
LatentConsistencyModelPipeline (lcm, guidance through the w-embedding) for a ``UNet2DConditionModel`` +
VAE + CLIP text encoder, saved as a pipeline folder and loaded back through ``load_diffusion``. A missing
``init_noise_sigma`` (Euler starts ~15× too quiet) or a dropped ``timestep_cond`` (LCM) shows here.

Seeds: the pipelines take ``generator=[Generator().manual_seed(s) for s in seeds]``; their x_T rows equal
``noise_for_seeds(seeds)``, and the same generators then feed the stochastic schedulers' noise.

Every comparison here is bit for bit, because the arithmetic is identical by construction: the same
operations on the same shapes in the same order (GEMM kernels, e.g. MKL's on AVX-512 CPUs, may round
differently for different shapes, so equal shapes are part of the construction):

- x_T: the same generators draw the same shapes;
- pixel pipelines: one UNet call per step on the batch of B, the timestep broadcast to B inside the UNet
  either way, the same scheduler arithmetic and the same ``(x / 2 + 0.5).clamp(0, 1)``;
- Stable Diffusion: the prompts are encoded in one text-encoder call of B; the empty prompt as the pipeline
  encodes its negative prompt, ``[""] * B`` in one call (the denoiser's ``encode_prompt``; a batch-1 encoding
  expanded to B is 4-6e-6 off after 4 steps where the GEMM depends on the batch); one UNet call per step
  on ``[uncond; cond]`` (2B) in the pipeline's order; guidance and scheduler arithmetic elementwise;
- LCM: one UNet call on the batch of B, the w-embedding computed by the same operations as the pipeline's.

``MKL_CBWR=COMPATIBLE`` makes MKL's GEMM depend on the batch on any MKL CPU (as MKL's own AVX-512 kernels do
on Intel CPUs), so the slow test below reproduces, on the CPU at hand, the hazard a batch mismatch meets there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


SD_SCHEDULERS = ["euler", "dpm", "ddim", "ddpm"]


def stable_diffusion_latents(folder: Path, name: str) -> tuple[Tensor, Tensor, object]:
    """(ours, StableDiffusionPipeline's) latents x₀ for PROMPTS and SEEDS with guidance 3, and our scheduler."""
    pipeline = saved_pipeline(folder, StableDiffusionPipeline, text_unet())
    model = load_diffusion(str(folder), guidance_scale=3.0)
    denoiser, scheduler = build_sampler(model, name, NUM_STEPS)
    assert type(denoiser) is LatentUNetDenoiser and not denoiser.embedded_guidance
    with torch.no_grad():
        ours = sample(denoiser, scheduler, noise_for_seeds(SEEDS, denoiser.sample_shape), model.encode_prompt(PROMPTS),
                      policy="none", generator=generators_after_noise(denoiser.sample_shape)).sample
    pipeline.scheduler = build_scheduler(name, NUM_STEPS, base_config=dict(scheduler.config))
    expected = pipeline(PROMPTS, num_inference_steps=NUM_STEPS, guidance_scale=3.0, generator=generators(),
                        output_type="latent").images
    return ours, expected, scheduler


@pytest.mark.parametrize("name", SD_SCHEDULERS)
def test_stable_diffusion_sampling_equals_the_pipeline(tmp_path: Path, name: str) -> None:
    ours, expected, scheduler = stable_diffusion_latents(tmp_path / "sd", name)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)  # identical arithmetic: see the module docstring
    if name == "euler":  # the scale x_T needs: √(σ(t₀)² + 1) ≈ 4.2 at t₀ = 751 ("leading" spacing, 4 steps)
        assert float(scheduler.init_noise_sigma) > 4


@pytest.mark.slow  # a subprocess: ~20 s on a busy 2-core machine
def test_stable_diffusion_equality_holds_where_the_gemm_depends_on_the_batch(tmp_path: Path) -> None:
    """The comparison above under ``MKL_CBWR=COMPATIBLE``, whose GEMM rounds a row differently in a batch of 1
    and of 2 (as MKL's AVX-512 kernels do): equality must come from equal shapes, not from the CPU's kernel."""
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}  # read when MKL starts: only a new process sees it
    run = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    differences = json.loads(run.stdout.strip().splitlines()[-1])
    assert differences == {name: 0.0 for name in SD_SCHEDULERS}


def print_stable_diffusion_differences(folder: Path) -> None:
    """One JSON line {scheduler: max |ours − pipeline|}: what the subprocess of the test above prints."""
    differences = {}
    for name in SD_SCHEDULERS:
        ours, expected, _ = stable_diffusion_latents(folder / name, name)
        differences[name] = float((ours - expected).abs().max())
    print(json.dumps(differences))


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


def test_the_empty_prompt_is_encoded_as_the_pipeline_encodes_its_negative_prompt() -> None:
    """``[""] * B`` in one call per batch size, float32 under a bf16 autocast, cached; never beside a fixed null."""
    calls: list[list[str]] = []

    def encode(prompts: list[str]) -> Tensor:
        calls.append(prompts)
        assert not torch.is_autocast_enabled("cpu")
        return torch.arange(len(prompts) * 6 * 8, dtype=torch.float32).reshape(len(prompts), 6, 8)  # (B, L, D)

    denoiser = LatentUNetDenoiser(text_unet(), vae(), guidance_scale=3.0, encode_prompt=encode)
    cond = torch.ones(2, 6, 8)
    torch.testing.assert_close(denoiser.null_condition(cond), encode(["", ""]), rtol=0, atol=0)  # the rows as encoded
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert denoiser.null_condition(torch.ones(3, 6, 8)).dtype == torch.float32  # cond's dtype
    denoiser.null_condition(cond)
    assert calls == [["", ""], ["", ""], ["", "", ""]]  # once per batch size (the second is the test's own)
    with pytest.raises(ValueError, match="pass null_embedding or encode_prompt") as err:
        LatentUNetDenoiser(text_unet(), vae(), 3.0, null_embedding=torch.zeros(1, 6, 8), encode_prompt=encode)
    assert "\n" not in str(err.value)


def test_w_embedding_without_time_cond_proj_dim_is_one_line() -> None:
    with pytest.raises(ValueError, match="time_cond_proj_dim=None: use guidance='cfg'") as err:
        LatentUNetDenoiser(text_unet(), vae(), guidance_scale=4.0, guidance="embedding")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="guidance='lcm' is unknown; allowed values: auto, cfg, embedding"):
        LatentUNetDenoiser(text_unet(), vae(), guidance="lcm")  # type: ignore[arg-type]


if __name__ == "__main__":  # the subprocess of test_stable_diffusion_equality_holds_where_the_gemm_depends_on_the_batch
    print_stable_diffusion_differences(Path(sys.argv[1]))
