"""Training of shortcut models (Frans et al. 2024, arXiv 2410.12557, Sec. 3, Alg. 1) and of the flow baseline.

Each batch is split: a fraction (the paper: 1/4) gets self-consistency targets, the rest flow-matching
targets at the smallest step d = 1/M (the paper's d = 0). With time running from noise (t = 0) to data
(t = 1) and x_t = (1 - t) x₀ + t x₁, the paper's Eq. 5 for a step of size 2d reads

    s_target = ( s(x_t, t, d) + s(x'_{t+d}, t + d, d) ) / 2,   x'_{t+d} = x_t + d · s(x_t, t, d),

so the SECOND half-step starts at t + d, the first half-step's size (not at t + 2d, and not at t - d as
in reversed-time ports); ``tests/test_shortcut.py`` pins this. The two half-steps are taken by the EMA
copy under no_grad, as in the official code. Labels are dropped to the null class (for classifier-free
guidance) on the flow-matching part only, since guidance is used at d = 0 only.

``self_consistency_fraction=0`` with a network built with ``step_conditioned=False`` trains the
flow-matching baseline with the same backbone, batch and step budget.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_sdo.io import write_json
from lit_sdo.models.shortcut import ShortcutDiT, save_shortcut

ShortcutFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]
MANIFEST_FILE = "MANIFEST.json"


def interpolate(noise: Tensor, data: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x₀ + t x₁ with t (B,) broadcast over (B, C, H, W)."""
    t = t.reshape(-1, *[1] * (data.dim() - 1))
    return (1 - t) * noise + t * data


