"""Conditions for reward fine-tuning: class labels or prompts, cycled over optimisation steps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler


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
        candidate = Path(__file__).resolve().parents[2] / path
    if not candidate.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; pass a text file, one {what} a line "
                                "(see data/prompts/)")
    lines = [line.strip() for line in candidate.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{what} file {path} is empty")
    return lines
