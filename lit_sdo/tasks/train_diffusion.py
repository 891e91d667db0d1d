"""Training of the embedded class-conditional pixel DDPM (the digits model the attack runs on).

The network is a plain diffusers ``UNet2DModel`` built from the ``unet`` config dict; this module only
orchestrates: noise a batch (DDPM forward process), drop labels to the null class for classifier-free
guidance (Ho & Salimans 2022), regress ε or v, keep an EMA copy, and export the EMA weights with
``save_pretrained`` plus the scheduler config, so diffusers' own ``from_pretrained`` loads the folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor

from lit_sdo.io import write_json
from lit_sdo.optim import adamw_with_warmup, update_ema

# Metadata file written beside diffusers' config.json: what diffusers' config cannot say (the null label).
LIT_SDO_CONFIG = "lit_sdo.json"


class DiffusionTrainingModule(L.LightningModule):
    """Class-conditional DDPM training with label dropout and EMA.

    Args:
        unet: keyword arguments of ``diffusers.UNet2DModel`` (``num_class_embeds`` must be
            ``num_classes + 1``: the last label is the null label used for guidance).
        num_classes: number of real classes; labels are 0..num_classes-1, ``num_classes`` is null.
        prediction_type: what the network regresses: ``epsilon`` (ε) or ``v_prediction`` (v).
        beta_schedule: diffusers β schedule of the forward process.
        num_train_timesteps: T of the forward process.
        label_dropout: probability of replacing a label by the null label (enables guidance).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up.
        ema_decay: decay of the exponential moving average of the weights (the exported weights).
        export_dir: folder to ``save_pretrained`` the EMA model into at the end of ``fit`` (None: do not).
        init_from: an exported diffusers folder whose weights start the network and its EMA (continue a run
            that left no checkpoint; the architecture in ``unet`` must match); None starts from scratch.
    """

    def __init__(self, unet: dict[str, Any], num_classes: int = 10,
                 prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
                 beta_schedule: str = "squaredcos_cap_v2", num_train_timesteps: int = 1000,
                 label_dropout: float = 0.1, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 100, ema_decay: float = 0.999, export_dir: str | None = None,
                 init_from: str | None = None) -> None:
        super().__init__()
        if unet.get("num_class_embeds") != num_classes + 1:
            raise ValueError(f"unet.num_class_embeds={unet.get('num_class_embeds')} must be num_classes + 1 = "
                             f"{num_classes + 1} (the extra label is the null label for guidance)")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout={label_dropout} must be in [0, 1)")
        self.save_hyperparameters()
        self.unet = UNet2DModel(**unet)
        if init_from is not None:
            self.unet.load_state_dict(load_exported_weights(init_from, self.unet.config))
        self.ema = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                             prediction_type=prediction_type, clip_sample=False,
                                             # NOT "trailing": the cosine schedule caps β at 0.999, so ᾱ at
                                             # t = T-1 is ~1e-6 and x̂₀ = (x - √(1-ᾱ)ε̂)/√ᾱ blows ε̂'s error up
                                             # 1000× without the clamp that optimisation must turn off.
                                             timestep_spacing="leading")

    def diffusion_loss(self, network: torch.nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        """Mean squared error of the ε / v regression at uniformly drawn timesteps (images in [-1, 1])."""
        noise = torch.randn_like(images)  # ε, (B, C, H, W)
        t = torch.randint(0, self.hparams.num_train_timesteps, (images.shape[0],), device=images.device)
        noisy = self.noise_scheduler.add_noise(images, noise, t)  # x_t = √ᾱ_t x₀ + √(1-ᾱ_t) ε
        if self.hparams.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(images, noise, t)  # v = √ᾱ_t ε - √(1-ᾱ_t) x₀
        return F.mse_loss(network(noisy, t, class_labels=labels).sample, target)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        drop = torch.rand(labels.shape, device=labels.device) < self.hparams.label_dropout
        labels = torch.where(drop, torch.full_like(labels, self.hparams.num_classes), labels)
        loss = self.diffusion_loss(self.unet, images, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        update_ema(self.ema, self.unet, self.global_step, self.hparams.ema_decay)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        # The same noise every epoch (comparable validation losses), and training's random streams untouched:
        # manual_seed reseeds the CUDA generators too, so they are forked with the CPU one.
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            torch.manual_seed(batch_idx)
            loss = self.diffusion_loss(self.ema, images, labels)
        self.log("val/loss_ema", loss, prog_bar=True, batch_size=images.shape[0])

    def configure_optimizers(self) -> Any:
        return adamw_with_warmup(self.unet.parameters(), self.hparams.lr, self.hparams.weight_decay,
                                 self.hparams.warmup_steps)

    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            export_diffusion(self.ema, self.noise_scheduler, self.hparams.export_dir, self.hparams.num_classes)


def load_exported_weights(folder: str | Path, config: Any) -> dict[str, Tensor]:
    """The state dict of an exported folder, after checking that its architecture equals ``config``."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"init_from={str(folder)!r} is not an exported diffusers folder (no config.json)")
    exported = UNet2DModel.from_pretrained(folder)
    mismatched = [k for k, v in config.items() if not k.startswith("_") and exported.config.get(k) != v]
    if mismatched:
        raise ValueError(f"init_from={str(folder)!r} has another architecture ({', '.join(mismatched)} differ)")
    return exported.state_dict()


def export_diffusion(unet: UNet2DModel, scheduler: DDPMScheduler, folder: str | Path, num_classes: int) -> Path:
    """Write a folder that diffusers loads directly: ``UNet2DModel.from_pretrained(folder)`` and
    ``DDPMScheduler.from_pretrained(folder)``, plus ``lit_sdo.json`` naming the null label."""
    folder = Path(folder)
    unet.save_pretrained(folder, safe_serialization=True)
    scheduler.save_pretrained(folder)
    write_json(folder / LIT_SDO_CONFIG, {"kind": "pixel_unet", "num_classes": num_classes, "null_class": num_classes})
    return folder


def export_checkpoint(checkpoint: str | Path, folder: str | Path) -> Path:
    """Export the EMA weights of a Lightning checkpoint of this module (e.g. a run stopped early)."""
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist; pass a .ckpt written by `lit-sdo fit`")
    module = DiffusionTrainingModule.load_from_checkpoint(checkpoint, map_location="cpu")
    return export_diffusion(module.ema, module.noise_scheduler, folder, module.hparams.num_classes)


if __name__ == "__main__":
    import sys

    # Import by package path: the checkpoint names lit_sdo.tasks.train_diffusion's class, not __main__'s.
    from lit_sdo.tasks.train_diffusion import export_checkpoint as export

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m lit_sdo.tasks.train_diffusion CHECKPOINT.ckpt EXPORT_FOLDER")
    print(export(sys.argv[1], sys.argv[2]))  # noqa: T201
