"""LightningDataModules: scikit-learn's digits (the embedded default) and a folder of images.

Digits are 8×8 with 17 grey levels; they are upsampled (bilinear) to ``image_size`` (16 by default:
the smallest size at which a two-level UNet and a ResNet stem have room to work, while a full
attack of 30×30 sampler steps still runs in seconds on 2 CPU cores; 32 costs 4× for no new detail).
Images are scaled to [-1, 1] (the diffusion models' range); splits are fixed by ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

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
        self._splits: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
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
        self.num_classes = len(full.classes)
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


class LabelSeedDataset(Dataset):
    """(index, class label, seed) triples: a generated sample is fully named by its label and seed."""

    def __init__(self, labels: list[int], seeds: list[int]) -> None:
        self.labels, self.seeds = labels, seeds

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"index": torch.tensor(index), "label": torch.tensor(self.labels[index]),
                "seed": torch.tensor(self.seeds[index])}


class SampleSetDataModule(L.LightningDataModule):
    """A fixed, ordered set of samples to optimise (``self.dataset``), served unshuffled in ``batch_size`` batches.

    The base of every latent-optimisation data module: each item carries its ``index``, which is the row of
    its δ, so the order must never change between steps, runs or ranks.
    """

    dataset: Dataset
    batch_size: int

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def _loader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()


class LabelSeedDataModule(SampleSetDataModule):
    """The samples a latent-optimisation task works on: ``per_class`` seeds for each class in ``classes``.

    The same (label, seed) regenerates the same x_T on any machine and any DDP rank, so the dataset is
    the whole description of the experiment. Item j (classes cycle fastest) gets seed ``seed + j``.

    Args:
        classes: class labels to generate (default: 0 .. num_classes-1).
        num_classes: number of classes of the generator (used when ``classes`` is not given).
        per_class: samples per class.
        seed: first seed.
        batch_size: samples optimised together in one step.
    """

    def __init__(self, classes: list[int] | None = None, num_classes: int = 10, per_class: int = 10, seed: int = 0,
                 batch_size: int = 100) -> None:
        super().__init__()
        classes = list(range(num_classes)) if classes is None else list(classes)
        if not classes or per_class < 1 or batch_size < 1:
            raise ValueError(f"need classes, per_class >= 1 and batch_size >= 1 (got {classes}, {per_class}, "
                             f"{batch_size})")
        if min(classes) < 0:
            raise ValueError(f"class labels must be >= 0, got {min(classes)}")
        self.classes, self.batch_size = classes, batch_size
        labels = [c for _ in range(per_class) for c in classes]
        seeds = [seed + i for i in range(len(labels))]
        self.dataset = LabelSeedDataset(labels, seeds)


class ConditionIndexDataset(Dataset):
    """Positions 0..n-1 of one optimisation step's samples; the task turns (epoch, position) into a
    condition and a noise seed, so every step sees fresh noise without the dataset knowing the epoch."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"index": torch.tensor(index)}


class RewardPromptDataModule(L.LightningDataModule):
    """Conditions for reward fine-tuning (paper Sec. 5.3): class labels or a prompt list, cycled.

    One Lightning epoch is ONE optimisation step of ``samples_per_step`` samples (split into
    ``batch_size`` micro-batches over the accumulation and the DDP ranks), so ``trainer.max_epochs`` is
    the number of optimiser steps and a checkpoint per epoch resumes exactly. Sample j of step e
    (global number g = e·samples_per_step + j) gets condition g mod (number of conditions) and noise
    seed ``seed + g``: the same on every rank and after a resume.

    Args:
        classes: class labels for class-conditional models, or a text file of labels (one a line, ``#``
            comments allowed, e.g. data/prompts/digits.txt); default 0..num_classes-1 when no prompts.
        num_classes: number of classes of the generator (when ``classes`` is not given).
        prompts: a text file with one prompt per line (text models), e.g. data/prompts/animals45.txt.
        samples_per_step: samples per optimiser step over all ranks (paper: 16 × accumulation 4 = 64).
        batch_size: samples per micro-batch on one rank.
        seed: first noise seed.
    """

    def __init__(self, classes: list[int] | str | None = None, num_classes: int = 10, prompts: str | None = None,
                 samples_per_step: int = 64, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        if samples_per_step < 1 or batch_size < 1:
            raise ValueError(f"samples_per_step={samples_per_step} and batch_size={batch_size} must be >= 1")
        if samples_per_step % batch_size:
            raise ValueError(f"samples_per_step={samples_per_step} is not a multiple of batch_size={batch_size}; "
                             "pick values where batch_size divides samples_per_step")
        self.prompts = None if prompts is None else read_lines(prompts, "prompt")
        if isinstance(classes, str):
            try:
                classes = [int(line.split("#")[0]) for line in read_lines(classes, "class")]
            except ValueError:
                raise ValueError(f"class file {classes} must hold one integer label a line") from None
        self.classes = None if self.prompts is not None else (
            list(range(num_classes)) if classes is None else list(classes))
        if self.classes is not None and (not self.classes or min(self.classes) < 0):
            raise ValueError(f"classes={self.classes} must be a non-empty list of labels >= 0")
        self.samples_per_step, self.batch_size, self.seed = samples_per_step, batch_size, seed
        self.dataset = ConditionIndexDataset(samples_per_step)

    @property
    def num_conditions(self) -> int:
        return len(self.prompts) if self.prompts is not None else len(self.classes)  # type: ignore[arg-type]

    def conditions(self, epoch: int, index: Tensor) -> tuple[Tensor, Tensor]:
        """(condition position (B,), noise seed (B,)) of the samples at ``index`` in step ``epoch``."""
        global_index = epoch * self.samples_per_step + index.long()
        return global_index % self.num_conditions, self.seed + global_index

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = BlockSampler(self.dataset, num_replicas=world, rank=rank)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler)


