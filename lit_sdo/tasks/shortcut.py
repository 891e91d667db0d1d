"""Training of shortcut models (Frans et al. 2024, arXiv 2410.12557, Sec. 3, Alg. 1) and of the flow baseline.

Each batch is split: a fraction gets self-consistency targets, the rest flow-matching targets at the
smallest step d = 1/M (the paper's d = 0). With time running from noise (t = 0) to data (t = 1) and
x_t = (1 - t) x₀ + t x₁, the paper's Eq. 5 for a step of size 2d reads

    s_target = ( s(x_t, t, d) + s(x'_{t+d}, t + d, d) ) / 2,   x'_{t+d} = x_t + d · s(x_t, t, d),

so the SECOND half-step starts at t + d, the first half-step's size (not at t + 2d, and not at t - d as
in reversed-time ports); ``tests/test_shortcut.py`` pins this. The two half-steps are taken by the EMA
copy under no_grad, as in the official code (kvfrans/shortcut-models, ``targets_shortcut.py``), which
this module follows in four more places:

- the fraction: the official code's ``bootstrap_every=8`` (1/8 of the batch) is the default, because
  both published training commands use it and the reported FIDs come from them; the paper's text
  gives 1/4, still available through ``self_consistency_fraction``;
- x'_{t+d} and the target are clipped to ±``target_clip`` (official: 4);
- ``target_guidance_scale`` > 1 applies classifier-free guidance inside the targets where the teacher
  is queried at d = 1/M (official ``bootstrap_cfg 1``, ``cfg_scale 1.5`` on ImageNet);
- ``label_dropout=1`` (unconditional, official ``cfg_scale 0``) puts the null label on the whole batch,
  self-consistency part included. Otherwise labels are dropped to the null class on the flow-matching
  part only, since guidance is used at d = 0 only.

``self_consistency_fraction=0`` with a network built with ``step_conditioned=False`` trains the
flow-matching baseline with the same backbone, batch and step budget.
"""

from __future__ import annotations

import copy
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

from lit_sdo.models.manifest import write_manifest
from lit_sdo.models.shortcut import ShortcutDiT, save_shortcut
from lit_sdo.optim import adamw_with_warmup, update_ema

ShortcutFn = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


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


def guided_teacher(teacher: ShortcutFn, x: Tensor, t: Tensor, d: Tensor, labels: Tensor | None, *,
                   scale: float, null_class: int | None, flow_step: float) -> Tensor:
    """The teacher's s(x, t, d, y), with classifier-free guidance s_∅ + w (s_y - s_∅) on rows where d = 1/M.

    The official code's ``bootstrap_cfg``: guidance is part of the targets only where the half-step is the
    flow level (the paper uses CFG at d = 0 only), so the few-step shortcuts learn the guided flow.
    """
    s = teacher(x, t, d, labels)  # (B, C, H, W)
    if scale == 1.0 or labels is None:
        return s
    rows = torch.isclose(d, torch.full_like(d, flow_step))  # (B,) teacher queried at the flow level
    if not rows.any():
        return s
    null = torch.full_like(labels[rows], null_class)
    s_null = teacher(x[rows], t[rows], d[rows], null)
    guided = s.clone()
    guided[rows] = s_null + scale * (s[rows] - s_null)
    return guided


