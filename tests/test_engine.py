"""The latent-optimisation engine on tiny random models: only open samples are stepped, a success is counted
among clean-correct samples everywhere, ranks merge when one of them stepped nothing, records keep their kinds.

Bit for bit, by construction: a step that closes no sample runs the same operations on the same shapes as
before; the tracker's bookkeeping (flags and copies, no arithmetic). With a tolerance: ``stop_at_success``
against a run without it. Open samples then run in smaller batches, and float32 convolutions / GEMMs may round
differently for another batch shape (measured on this repository's CPU: 7.9e-9 on an open sample's δ after six
SGD steps; sign steps hid it): δ is compared at 1e-6 (far below the step sizes 0.05), image numbers at 1e-5,
predictions and success flags exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_classifier, tiny_generator
from torch import Tensor

from lit_sdo.datamodules import LabelSeedDataModule
from lit_sdo.images import to_unit_range
from lit_sdo.models.sampler import Sampler, SamplerSpec
from lit_sdo.objectives import Batch, ClassifierObjective, Objective
from lit_sdo.optim import BestTracker
from lit_sdo.records import SampleRecords
from lit_sdo.sampling.edict import doodl_pair
from lit_sdo.tasks.engine import LatentEngine
from lit_sdo.tasks.latent import LatentOptimizationModule

DELTA_TOLERANCE = 1e-6  # float32 rounding of smaller batches (see the module docstring)
STEPS = 6


class Brightness(Objective):
    """No goal: pull the mean brightness towards 0.8 (every step can still improve it)."""

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        return (images.mean((1, 2, 3)) - 0.8).abs()


class ReachedFromTheStart(Brightness):
    """A goal reached by the samples with seed >= 2 whatever their image: they close at their first step."""

    def evaluate(self, images: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        return self(images, batch), batch["seed"] >= 2


def tiny_sampler() -> Sampler:
    return Sampler(SamplerSpec(model="tiny-ddpm", num_steps=4), model=tiny_generator())


def whole_batch(sampler: Sampler, n: int) -> tuple[Batch, Tensor, Tensor | None]:
    labels, seeds = torch.arange(n) % 3, torch.arange(n)
    cond = sampler.condition(labels)
    return {"index": torch.arange(n), "label": labels, "seed": seeds}, sampler.start_latent(cond, seeds=seeds), cond


def run_attack(tmp_path: Path, stop: bool, lr: float = 0.05, **objective: object
               ) -> tuple[LatentOptimizationModule, list[dict]]:
    """A tiny attack: 12 samples in batches of 6, ce loss with sign steps (moves on random models)."""
    module = LatentOptimizationModule(SamplerSpec(model="tiny-ddpm", num_steps=4),
                                      ClassifierObjective(tiny_classifier(), loss="ce", **objective), eps=0.3,
                                      optimizer="sign", lr=lr, output_dir=str(tmp_path / "out"),
                                      stop_at_success=stop)
    L.Trainer(accelerator="cpu", devices=1, max_epochs=STEPS, default_root_dir=tmp_path, logger=False,
              enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False
              ).fit(module, datamodule=LabelSeedDataModule(num_classes=3, per_class=4, batch_size=6))
    return module, json.loads((tmp_path / "out" / "results.json").read_text())["samples"]


@pytest.mark.usefixtures("tiny_models")
def test_stop_at_success_keeps_the_successes_their_delta_and_records_and_steps_less(tmp_path: Path) -> None:
    stopped, stopped_rows = run_attack(tmp_path / "stop", stop=True)
    full, full_rows = run_attack(tmp_path / "full", stop=False)
    fooled = full.engine.tracker.succeeded
    assert torch.equal(stopped.engine.tracker.succeeded, fooled)
    steps = stopped.engine.optim.steps  # a sample fooled at step s was stepped s + 1 times, then never again
    assert (full.engine.optim.steps == STEPS).all() and (steps[~fooled] == STEPS).all()
    assert (steps[fooled] < STEPS).all()
    first_batch = torch.arange(12) < 6  # a success decided in a batch some samples had already left:
    late = [(steps[fooled & part] > steps[fooled & part].min()).any() for part in (first_batch, ~first_batch)]
    assert any(late), "no sample succeeded after another closed: the smaller-batch path was not exercised"
    torch.testing.assert_close(stopped.engine.tracker.best[fooled], full.engine.tracker.best[fooled],
                               rtol=0, atol=DELTA_TOLERANCE)
    for a, b in zip(stopped_rows, full_rows, strict=True):
        if not fooled[a["index"]]:
            continue
        assert {k: v for k, v in a.items() if isinstance(v, (int, bool))} == {
            k: v for k, v in b.items() if isinstance(v, (int, bool))}
        assert a == pytest.approx(b, abs=1e-5)


def test_a_closed_sample_is_never_sampled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = tiny_sampler()
    batch, x_start, cond = whole_batch(sampler, 4)
    engine = LatentEngine(sampler, ReachedFromTheStart(), 4, eps=0.1, optimizer="sign", lr=0.05)
    sampled: list[list[int]] = []
    generate = sampler.loss_images
    monkeypatch.setattr(sampler, "loss_images", lambda x, c, **k: sampled.append(len(x)) or generate(x, c, **k))
    first = engine.step(batch, x_start, cond, policy_key=0)
    second = engine.step(batch, x_start, cond, policy_key=1)
    assert sampled == [4, 2]  # seeds 2, 3 reached the goal at the first step
    assert first.stepped.tolist() == [True] * 4 and second.stepped.tolist() == [True, True, False, False]
    assert engine.optim.steps.tolist() == [2, 2, 1, 1]
    torch.testing.assert_close(second.loss[2:], first.loss[2:], rtol=0, atol=0)  # the loss at the first success
    assert second.success.tolist() == [False, False, True, True]
    engine.tracker.succeeded[:] = True
    done = engine.step(batch, x_start, cond, policy_key=2)
    assert sampled == [4, 2] and not done.stepped.any() and done.success is not None  # no work, still logged


@pytest.mark.parametrize("images", ["both", "first"])
def test_doodl_steps_on_the_mean_loss_of_both_edict_images(images: str) -> None:
    """DOODL's loss is the mean over its two EDICT images x₀ and y₀ (``first``: x₀ only); the reference calls
    the EDICT chain itself. Float32, the same model calls: only the loss's reduction order differs (1e-5)."""
    sampler = Sampler(SamplerSpec(model="tiny-ddpm", num_steps=4, policy=f"doodl-images={images}"),
                      model=tiny_generator())
    batch, x_start, cond = whole_batch(sampler, 3)
    engine = LatentEngine(sampler, Brightness(), 3, optimizer="sgd", lr=0.5)
    engine.step(batch, x_start, cond)
    x = x_start.clone().requires_grad_()
    x0, y0 = doodl_pair(sampler.denoiser, sampler.scheduler, x, cond)
    losses = [Brightness()(to_unit_range(z), batch) for z in ((x0, y0) if images == "both" else (x0,))]
    (grad,) = torch.autograd.grad(sum(losses).sum() / len(losses), x)
    assert grad.abs().max() > 0
    torch.testing.assert_close(engine.delta.data, -0.5 * grad, rtol=1e-5, atol=1e-8)


