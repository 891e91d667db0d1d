"""Sample sets: the fixed, ordered samples a latent-optimisation task works on (one δ row each).

(label, seed) pairs for generated samples, real reference images with prompts for editing, and
(prompt, seed) pairs for text-conditioned generators.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lit_sdo.datamodules.images import SKIMAGE_PREFIX, read_image_folder, skimage_photos
from lit_sdo.datamodules.training import digits_test_tensors

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


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

    def fingerprint(self) -> str:
        """sha256 of every sample's identity (seed, label, prompt, reference image): a checkpoint written for
        one sample set must not resume on another."""
        digest = hashlib.sha256()
        for index in range(len(self.dataset)):
            for key, value in sorted(self.dataset[index].items()):
                data = value.numpy().tobytes() if isinstance(value, Tensor) else str(value).encode()
                digest.update(key.encode() + data)
        return digest.hexdigest()

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
        class_names: the name of each label (``class_names[c]``), shown in the results grid; None shows the
            label itself (the digits' names).
    """

    def __init__(self, classes: list[int] | None = None, num_classes: int = 10, per_class: int = 10, seed: int = 0,
                 batch_size: int = 100, class_names: list[str] | None = None) -> None:
        super().__init__()
        classes = list(range(num_classes)) if classes is None else list(classes)
        if not classes or per_class < 1 or batch_size < 1:
            raise ValueError(f"need classes, per_class >= 1 and batch_size >= 1 (got {classes}, {per_class}, "
                             f"{batch_size})")
        if min(classes) < 0:
            raise ValueError(f"class labels must be >= 0, got {min(classes)}")
        if class_names is not None and len(class_names) <= max(classes):
            raise ValueError(f"class_names has {len(class_names)} names but the labels go up to {max(classes)}; "
                             f"give one name per label 0..{max(classes)}")
        self.classes, self.batch_size, self.class_names = classes, batch_size, class_names
        labels = [c for _ in range(per_class) for c in classes]
        seeds = [seed + i for i in range(len(labels))]
        self.dataset = LabelSeedDataset(labels, seeds)


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
    (``skimage:lfw_subset``: 100 small faces, then 100 non-faces; ``skimage:astronaut,chelsea,coffee`` for
    named ones;
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
            images = read_image_folder(Path(source), num_samples, image_size, channels)
            labels = [-1] * len(images)
        if prompts:
            texts = [prompts[i % len(prompts)] for i in range(len(images))]
        else:
            texts = [prompt_template.format(name=DIGIT_NAMES[y] if 0 <= y < 10 else "", label=y) for y in labels]
        self.batch_size = batch_size
        self.dataset = ReferenceImageDataset(images, labels, texts, seed)


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