def self_consistency_targets(teacher: ShortcutFn, data: Tensor, noise: Tensor, labels: Tensor | None,
                             max_steps: int, generator: torch.Generator | None = None, *,
                             target_clip: float | None = None, guidance_scale: float = 1.0,
                             null_class: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Self-consistency inputs and targets (paper Eq. 5): (x_t, t, 2d, target) with target from two d-steps.

    The big step 2d takes the values 1, 1/2, ..., 2/M in equal shares (so d reaches 1/M); t is drawn on
    the grid of multiples of 2d, so that t + 2d <= 1. ``target_clip`` clips x'_{t+d} and the target to
    ±target_clip (the official code: 4); ``guidance_scale`` > 1 guides the teacher at d = 1/M (needs
    ``null_class``).
    """
    if guidance_scale != 1.0 and null_class is None:
        raise ValueError(f"guidance_scale={guidance_scale} in the targets needs the network's null_class")
    batch = data.shape[0]
    levels = int(math.log2(max_steps))  # big steps 2d = 2^-k, k = 0..levels-1
    k = torch.arange(batch, device=data.device) % levels  # equal shares of every step size (B,)
    big = (0.5 ** k).to(data)  # 2d (B,)
    half = big / 2  # d (B,)
    sections = (2 ** k).to(data)  # number of 2d-steps in [0, 1]
    t = torch.floor(torch.rand(batch, generator=generator).to(data) * sections) / sections  # (B,) multiple of 2d
    x_t = interpolate(noise, data, t)

    def clip(x: Tensor) -> Tensor:
        return x if target_clip is None else x.clamp(-target_clip, target_clip)

    def query(x: Tensor, time: Tensor) -> Tensor:
        return guided_teacher(teacher, x, time, half, labels, scale=guidance_scale, null_class=null_class,
                              flow_step=1.0 / max_steps)

    with torch.no_grad():
        first = query(x_t, t)  # s(x_t, t, d)
        x_mid = clip(x_t + half.reshape(-1, 1, 1, 1) * first)  # x'_{t+d}
        second = query(x_mid, t + half)  # s(x'_{t+d}, t + d, d): starts at t + d
        target = clip((first + second) / 2)
    return x_t, t, big, target


class ShortcutModule(L.LightningModule):
    """Shortcut-model (or flow-matching baseline) training with EMA, label dropout and an exported model.

    Args:
        network: keyword arguments of :class:`~lit_sdo.models.shortcut.ShortcutDiT` (``num_classes``,
            ``max_steps`` = M and ``step_conditioned`` live there).
        self_consistency_fraction: share of each batch with self-consistency targets (official code: 1/8,
            the paper's text: 1/4); 0 trains plain flow matching (the baseline).
        label_dropout: probability of the null label on the flow-matching part (paper: 0.1 on ImageNet);
            1.0 = unconditional (CelebA-HQ): every label of the batch, self-consistency part included, is null.
        target_guidance_scale: classifier-free guidance scale inside the self-consistency targets at d = 1/M
            (official ``bootstrap_cfg``: 1.5 on ImageNet); 1.0 = none.
        target_clip: clip x'_{t+d} and the self-consistency target to ±target_clip (official: 4); None = no clip.
        lr: AdamW learning rate (paper: 1e-4).
        weight_decay: AdamW weight decay (paper: 0.1).
        warmup_steps: linear learning-rate warm-up.
        ema_decay: decay of the EMA copy that makes the self-consistency targets and is exported (paper: 0.999).
        export_dir: folder to write the EMA network and MANIFEST.json into at the end of ``fit`` (None: do not).
        seed: recorded in the MANIFEST (set the actual seed with ``seed_everything`` in the config).
        vae: latent training: a diffusers ``AutoencoderKL`` (local folder, or hub id already in the local cache;
            the paper: stabilityai/sd-vae-ft-mse) that encodes each image batch, frozen. None: pixel space.
    """

    def __init__(self, network: dict[str, Any], self_consistency_fraction: float = 0.125, label_dropout: float = 0.1,
                 target_guidance_scale: float = 1.0, target_clip: float | None = 4.0,
                 lr: float = 1e-4, weight_decay: float = 0.1, warmup_steps: int = 0, ema_decay: float = 0.999,
                 export_dir: str | None = None, seed: int | None = None, vae: str | None = None) -> None:
        super().__init__()
        if not 0 <= self_consistency_fraction < 1:
            raise ValueError(f"self_consistency_fraction={self_consistency_fraction} must be in [0, 1)")
        if not 0 <= label_dropout <= 1:
            raise ValueError(f"label_dropout={label_dropout} must be in [0, 1]")
        if target_clip is not None and target_clip <= 0:
            raise ValueError(f"target_clip={target_clip} must be positive (or null for no clipping)")
        if target_guidance_scale != 1.0 and label_dropout in (0, 1):
            raise ValueError(f"target_guidance_scale={target_guidance_scale} needs a model that learns both the "
                             f"conditional and the null label: 0 < label_dropout < 1, got {label_dropout}")
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
        hp, max_steps, null = self.hparams, self.network.max_steps, self.network.null_class
        if hp.label_dropout >= 1:  # unconditional: the null label everywhere (official: cfg_scale 0)
            labels = torch.full_like(labels, null)
        noise = torch.randn_like(images)  # x₀, (B, C, H, W)
        n_sc = int(images.shape[0] * hp.self_consistency_fraction)
        parts, logs = [], {}
        if n_sc > 0:
            parts.append(self_consistency_targets(
                self.ema, images[:n_sc], noise[:n_sc], labels[:n_sc], max_steps, target_clip=hp.target_clip,
                guidance_scale=hp.target_guidance_scale, null_class=null))
        x_t, t, d, v = flow_matching_targets(images[n_sc:], noise[n_sc:], max_steps)
        flow_labels = labels[n_sc:]
        drop = torch.rand(flow_labels.shape, device=flow_labels.device) < hp.label_dropout
        flow_labels = torch.where(drop, torch.full_like(flow_labels, null), flow_labels)
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
        update_ema(self.ema, self.network, self.global_step, self.hparams.ema_decay)

    def configure_optimizers(self) -> Any:
        return adamw_with_warmup(self.network.parameters(), self.hparams.lr, self.hparams.weight_decay,
                                 self.hparams.warmup_steps)

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
                "target_guidance_scale": self.hparams.target_guidance_scale,
                "target_clip": self.hparams.target_clip,
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


def export_shortcut(network: ShortcutDiT, folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the (EMA) network with :func:`save_shortcut` and a MANIFEST.json with sha256 of each file."""
    folder = save_shortcut(network, folder)
    write_manifest(folder, manifest)
    return folder