def flow_matching_targets(data: Tensor, noise: Tensor, max_steps: int,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flow-matching inputs and targets at d = 1/M: (x_t, t, d, v = x₁ - x₀), t on the grid k/M, k < M."""
    batch = data.shape[0]
    t = torch.randint(0, max_steps, (batch,), generator=generator).to(data) / max_steps  # (B,)
    d = torch.full_like(t, 1.0 / max_steps)  # (B,)
    return interpolate(noise, data, t), t, d, data - noise


def self_consistency_targets(teacher: ShortcutFn, data: Tensor, noise: Tensor, labels: Tensor | None,
                             max_steps: int, generator: torch.Generator | None = None
                             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Self-consistency inputs and targets (paper Eq. 5): (x_t, t, 2d, target) with target from two d-steps.

    The big step 2d takes the values 1, 1/2, ..., 2/M in equal shares (so d reaches 1/M); t is drawn on
    the grid of multiples of 2d, so that t + 2d <= 1.
    """
    batch = data.shape[0]
    levels = int(math.log2(max_steps))  # big steps 2d = 2^-k, k = 0..levels-1
    k = torch.arange(batch, device=data.device) % levels  # equal shares of every step size (B,)
    big = (0.5 ** k).to(data)  # 2d (B,)
    half = big / 2  # d (B,)
    sections = (2 ** k).to(data)  # number of 2d-steps in [0, 1]
    t = torch.floor(torch.rand(batch, generator=generator).to(data) * sections) / sections  # (B,) multiple of 2d
    x_t = interpolate(noise, data, t)
    with torch.no_grad():
        first = teacher(x_t, t, half, labels)  # s(x_t, t, d)
        x_mid = x_t + half.reshape(-1, 1, 1, 1) * first  # x'_{t+d}
        second = teacher(x_mid, t + half, half, labels)  # s(x'_{t+d}, t + d, d): starts at t + d
        target = (first + second) / 2
    return x_t, t, big, target


class ShortcutModule(L.LightningModule):
    """Shortcut-model (or flow-matching baseline) training with EMA, label dropout and an exported model.

    Args:
        network: keyword arguments of :class:`~lit_sdo.models.shortcut.ShortcutDiT` (``num_classes``,
            ``max_steps`` = M and ``step_conditioned`` live there).
        self_consistency_fraction: share of each batch with self-consistency targets (paper: 0.25);
            0 trains plain flow matching (the baseline).
        label_dropout: probability of the null label on the flow-matching part (paper: 0.1 on ImageNet;
            1.0 = unconditional, CelebA-HQ).
        lr: AdamW learning rate (paper: 1e-4).
        weight_decay: AdamW weight decay (paper: 0.1).
        warmup_steps: linear learning-rate warm-up.
        ema_decay: decay of the EMA copy that makes the self-consistency targets and is exported (paper: 0.999).
        export_dir: folder to write the EMA network and MANIFEST.json into at the end of ``fit`` (None: do not).
        seed: recorded in the MANIFEST (set the actual seed with ``seed_everything`` in the config).
        vae: latent training: a diffusers ``AutoencoderKL`` (local folder, or hub id already in the local cache;
            the paper: stabilityai/sd-vae-ft-mse) that encodes each image batch, frozen. None: pixel space.
    """

    def __init__(self, network: dict[str, Any], self_consistency_fraction: float = 0.25, label_dropout: float = 0.1,
                 lr: float = 1e-4, weight_decay: float = 0.1, warmup_steps: int = 0, ema_decay: float = 0.999,
                 export_dir: str | None = None, seed: int | None = None, vae: str | None = None) -> None:
        super().__init__()
        if not 0 <= self_consistency_fraction < 1:
            raise ValueError(f"self_consistency_fraction={self_consistency_fraction} must be in [0, 1)")
        if not 0 <= label_dropout <= 1:
            raise ValueError(f"label_dropout={label_dropout} must be in [0, 1]")
        self.save_hyperparameters()
        self.network = ShortcutDiT(**network)
        if self_consistency_fraction > 0 and not self.network.step_conditioned:
            raise ValueError("self_consistency_fraction > 0 needs network.step_conditioned=True (the targets are "
                             "taken at several step sizes d)")
        if self_consistency_fraction > 0 and self.network.max_steps < 2:
            raise ValueError("self-consistency needs network.max_steps >= 2 (two half-steps of the smallest size)")
        self.ema = copy.deepcopy(self.network).requires_grad_(False).eval()
        self.vae = load_vae(vae) if vae is not None else None
        self._fit_start: float | None = None

    def shortcut_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean squared error over the merged batch (self-consistency part first, then flow matching)."""
        hp, max_steps = self.hparams, self.network.max_steps
        noise = torch.randn_like(images)  # x₀, (B, C, H, W)
        n_sc = int(images.shape[0] * hp.self_consistency_fraction)
        parts, logs = [], {}
        if n_sc > 0:
            parts.append(self_consistency_targets(self.ema, images[:n_sc], noise[:n_sc], labels[:n_sc], max_steps))
        x_t, t, d, v = flow_matching_targets(images[n_sc:], noise[n_sc:], max_steps)
        flow_labels = labels[n_sc:]
        drop = torch.rand(flow_labels.shape, device=flow_labels.device) < hp.label_dropout
        flow_labels = torch.where(drop, torch.full_like(flow_labels, self.network.null_class), flow_labels)
        parts.append((x_t, t, d, v))
        x_t, t, d, target = (torch.cat(items) for items in zip(*parts, strict=True))
        all_labels = torch.cat([labels[:n_sc], flow_labels])
        per_sample = F.mse_loss(self.network(x_t, t, d, all_labels), target, reduction="none").flatten(1).mean(1)
        if n_sc > 0:
            logs["train/loss_self_consistency"] = per_sample[:n_sc].mean()
        logs["train/loss_flow"] = per_sample[n_sc:].mean()
        return per_sample.mean(), logs

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> scaled VAE latents (the paper's 256×256×3 -> 32×32×4), or the images themselves."""
        if self.vae is None:
            return images
        scale = getattr(self.vae.config, "scaling_factor", 1.0)
        return self.vae.encode(images).latent_dist.sample() * scale

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        images = self.encode(images)
        loss, logs = self.shortcut_loss(images, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log_dict(logs, batch_size=images.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # EMA with the usual warm-up (decay grows from 0, so the random init does not dominate the targets).
        decay = min(self.hparams.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        with torch.no_grad():
            for ema_p, p in zip(self.ema.parameters(), self.network.parameters(), strict=True):
                ema_p.lerp_(p, 1 - decay)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        warmup = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / max(1, self.hparams.warmup_steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            wall = time.perf_counter() - self._fit_start if self._fit_start is not None else None
            export_shortcut(self.ema, self.hparams.export_dir, {
                "training_command": " ".join([Path(sys.executable).name, *sys.argv]),
                "env": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},  # 1 on shared CPUs
                "seed": self.hparams.seed,
                "optimizer_steps": self.global_step,
                "fit_wall_clock_s": None if wall is None else round(wall, 1),
                "self_consistency_fraction": self.hparams.self_consistency_fraction,
                "label_dropout": self.hparams.label_dropout,
                "lr": self.hparams.lr, "weight_decay": self.hparams.weight_decay,
                "ema_decay": self.hparams.ema_decay,
                "batch_size": getattr(self.trainer.datamodule, "batch_size", None),
                "torch": torch.__version__,
            })


def load_vae(name: str) -> torch.nn.Module:
    """A frozen diffusers AutoencoderKL from a local folder or the local hub cache (never downloaded)."""
    from diffusers import AutoencoderKL

    from lit_sdo.models.hub import resolve_folder

    return AutoencoderKL.from_pretrained(resolve_folder(name, "VAE")).requires_grad_(False).eval()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_shortcut(network: ShortcutDiT, folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the (EMA) network with :func:`save_shortcut` and a MANIFEST.json with sha256 of each file."""
    folder = save_shortcut(network, folder)
    files = {p.name: sha256_of(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST_FILE and p.is_file()}
    write_json(folder / MANIFEST_FILE, {"sha256": files, **manifest})
    return folder
