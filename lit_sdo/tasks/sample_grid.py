"""Class-conditional sample grid from any loaded diffusion model (``lit-sdo predict``).

The predict step samples ``samples_per_class`` images for each class with the one
:class:`~lit_sdo.models.sampler.Sampler` (no gradients: policy ``none``); the grid (one row per class) is
written as a PNG at the end.

"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lit_sdo.callbacks import announce
from lit_sdo.images import image_grid, save_png
from lit_sdo.models.sampler import Sampler, SamplerSpec


class SampleGridModule(L.LightningModule):
    """Sample a (classes × samples_per_class) grid and save it as a PNG.

    Args:
        model: diffusion model name for :func:`lit_sdo.models.load_diffusion` (``embedded:digits-ddpm``,
            a folder, a cached hub id).
        output: PNG path of the grid.
        scheduler: sampler name for :func:`lit_sdo.models.diffusion.build_sampler` (ddim, dpm, ..., or
            ``shortcut`` for the shortcut / flow-matching models).
        num_steps: sampling steps N.
        guidance_scale: classifier-free guidance scale s (1 = no guidance).
        classes: labels to show, one row each (None: all of the model's classes).
        samples_per_class: columns of the grid.
        seed: seed of the initial noise x_T (same seed, same grid).
        scale: PNG enlargement factor (16×16 digits are tiny).
        precision: dtype of the model calls (``fp32``, ``bf16``, ``fp16``; the latents and the scheduler
            arithmetic stay float32), see :class:`~lit_sdo.models.sampler.SamplerSpec`.
        precision_cast: ``autocast`` (no second copy of the weights) or ``copy`` (a low-precision weight copy).
    """

    def __init__(self, model: str = "embedded:digits-ddpm", output: str = "outputs/samples.png",
                 scheduler: str = "ddim", num_steps: int = 50, guidance_scale: float = 1.0,
                 classes: list[int] | None = None, samples_per_class: int = 8, seed: int = 0,
                 scale: int = 4, precision: Literal["fp32", "bf16", "fp16"] = "fp32",
                 precision_cast: Literal["autocast", "copy"] = "autocast") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.sampler = Sampler(SamplerSpec(model=model, scheduler=scheduler, num_steps=num_steps,
                                           guidance_scale=guidance_scale, policy="none", precision=precision,
                                           precision_cast=precision_cast))
        num_classes = self.sampler.model.num_classes
        if num_classes is None:
            raise ValueError(f"model {model!r} is not class-conditional; the sample grid needs class labels")
        self.classes = classes if classes is not None else list(range(num_classes))
        self._rows: list[Tensor] = []

    def setup(self, stage: str) -> None:
        self.sampler.check_precision(self.trainer.strategy.root_device)  # one line before any work

    def predict_dataloader(self) -> DataLoader:
        # One batch per class row: the labels repeated samples_per_class times.
        labels = torch.tensor(self.classes).repeat_interleave(self.hparams.samples_per_class)
        return DataLoader(labels, batch_size=self.hparams.samples_per_class, shuffle=False)

    def predict_step(self, labels: Tensor, batch_idx: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.hparams.seed + batch_idx)
        x_T = torch.randn((len(labels), *self.sampler.latent_shape), generator=generator).to(self.device)
        with torch.no_grad():  # the grid is the product: made in the configured precision (evaluate is float32)
            images = self.sampler.generate(x_T, self.sampler.condition(labels)).cpu()  # (B, C, H, W) in [0, 1]
        self._rows.append(images)
        return images

    def on_predict_end(self) -> None:
        grid = image_grid(torch.cat(self._rows), nrow=self.hparams.samples_per_class)
        path = save_png(self.hparams.output, grid, scale=self.hparams.scale)
        announce(f"wrote {path}")

    def configure_optimizers(self) -> Any:
        return None
