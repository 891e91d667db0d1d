"""Shared tiny fixtures: seeded, offline, built in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

if TYPE_CHECKING:
    from lit_sdo.models import Classifier, DiffusionModel

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


# ----- tiny stand-ins for models the tasks load by name ---------------------------------------------


def tiny_generator(num_classes: int = 3, name: str = "tiny-ddpm") -> DiffusionModel:
    """A seeded class-conditional pixel DDPM (8×8 grey, ``num_classes`` labels + the null label)."""
    from lit_sdo.models import DiffusionModel
    from lit_sdo.sampling import PixelUNetDenoiser

    unet = make_tiny_unet(num_class_embeds=num_classes + 1)
    return DiffusionModel(name=name, denoiser=PixelUNetDenoiser(unet).eval(), scheduler_config={},
                          num_classes=num_classes, image_size=8, channels=1)


def tiny_classifier(name: str = "tiny-classifier", num_classes: int = 3) -> Classifier:
    """A seeded conv classifier of 8×8 grey images; another name gives other weights (a second family)."""
    from torch import nn

    from lit_sdo.models import Classifier

    torch.manual_seed(sum(map(ord, name)))
    network = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 8 * 8, num_classes))
    return Classifier(network, name, num_classes=num_classes, input_size=8, channels=1, mean=(0.5,), std=(0.5,))


def patch_loaders(monkeypatch: pytest.MonkeyPatch, generator=None) -> None:  # noqa: ANN001
    """Make the sampler load ``generator(name)`` (objectives need no patch: tests give them built classifiers)."""
    import lit_sdo.models.sampler

    make_generator = generator or (lambda name, **_: tiny_generator())
    monkeypatch.setattr(lit_sdo.models.sampler, "load_diffusion", make_generator)


@pytest.fixture
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny 3-class generator in place of the named one."""
    patch_loaders(monkeypatch)
