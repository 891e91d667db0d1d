"""Training of the embedded digit classifiers (the attack's target and a second family for transfer).

The network is a plain timm module built by :func:`lit_sdo.models.networks.build_network` from the
``architecture`` name and its keyword arguments; this module only runs cross-entropy training with
label smoothing, logs accuracy, and exports the weights + the conventions the loader needs
(input range, mean/std, size) so :func:`lit_sdo.models.load_classifier` rebuilds it exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_sdo.io import write_json, write_tensors
from lit_sdo.models.networks import build_network

# The data modules (digits, photo crops) yield images in [-1, 1] = ([0, 1] - 0.5) / 0.5: the loader records this.
DIGITS_MEAN, DIGITS_STD = (0.5,), (0.5,)


class ClassifierTrainingModule(L.LightningModule):
    """Cross-entropy training of a small image classifier on images in [-1, 1].

    Args:
        architecture: network family, one of ``lit_sdo.models.networks.ARCHITECTURES``.
        network: keyword arguments of the family's builder (channels, depths...).
        num_classes: number of classes.
        input_size: side of the square input images (recorded for the loader).
        lr: AdamW learning rate (cosine-annealed to 0 over ``max_epochs``).
        weight_decay: AdamW weight decay.
        label_smoothing: cross-entropy label smoothing.
        export_dir: folder to write ``model.safetensors`` + ``config.json`` into at the end of ``fit``.
    """

    def __init__(self, architecture: str, network: dict[str, Any] | None = None, num_classes: int = 10,
                 input_size: int = 16, lr: float = 3e-3, weight_decay: float = 0.05, label_smoothing: float = 0.1,
                 export_dir: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.network = build_network(architecture, num_classes=num_classes, **(network or {}))

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)  # (B, num_classes)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0)
        accuracy = (logits.argmax(1) == labels).float().mean()
        self.log(f"{stage}/loss", loss, prog_bar=stage != "train", batch_size=len(labels))
        self.log(f"{stage}/accuracy", accuracy, prog_bar=True, batch_size=len(labels))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        epochs = self.trainer.max_epochs if self.trainer and self.trainer.max_epochs else 1
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
        return {"optimizer": optimizer, "lr_scheduler": cosine}

    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            network = self.hparams.network or {}
            export_classifier(self.network, self.hparams.export_dir, self.hparams.architecture, network,
                              num_classes=self.hparams.num_classes, input_size=self.hparams.input_size,
                              channels=network.get("in_chans", 1))


def export_classifier(network: nn.Module, folder: str | Path, architecture: str, network_kwargs: dict[str, Any], *,
                      num_classes: int, input_size: int, channels: int = 1) -> Path:
    """Write ``model.safetensors`` and a ``config.json`` with the architecture and input conventions."""
    folder = Path(folder)
    write_tensors(folder / "model.safetensors", network.state_dict())
    write_json(folder / "config.json", {
        "kind": "lit_sdo_classifier",
        "architecture": architecture,
        "network": dict(network_kwargs),
        "num_classes": num_classes,
        "input_size": input_size,
        "channels": channels,
        "mean": list(DIGITS_MEAN) * channels,  # the network sees (x - mean) / std for x in [0, 1]
        "std": list(DIGITS_STD) * channels,
    })
    return folder
