"""The curve people watch while a class-conditional diffusion model trains: does it draw its classes yet?

The training loss says little about samples, and a generator that makes its classes only with clipping
makes images the attack never sees (the attack samples unclipped: a clamp zeroes the gradient where it
bites). So :class:`SampleQualityMonitor` samples the EMA weights every few hundred steps exactly as the
attack will (DDIM, ``clip_sample`` off, classifier-free guidance with the null label) and logs, per
guidance scale, how often a classifier reads the conditioning label and the FID of its penultimate
features against held-out images (``lit_sdo.metrics.feature_fid``'s features), beside the FID of as many
training images (the floor the generator can reach at this sample size).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lit_sdo.images import to_unit_range
from lit_sdo.io import atomic_path, keep_previous
from lit_sdo.metrics import accuracy, batched_outputs, frechet_distance
from lit_sdo.models import Classifier, load_classifier
from lit_sdo.models.hub import as_module
from lit_sdo.sampling import PixelUNetDenoiser, build_scheduler, noise_for_seeds, sample


class SampleQualityMonitor(L.Callback):
    """Every ``every_n_steps`` optimiser steps, sample the module's EMA UNet and log how good the samples are.

    For each guidance scale g it logs ``samples/agreement_g<g>`` (share of samples the classifier labels
    with their conditioning class), ``samples/fid_g<g>`` and ``samples/out_of_range_g<g>`` (share of x̂₀'s
    pixels outside [-1, 1], which the attack's unclipped sampler keeps), plus ``samples/fid_floor``, to the
    loggers (TensorBoard) and the progress bar, and appends them to ``filename`` in the run folder.
    It runs on rank zero, without a graph, and restores the random state, so training draws the same
    numbers with or without it. It sees the EMA as the ``ModelCheckpoint`` of the same step stores it.

    The module must hold ``ema`` (a class-conditional ``UNet2DModel`` whose label ``num_classes`` is the null
    label), ``noise_scheduler`` and ``hparams.num_classes``, as ``DiffusionTrainingModule`` does; the data
    module must offer ``split_tensors(name) -> (images in [-1, 1], labels)``.

    Args:
        classifier: the classifier that reads the samples and gives the FID's features: a name for
            ``lit_sdo.models.load_classifier`` (``embedded:photos-resnet``) or a built ``Classifier``.
        every_n_steps: optimiser steps between two measurements.
        num_samples: samples per guidance scale; labels cycle through the classes, sample i has seed ``seed + i``
            at every measurement, so the points of the curve are comparable.
        num_steps: DDIM steps.
        guidance_scales: classifier-free guidance scales to measure (1.0: no guidance).
        seed: seed of the first sample.
        reference_split: the held-out split of the data module the FID compares with.
        batch_size: samples per sampler call.
        filename: JSON lines file in the run folder (the logger's folder), one line per measurement.
    """

    def __init__(self, classifier: str | Classifier = "embedded:photos-resnet", every_n_steps: int = 500,
                 num_samples: int = 100, num_steps: int = 30, guidance_scales: Sequence[float] = (1.0, 3.0),
                 seed: int = 0, reference_split: str = "val", batch_size: int = 100,
                 filename: str = "sample_quality.jsonl") -> None:
        super().__init__()
        if every_n_steps < 1 or num_samples < 2 or num_steps < 1 or batch_size < 1 or not guidance_scales:
            raise ValueError(f"every_n_steps={every_n_steps}, num_steps={num_steps}, batch_size={batch_size} must be "
                             f">= 1, num_samples={num_samples} >= 2 (FID needs two) and guidance_scales="
                             f"{list(guidance_scales)} not empty")
        self.classifier = as_module(classifier, load_classifier, Classifier)
        self.every_n_steps, self.num_samples, self.num_steps = every_n_steps, num_samples, num_steps
        self.guidance_scales, self.seed, self.batch_size = [float(g) for g in guidance_scales], seed, batch_size
        self.reference_split, self.filename = reference_split, filename
        self.rows: list[dict[str, Any]] = []
        self.path: Path | None = None
        self._reference: Tensor | None = None  # features of the held-out images
        self._floor: float | None = None
        self._last_step = -1

    # ----- hooks ------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.path = Path(trainer.log_dir or trainer.default_root_dir) / self.filename  # log_dir: every rank
        missing = [name for name in ("ema", "noise_scheduler") if not hasattr(module, name)]
        if missing or module.hparams.get("num_classes") is None:
            raise ValueError(f"SampleQualityMonitor watches a class-conditional diffusion training module (ema, "
                             f"noise_scheduler, hparams.num_classes); {type(module).__name__} lacks "
                             f"{', '.join(missing) or 'hparams.num_classes'}")
        if not hasattr(trainer.datamodule, "split_tensors"):
            raise ValueError(f"SampleQualityMonitor compares with held-out images from the data module's "
                             f"split_tensors({self.reference_split!r}); {type(trainer.datamodule).__name__} has none")
        num_classes = module.hparams.num_classes
        if self.classifier.num_classes != num_classes:
            raise ValueError(f"classifier {self.classifier.name} tells {self.classifier.num_classes} classes apart "
                             f"but the generator is trained for num_classes={num_classes}; pass a classifier of the "
                             "same classes")

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and not self.rows and self.path is not None:
            keep_previous(self.path)  # an earlier run's curve in the same folder is kept, not overwritten

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step  # micro-batches of one accumulated step share it
        if not trainer.is_global_zero:
            return
        row = self.measure(module, trainer.datamodule) | {"step": step}
        self.rows.append(row)
        metrics = {f"samples/{k}": v for k, v in row.items() if k not in ("step", "seconds")}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        for key, value in metrics.items():
            if not key.startswith("samples/out_of_range"):
                module.log(key, value, prog_bar=True, logger=False, rank_zero_only=True, batch_size=1)
        self._write()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])

    # ----- measurement --------------------------------------------------------------------------------------
    def measure(self, module: L.LightningModule, datamodule: Any) -> dict[str, Any]:
        """One point of the curve: every guidance scale's numbers, the FID floor and the seconds it took."""
        started = time.perf_counter()
        devices = [module.device] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            classifier = self.classifier.to(module.device)
            if self._reference is None:
                self._reference, self._floor = self._reference_features(classifier, datamodule, module.device)
            labels = self.labels(module.hparams.num_classes)
            row: dict[str, Any] = {"fid_floor": self._floor}
            for g in self.guidance_scales:
                x0 = self.generate(module, g)
                images = to_unit_range(x0)
                row[f"agreement_g{g:g}"] = accuracy(batched_outputs(classifier, images, self.batch_size), labels)
                row[f"fid_g{g:g}"] = frechet_distance(batched_outputs(classifier.features, images, self.batch_size),
                                                      self._reference)
                row[f"out_of_range_g{g:g}"] = float((x0.abs() > 1).float().mean())
        return row | {"seconds": time.perf_counter() - started}

    def labels(self, num_classes: int) -> Tensor:
        """The conditioning labels (num_samples,): classes cycling fastest."""
        return torch.arange(self.num_samples) % num_classes

    def generate(self, module: L.LightningModule, guidance_scale: float) -> Tensor:
        """The samples x̂₀ (num_samples, C, H, W) in the sampler's range, unclipped, from the module's EMA UNet."""
        num_classes = module.hparams.num_classes
        denoiser = PixelUNetDenoiser(module.ema, guidance_scale=guidance_scale, null_class=num_classes)
        scheduler = build_scheduler("ddim", self.num_steps, base_config=dict(module.noise_scheduler.config))
        noise = noise_for_seeds(range(self.seed, self.seed + self.num_samples), denoiser.sample_shape,
                                device=module.device)  # x_T
        labels = self.labels(num_classes).to(module.device)
        return torch.cat([sample(denoiser, scheduler, noise[i:i + self.batch_size], labels[i:i + self.batch_size],
                                 policy="none").sample for i in range(0, self.num_samples, self.batch_size)])

    def _reference_features(self, classifier: Classifier, datamodule: Any, device: torch.device
                            ) -> tuple[Tensor, float]:
        """Features of the held-out images, and the FID of ``num_samples`` training images against them."""
        held_out = to_unit_range(datamodule.split_tensors(self.reference_split)[0]).to(device)
        training = to_unit_range(datamodule.split_tensors("train")[0][:self.num_samples]).to(device)
        reference = batched_outputs(classifier.features, held_out, self.batch_size)
        return reference, frechet_distance(batched_outputs(classifier.features, training, self.batch_size), reference)

    def _write(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
