"""Shared tiny fixtures: seeded, offline, built in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

# Tiny models: thread hand-offs cost more than they save, and on a busy 2-core machine OpenMP threads
# spin-wait for each other (a 8×8 conv went from 0.15 ms to 34 ms with 2 threads under load).
# Subprocesses started by tests (CLI, DDP) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def make_tiny_unet(num_class_embeds: int | None = 3, sample_size: int = 8) -> UNet2DModel:
    """A seeded class-conditional pixel UNet (diffusers' own test size)."""
    torch.manual_seed(0)
    return UNet2DModel(sample_size=sample_size, in_channels=1, out_channels=1, block_out_channels=(4, 8),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds)


@pytest.fixture
def tiny_unet() -> UNet2DModel:
    return make_tiny_unet()


@pytest.fixture
def tiny_ddpm_folder(tmp_path: Path, tiny_unet: UNet2DModel) -> Path:
    """A lit_sdo-exported class-conditional DDPM folder: 2 classes + the null label 2."""
    from lit_sdo.tasks.train_diffusion import export_diffusion

    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    return export_diffusion(tiny_unet, scheduler, tmp_path / "tiny-ddpm", num_classes=2)


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline Hugging Face cache: any hub id is 'not available locally'."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
