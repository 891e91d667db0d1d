"""Training sets: scikit-learn's digits (the embedded default) and a folder of images.

Digits are 8×8 with 17 grey levels; they are upsampled (bilinear) to ``image_size`` (16 by default:
the smallest size at which a two-level UNet and a ResNet stem have room to work, while a full
attack of 30×30 sampler steps still runs in seconds on 2 CPU cores; 32 costs 4× for no new detail).
Images are scaled to [-1, 1] (the diffusion models' range); splits are fixed by ``seed``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

DIGITS_CLASSES = 10


def load_digits_tensors(image_size: int = 16) -> tuple[Tensor, Tensor]:
    """All 1,797 digits as images (N, 1, S, S) in [-1, 1] and labels (N,)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1, torch.tensor(data.target, dtype=torch.long)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed train/val/test index split of ``n`` items by ``seed``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def check_model_classes(datamodule: L.LightningDataModule, classes: str) -> None:
    """One-line error when the module being trained on ``datamodule`` expects another class count.

    A label the model has no row for fails deep inside an embedding or the loss, and a class the model
    keeps but never sees makes its export claim a class it cannot draw; ``classes`` says what the data's
    classes are. Nothing is checked outside a Trainer or for a module without ``num_classes``.
    """
    trainer = getattr(datamodule, "trainer", None)
    module = trainer.lightning_module if trainer is not None else None
    expected = getattr(module, "hparams", {}).get("num_classes")
    if expected is not None and expected != datamodule.num_classes:
        raise ValueError(f"the model is trained for num_classes={expected} but the data has {datamodule.num_classes} "
                         f"classes ({classes}); give the data {expected} classes or set the model's num_classes to "
                         f"{datamodule.num_classes}")


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn digits resized to ``image_size``, in [-1, 1], with labels; splits fixed by seed.

    Args:
        image_size: side length of the square images.
        batch_size: batch size of every loader.
        val_fraction: share of the 1,797 images held out for validation.
        test_fraction: share held out for testing (FID reference, classifier accuracy).
        seed: seed of the split (not of training).
        augment: random ±1-pixel shifts in training (classifiers only; keep off for diffusion).
        num_workers: DataLoader workers.
    """

    def __init__(self, image_size: int = 16, batch_size: int = 128, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, seed: int = 0, augment: bool = False, num_workers: int = 0) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"image_size={image_size} must be >= 8 (the digits are 8×8)")
        if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction={val_fraction}, test_fraction={test_fraction} must leave a training set")
        self.save_hyperparameters()
        self.image_size, self.batch_size, self.augment, self.num_workers = image_size, batch_size, augment, num_workers
        self.num_classes = DIGITS_CLASSES
        self.class_names = [str(c) for c in range(DIGITS_CLASSES)]
        self._splits: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        check_model_classes(self, "the digits 0-9")
        if self._splits:
            return
        images, labels = load_digits_tensors(self.image_size)
        full = TensorDataset(images, labels)
        train, val, test = split_indices(len(full), self.hparams.val_fraction, self.hparams.test_fraction,
                                         self.hparams.seed)
        self._splits = {"train": Subset(full, train.tolist()), "val": Subset(full, val.tolist()),
                        "test": Subset(full, test.tolist())}

    def split(self, name: str) -> Dataset:
        """The ``train``, ``val`` or ``test`` split (after ``setup``)."""
        self.setup()
        return self._splits[name]

    def split_tensors(self, name: str) -> tuple[Tensor, Tensor]:
        """A whole split as (images, labels) tensors."""
        subset = self.split(name)
        images, labels = subset.dataset.tensors  # type: ignore[attr-defined]
        idx = torch.tensor(subset.indices)  # type: ignore[attr-defined]
        return images[idx], labels[idx]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.split(name), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=self._collate if shuffle else None,
                          drop_last=False)

    def _collate(self, batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        images = torch.stack([b[0] for b in batch])
        labels = torch.stack([b[1] for b in batch])
        if self.augment:
            shifts = torch.randint(-1, 2, (2,)).tolist()
            images = torch.roll(images, shifts=shifts, dims=(2, 3))
        return images, labels

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class ImageFolderDataModule(L.LightningDataModule):
    """A folder of images (ImageFolder layout: one sub-folder per class) resized to ``image_size``, in [-1, 1].

    Args:
        root: folder with one sub-folder per class.
        image_size: side length after resize + center crop.
        channels: 1 (grey) or 3 (RGB).
        batch_size: batch size of every loader.
        val_fraction: share held out for validation.
        seed: seed of the split.
        num_workers: DataLoader workers.
    """

    def __init__(self, root: str, image_size: int = 64, channels: int = 3, batch_size: int = 32,
                 val_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        if not Path(root).is_dir():
            raise FileNotFoundError(f"image folder root={root!r} does not exist; pass a folder of class sub-folders")
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 or 3")
        self.save_hyperparameters()
        self._splits: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        from torchvision import datasets, transforms

        hp = self.hparams
        tf = transforms.Compose([
            transforms.Grayscale(1) if hp.channels == 1 else transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize(hp.image_size),
            transforms.CenterCrop(hp.image_size),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * hp.channels, [0.5] * hp.channels),
        ])
        full = datasets.ImageFolder(hp.root, transform=tf)
        if len(full) == 0:
            raise ValueError(f"image folder {hp.root!r} holds no images")
        self.num_classes, self.class_names = len(full.classes), list(full.classes)
        check_model_classes(self, f"the sub-folders of {hp.root}")
        train, val, _ = split_indices(len(full), hp.val_fraction, 0.0, hp.seed) if hp.val_fraction else (
            torch.arange(len(full)), torch.arange(0), None)
        self._splits = {"train": Subset(full, train.tolist()), "val": Subset(full, val.tolist())}

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self._splits["train"], batch_size=self.hparams.batch_size, shuffle=True,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self._splits["val"], batch_size=self.hparams.batch_size,
                          num_workers=self.hparams.num_workers)


def digits_test_tensors(image_size: int = 16) -> tuple[Tensor, Tensor]:
    """The test split of ``DigitsDataModule(image_size, seed=0)`` (same fractions), without building a module.

    A LightningDataModule built inside another one's ``__init__`` confuses ``save_hyperparameters``.
    """
    images, labels = load_digits_tensors(image_size)
    _, _, test = split_indices(len(images), 0.1, 0.2, 0)
    return images[test], labels[test]