class BlockSampler(DistributedSampler):
    """Rank r takes the r-th contiguous block of the step's samples (not every W-th sample), so the
    micro-batches of W ranks are exactly the micro-batches one device accumulates: same samples, same
    policy draws, same gradient. A DistributedSampler subclass, so Lightning does not re-wrap it."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        if len(dataset) % num_replicas:
            raise ValueError(f"samples_per_step={len(dataset)} is not divisible by the {num_replicas} devices")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self) -> Iterator[int]:
        block = len(self.dataset) // self.num_replicas
        return iter(range(self.rank * block, (self.rank + 1) * block))

    def __len__(self) -> int:
        return len(self.dataset) // self.num_replicas


def read_lines(path: str, what: str) -> list[str]:
    """Non-empty stripped lines of a text file; relative paths are tried from the cwd, then the repository."""
    candidate = Path(path)
    if not candidate.is_file() and not candidate.is_absolute():
        candidate = Path(__file__).resolve().parents[1] / path
    if not candidate.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; pass a text file, one {what} a line "
                                "(see data/prompts/)")
    lines = [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{what} file {path} is empty")
    return lines


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def digits_test_tensors(image_size: int = 16) -> tuple[Tensor, Tensor]:
    """The test split of ``DigitsDataModule(image_size, seed=0)`` (same fractions), without building a module.

    A LightningDataModule built inside another one's ``__init__`` confuses ``save_hyperparameters``.
    """
    images, labels = load_digits_tensors(image_size)
    _, _, test = split_indices(len(images), 0.1, 0.2, 0)
    return images[test], labels[test]


class ReferenceImageDataset(Dataset):
    """(index, seed, label, reference image in [-1, 1], prompt) items for guided editing of real images."""

    def __init__(self, images: Tensor, labels: list[int], prompts: list[str], seed: int) -> None:
        self.images, self.labels, self.prompts, self.seed = images, labels, prompts, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"index": torch.tensor(index), "seed": torch.tensor(self.seed + index),
                "label": torch.tensor(self.labels[index]), "image": self.images[index], "prompt": self.prompts[index]}


class ReferenceImageDataModule(SampleSetDataModule):
    """Real images to edit (paper Sec. 5.1: DDIM-inverted, then guided), each with a prompt.

    Sources: ``digits`` (the first ``num_samples`` images of the digits test split, seed 0, with their
    labels, so label preservation can be scored), photographs that scikit-image ships offline
    (``skimage:lfw_subset`` for its 200 small faces, ``skimage:astronaut,chelsea,coffee`` for named ones;
    label -1), or a folder of image files (label -1).

    Args:
        source: ``digits``, ``skimage:<names>`` or a folder of .png/.jpg files (sorted by name).
        num_samples: how many images (all of a folder when None).
        prompts: one per image, cycled; None uses ``prompt_template``.
        prompt_template: ``{name}`` / ``{label}`` become the digit's name / label.
        image_size: side the images are resized to (a folder image of another size is resized with a
            warning); None keeps a folder's native size (the task refuses a size the generator does not make).
        channels: 1 (grey) or 3 (RGB).
        seed: first per-sample seed (sample j gets ``seed + j``).
        batch_size: samples optimised together.
    """

    def __init__(self, source: str = "digits", num_samples: int | None = 20, prompts: list[str] | None = None,
                 prompt_template: str = "a thick digit {name}", image_size: int | None = 16, channels: int = 1,
                 seed: int = 0, batch_size: int = 20) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 or 3")
        if num_samples is not None and num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
        if source == "digits":
            images, labels = digits_test_tensors(image_size or 16)
            images, labels = images[:num_samples], labels[:num_samples].tolist()
            if channels == 3:
                images = images.expand(-1, 3, -1, -1).contiguous()
        elif source.startswith(SKIMAGE_PREFIX):
            images = skimage_photos(source[len(SKIMAGE_PREFIX):], num_samples, image_size, channels)
            labels = [-1] * len(images)
        else:
            images = self._read_folder(Path(source), num_samples, image_size, channels)
            labels = [-1] * len(images)
        if prompts:
            texts = [prompts[i % len(prompts)] for i in range(len(images))]
        else:
            texts = [prompt_template.format(name=DIGIT_NAMES[y] if 0 <= y < 10 else "", label=y) for y in labels]
        self.batch_size = batch_size
        self.dataset = ReferenceImageDataset(images, labels, texts, seed)

    @staticmethod
    def _read_folder(folder: Path, num_samples: int | None, image_size: int | None, channels: int) -> Tensor:
        import warnings

        from PIL import Image

        if not folder.is_dir():
            raise FileNotFoundError(f"reference image source {str(folder)!r} is neither 'digits', 'skimage:<names>' "
                                    "nor an existing folder of images; pass data.init_args.source=<folder>")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:num_samples]
        if not files:
            raise FileNotFoundError(f"reference folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        out = []
        for path in files:
            image = Image.open(path).convert("L" if channels == 1 else "RGB")
            if image_size is not None and image.size != (image_size, image_size):
                warnings.warn(f"reference {path.name} is {image.width}×{image.height}: resized to "
                              f"{image_size}×{image_size}", stacklevel=3)
                image = image.resize((image_size, image_size), Image.BICUBIC)
            array = torch.tensor(list(image.getdata()), dtype=torch.float32).view(image.height, image.width, -1)
            out.append(array.permute(2, 0, 1) / 127.5 - 1)  # (C, H, W) in [-1, 1]
        if len({tuple(t.shape) for t in out}) > 1:
            raise ValueError(f"reference images in {folder} differ in size; set data.init_args.image_size to resize")
        return torch.stack(out)


SKIMAGE_PREFIX = "skimage:"


def skimage_photos(names: str, num_samples: int | None, image_size: int | None, channels: int) -> Tensor:
    """Photographs bundled with scikit-image (no download), centre-cropped to squares, in [-1, 1].

    ``names`` is ``lfw_subset`` (200 grey 25×25 faces) or comma-separated ``skimage.data`` images
    (``astronaut``, ``chelsea``, ``coffee``, ``camera``, ...). A photo is resized to ``image_size``
    (no warning: photographs never come at the generator's size); None needs them all the same size.
    """
    try:
        from skimage import data
    except ImportError:
        raise ModuleNotFoundError("source skimage:... needs scikit-image: pip install 'lit_sdo[photos]'") from None
    if names == "lfw_subset":
        arrays = list(data.lfw_subset()[:num_samples])  # float in [0, 1]
    else:
        arrays = []
        for name in names.split(",")[:num_samples]:
            loader = getattr(data, name.strip(), None)
            if loader is None or not callable(loader):
                raise ValueError(f"skimage.data has no image {name.strip()!r}; try astronaut, chelsea, coffee, camera "
                                 "or lfw_subset")
            arrays.append(loader())
    out = []
    for array in arrays:
        image = torch.as_tensor(array, dtype=torch.float32)
        image = image / 255.0 if image.max() > 1.0 else image
        image = image.unsqueeze(-1) if image.dim() == 2 else image[..., :3]
        image = image.permute(2, 0, 1)  # (C, H, W) in [0, 1]
        image = image.mean(0, keepdim=True) if channels == 1 else image.expand(3, -1, -1)
        side = min(image.shape[-2:])
        top, left = (image.shape[-2] - side) // 2, (image.shape[-1] - side) // 2
        image = image[:, top:top + side, left:left + side]
        if image_size is not None and side != image_size:
            image = F.interpolate(image[None], size=(image_size, image_size), mode="bicubic", antialias=True,
                                  align_corners=False)[0]
        out.append(image.clamp(0, 1) * 2 - 1)
    if len({tuple(t.shape) for t in out}) > 1:
        raise ValueError(f"skimage photos {names} differ in size; set data.init_args.image_size to resize")
    return torch.stack(out)


class PromptSeedDataset(Dataset):
    """(index, seed, label −1, prompt) items: a generated sample of a text model is named by its prompt and seed."""

    def __init__(self, prompts: list[str], seeds: list[int]) -> None:
        self.prompts, self.seeds, self.labels = prompts, seeds, [-1] * len(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, object]:
        return {"index": torch.tensor(index), "seed": torch.tensor(self.seeds[index]), "label": torch.tensor(-1),
                "prompt": self.prompts[index]}


class PromptSeedDataModule(SampleSetDataModule):
    """Prompts × seeds for guided generation with text-conditioned generators (style on LCM, aesthetic on SD).

    Args:
        prompts: the prompts; each gets ``per_prompt`` seeds (item j has seed ``seed + j``).
        per_prompt: samples per prompt.
        seed: first seed.
        batch_size: samples optimised together.
    """

    def __init__(self, prompts: list[str], per_prompt: int = 1, seed: int = 0, batch_size: int = 4) -> None:
        super().__init__()
        if not prompts or per_prompt < 1 or batch_size < 1:
            raise ValueError(f"need prompts, per_prompt >= 1 and batch_size >= 1 (got {prompts!r}, {per_prompt}, "
                             f"{batch_size})")
        texts = [p for _ in range(per_prompt) for p in prompts]
        self.batch_size = batch_size
        self.dataset = PromptSeedDataset(texts, [seed + j for j in range(len(texts))])
