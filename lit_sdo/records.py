"""Per-sample records of a latent optimisation: one dataclass that the results writer, the results grid and an
objective's report read, with every tensor's dtype kept (no decoding of names).

A record set holds (B, ...) tensors in one sample order: who each sample is (index, label, seed), its images
before (δ = 0) and after (the best δ), every measurement of both, and the images shown beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class SampleRecords:
    """Every evaluated sample of a latent optimisation, (B, ...) tensors in one sample order.

    Attributes:
        index: (B,) row of each sample in the sample set.
        label: (B,) class label, -1 where the data has none.
        seed: (B,) noise seed of each sample's x_T.
        delta_linf: (B,) ‖δ‖∞ of the published (best) δ.
        original: (B, C, H, W) images in [0, 1] at δ = 0.
        optimized: (B, C, H, W) images in [0, 1] at the best δ.
        before: the objective's and the measures' numbers on ``original`` by name (``loss``, ``pred``, ...), each
            (B,) or (B, D).
        after: the same numbers on ``optimized``.
        shown: images shown beside each sample in the grid (``reference``, ``style``), by column name.
    """

    index: Tensor
    label: Tensor
    seed: Tensor
    delta_linf: Tensor
    original: Tensor
    optimized: Tensor
    before: dict[str, Tensor]
    after: dict[str, Tensor]
    shown: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def apply(self, fn: Callable[[Tensor], Tensor], index: Tensor | None = None) -> SampleRecords:
        """The same records with ``fn`` applied to every tensor but ``index`` (which becomes ``index`` when given):
        moving them, or gathering them across ranks into sample order."""
        return SampleRecords(self.index if index is None else index, fn(self.label), fn(self.seed),
                             fn(self.delta_linf), fn(self.original), fn(self.optimized),
                             {k: fn(v) for k, v in self.before.items()}, {k: fn(v) for k, v in self.after.items()},
                             {k: fn(v) for k, v in self.shown.items()})

    @staticmethod
    def concat(parts: list[SampleRecords]) -> SampleRecords:
        """One record set of several batches' (in the order given)."""
        if not parts:
            raise ValueError("no records to concatenate: evaluate at least one batch first")

        def cat(get: Callable[[SampleRecords], Tensor]) -> Tensor:
            return torch.cat([get(part) for part in parts])

        first = parts[0]
        return SampleRecords(cat(lambda r: r.index), cat(lambda r: r.label), cat(lambda r: r.seed),
                             cat(lambda r: r.delta_linf), cat(lambda r: r.original), cat(lambda r: r.optimized),
                             {k: cat(lambda r, k=k: r.before[k]) for k in first.before},
                             {k: cat(lambda r, k=k: r.after[k]) for k in first.after},
                             {k: cat(lambda r, k=k: r.shown[k]) for k in first.shown})

    def columns(self) -> dict[str, Tensor]:
        """Flat named columns in the order results.json lists them: ``label``, ``seed``, ``delta_linf``, the shown
        images, then per image set its images and every measurement with the set's name as suffix (``original``,
        ``loss_original``, ``pred_original``, ..., ``optimized``, ``loss_optimized``, ...): the names of
        :func:`lit_sdo.metrics.attack_report` and of results.json's per-sample rows."""
        columns = {"label": self.label, "seed": self.seed, "delta_linf": self.delta_linf} | self.shown
        for name, images, measured in (("original", self.original, self.before),
                                       ("optimized", self.optimized, self.after)):
            columns[name] = images
            columns |= {f"{key}_{name}": value for key, value in measured.items()}
        return columns