def test_objectives_without_a_goal_step_every_sample_and_report_no_success() -> None:
    sampler = tiny_sampler()
    batch, x_start, cond = whole_batch(sampler, 3)
    engine = LatentEngine(sampler, Brightness(), 3, optimizer="adam", lr=0.05)
    for step in range(2):
        result = engine.step(batch, x_start, cond, policy_key=step)
        assert result.stepped.all() and result.success is None and result.counted is None
    assert engine.optim.steps.tolist() == [2, 2, 2]


@pytest.mark.usefixtures("tiny_models")
def test_success_counts_clean_correct_samples_in_the_tracker_and_the_report_alike(tmp_path: Path) -> None:
    """A targeted attack: a sample whose clean image is misread as another class than its target, then pushed
    to the target, counts nowhere (it was counted by the training log before, not by the report)."""
    module, rows = run_attack(tmp_path, stop=True, lr=0.1, targeted=True)
    tracker = module.engine.tracker
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


def test_ranks_merge_after_a_step_in_which_one_rank_stepped_nothing() -> None:
    """Rank 0 owns samples 0, 1 (open), rank 1 samples 2, 3 (closed at their first step): after rank 0's second
    step both ranks hold every sample's state, each row from its owner."""
    sampler = tiny_sampler()
    batch, x_start, cond = whole_batch(sampler, 4)
    ranks = [LatentEngine(sampler, ReachedFromTheStart(), 4, lr=0.05) for _ in range(2)]
    owned = [torch.tensor([True, True, False, False]), torch.tensor([False, False, True, True])]

    def merge_all() -> None:
        snapshots = [{n: t.clone() for n, t in engine.state().items()} for engine in ranks]
        for engine in ranks:
            names = {t.data_ptr(): n for n, t in engine.state().items()}
            engine.merge_across_ranks(lambda t, names=names: torch.stack([s[names[t.data_ptr()]] for s in snapshots]))

    for step in range(2):
        for engine, mine in zip(ranks, owned, strict=True):
            keep = mine.nonzero().flatten()
            engine.step({k: v[keep] for k, v in batch.items()}, x_start[keep], cond[keep], policy_key=step)
        merge_all()
    assert ranks[0].optim.steps.tolist() == ranks[1].optim.steps.tolist() == [2, 2, 1, 1]
    for name, value in ranks[0].state().items():
        assert torch.equal(ranks[1].state()[name], value), name
    assert ranks[0].tracker.succeeded.tolist() == [False, False, True, True]
    assert ranks[0].delta[:2].abs().amax() > 0 and ranks[1].delta[2:].abs().amax() > 0


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
