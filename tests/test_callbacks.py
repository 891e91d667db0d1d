"""StepCost and NaNStop on a tiny module of known cost: what autograd saves, per optimiser step."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_sdo.callbacks import NaNStop, SavedTensorMeter, StepCost

DIM, BATCH = 6, 4


class Scaled(L.LightningModule):
    """loss = sum((w·w) * x): autograd saves w twice (a weight: no new memory) and x, nothing else."""

    def __init__(self, loss_nan_at: int | None = None, grad_nan_at: int | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(DIM))
        self.loss_nan_at, self.grad_nan_at = loss_nan_at, grad_nan_at

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = ((self.w * self.w) * batch).sum()
        if self.global_step == self.loss_nan_at:
            loss = loss * float("nan")
        if self.global_step == self.grad_nan_at:  # finite loss (0), non-finite gradient (0 · ∞)
            loss = loss + torch.sqrt(self.w * 0).sum()
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RebuiltInBackward(torch.autograd.Function):
    """y = x, saving nothing in forward; backward rebuilds a graph of REPEAT copies of x, as AdjointDPM and
    DOODL rebuild one step's graph inside their backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.x = x.detach()  # an attribute, not save_for_backward: nothing autograd counts
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = ctx.x.requires_grad_()
            big = x.repeat(REPEAT, 1)  # saved twice by the product below: counted once
            (rebuilt,) = torch.autograd.grad((big * big).sum() / (2 * REPEAT), x)
        return grad * rebuilt / x


REPEAT = 10


class Recomputing(Scaled):
    """loss = sum(f(w * x)) with f's graph rebuilt in backward: forward saves x, backward REPEAT·x more."""

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return RebuiltInBackward.apply(self.w * batch).sum()


def batches(sizes: list[int]) -> DataLoader:
    data = [torch.rand(n, DIM, generator=torch.Generator().manual_seed(i)) for i, n in enumerate(sizes)]
    return DataLoader(data, batch_size=None)


def fit(module: L.LightningModule, sizes: list[int], callbacks: list[L.Callback], tmp_path: Path,
        accumulate: int = 1, epochs: int = 1) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, accumulate_grad_batches=accumulate, logger=False,
                        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, enable_checkpointing=any(
                            isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks))
    trainer.fit(module, train_dataloaders=batches(sizes))
    return trainer


def test_step_cost_counts_the_non_weight_tensors_saved_per_optimiser_step(tmp_path: Path) -> None:
    cost = StepCost()
    fit(Scaled(), [2, 5, 3, 1], [cost], tmp_path, accumulate=2)  # two optimiser steps of two micro-batches
    assert [row["step"] for row in cost.rows] == [1, 2]
    # the largest micro-batch of each step: x of 5 rows, then of 3 rows (float32, 4 bytes)
    assert [row["peak_bytes"] for row in cost.rows] == [5 * DIM * 4, 3 * DIM * 4]
    assert 0 < cost.rows[0]["seconds"] < cost.rows[1]["seconds"]
    assert 0 <= cost.rows[0]["cpu_seconds"] <= cost.rows[1]["cpu_seconds"]
    assert cost.mean_seconds() == pytest.approx(cost.rows[1]["seconds"] / 2)


def test_step_cost_counts_the_graphs_a_backward_rebuilds(tmp_path: Path) -> None:
    cost = StepCost()
    module = Recomputing()
    fit(module, [3], [cost], tmp_path)
    # while the rebuilt graph is held, x (3 rows, kept for w's gradient) and its REPEAT copies are live
    assert cost.rows[0]["peak_bytes"] == (1 + REPEAT) * 3 * DIM * 4
    x = torch.rand(3, DIM, generator=torch.Generator().manual_seed(0))  # the one batch
    assert torch.allclose(module.w.detach(), 1 - 0.1 * x.sum(0))  # f is the identity: d loss / d w = sum of x


def test_saved_tensor_meter_counts_a_freed_graph_at_its_peak_and_a_storage_once() -> None:
    x = torch.ones(1000, requires_grad=True)  # 4000 bytes
    weight = torch.ones(1000)
    meter = SavedTensorMeter(excluded={weight.untyped_storage().data_ptr()})
    with meter.hooks():
        for _ in range(3):  # a graph built and freed three times, as DOODL's backward rebuilds one per step
            (x * x).sum().backward()  # mul saves x twice: one storage, 4000 bytes
        kept = (x * x).sum() + (x * weight).sum()  # a graph still alive: x (4000 bytes), the weight not counted
        assert meter.live == 4000
        kept.backward()
    assert meter.peak == 4000
    assert meter.live == 0


def test_step_cost_keeps_counting_after_a_resume(tmp_path: Path) -> None:
    cost = StepCost()
    fit(Scaled(), [2, 3], [cost], tmp_path)
    resumed = StepCost()
    resumed.load_state_dict(cost.state_dict())
    assert resumed.rows == cost.rows and resumed.mean_seconds() == cost.mean_seconds()


@pytest.mark.parametrize(("kwargs", "what"), [({"loss_nan_at": 2}, r"training loss is nan"),
                                              ({"grad_nan_at": 2}, r"the gradient of w is nan")])
def test_nan_stop_names_the_step_and_leaves_the_weights_of_the_last_good_step(
        tmp_path: Path, kwargs: dict, what: str) -> None:
    module = Scaled(**kwargs)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=1)
    with pytest.raises(FloatingPointError, match=rf"^{what} at optimiser step 2 \(epoch 2\); the run stops without "
                                                 r"updating the weights; last good checkpoint: \S+last.ckpt$"):
        fit(module, [BATCH], [checkpoint, NaNStop()], tmp_path, epochs=5)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2
    assert torch.isfinite(module.w).all()
    torch.testing.assert_close(last["state_dict"]["w"], module.w.detach(), rtol=0, atol=0)
