"""The success of an attack, counted among clean-correct samples by the best-δ tracker and the report alike;
records keep their order and kinds.

Bit for bit, by construction: the tracker's bookkeeping (flags and copies, no arithmetic).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_classifier

from lit_sdo.datamodules import LabelSeedDataModule
from lit_sdo.models.sampler import SamplerSpec
from lit_sdo.objectives import ClassifierObjective
from lit_sdo.optim import BestTracker
from lit_sdo.records import SampleRecords
from lit_sdo.tasks.latent import LatentOptimizationModule

STEPS = 6


def run_attack(tmp_path: Path, lr: float = 0.05, **objective: object) -> tuple[LatentOptimizationModule, list[dict]]:
    """A tiny attack: 12 samples in batches of 6, ce loss with sign steps (moves on random models)."""
    module = LatentOptimizationModule(SamplerSpec(model="tiny-ddpm", num_steps=4),
                                      ClassifierObjective(tiny_classifier(), loss="ce", **objective), eps=0.3,
                                      optimizer="sign", lr=lr, output_dir=str(tmp_path / "out"))
    L.Trainer(accelerator="cpu", devices=1, max_epochs=STEPS, default_root_dir=tmp_path, logger=False,
              enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
              ).fit(module, datamodule=LabelSeedDataModule(num_classes=3, per_class=4, batch_size=6))
    return module, json.loads((tmp_path / "out" / "results.json").read_text())["samples"]


@pytest.mark.usefixtures("tiny_models")
def test_success_counts_clean_correct_samples_in_the_tracker_and_the_report_alike(tmp_path: Path) -> None:
    """A targeted attack: a sample whose clean image is misread as another class than its target, then pushed
    to the target, counts nowhere (it was counted by the training log before, not by the report)."""
    module, rows = run_attack(tmp_path, lr=0.1, targeted=True)
    tracker = module.tracker
    assert tracker.counted.tolist() == [r["clean_pred"] == r["label"] for r in rows]
    assert tracker.success.tolist() == [r["success"] for r in rows]
    reached_by_a_misread = [r for r in rows if r["clean_pred"] not in (r["label"], r["target"])
                            and r["adv_pred"] == r["target"]]
    assert reached_by_a_misread and not any(r["success"] for r in reached_by_a_misread)


def test_best_tracker_reads_counted_at_the_first_offer_only() -> None:
    tracker = BestTracker((3, 1))
    rows = torch.tensor([0, 1, 2])
    tracker.update(rows, torch.zeros(3, 1), torch.tensor([-1.0, 0.5, 0.5]), torch.tensor([True, False, False]),
                   counted=torch.tensor([False, True, True]))
    tracker.update(rows, torch.ones(3, 1), torch.tensor([-2.0, -1.0, 0.25]), torch.tensor([True, True, False]),
                   counted=torch.tensor([True, False, False]))  # not the first offer: ignored
    assert tracker.counted.tolist() == [False, True, True]
    assert tracker.succeeded.tolist() == [True, True, False]
    assert tracker.success.tolist() == [False, True, False]
    assert tracker.best.flatten().tolist() == [0.0, 1.0, 1.0]  # first success kept; row 2: the lower score
    assert tracker.best_score.tolist() == [-1.0, -1.0, 0.25]


def test_records_keep_their_order_and_kinds() -> None:
    def part(rows: list[int]) -> SampleRecords:
        n = len(rows)
        return SampleRecords(torch.tensor(rows), torch.tensor(rows) % 3, torch.tensor(rows) + 10, torch.rand(n),
                             torch.rand(n, 1, 2, 2), torch.rand(n, 1, 2, 2), {"loss": torch.rand(n),
                             "pred": torch.tensor(rows)}, {"loss": torch.rand(n), "pred": torch.tensor(rows)},
                             {"reference": torch.rand(n, 1, 2, 2)})

    records = SampleRecords.concat([part([2, 0]), part([1])])
    assert records.index.tolist() == [2, 0, 1] and records.after["pred"].dtype == torch.long
    assert list(records.columns()) == ["label", "seed", "delta_linf", "reference", "original", "loss_original",
                                       "pred_original", "optimized", "loss_optimized", "pred_optimized"]
    doubled = records.apply(lambda t: t * 2, index=torch.arange(3))
    assert doubled.index.tolist() == [0, 1, 2] and doubled.seed.tolist() == [24, 20, 22]
