"""StepCost and NaNStop on a tiny module of known cost (what autograd saves, per optimiser step), and the results
grid a person reads first: enlarged cells, titles, and words taken from the records.

Bit for bit: the checkpointed weight and the restored StepCost rows are copies (no arithmetic in between)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lit_sdo.callbacks import NaNStop, SavedTensorMeter, StepCost, results_grid
from lit_sdo.images import FRAME, FRAME_COLOURS, labelled_grid, to_uint8
from lit_sdo.objectives import Report
from lit_sdo.records import SampleRecords

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


# ----- the results grid -------------------------------------------------------------------------------------


def checkered_cells(rows: int, columns: int, side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns, 3, side, side) cells, each a checkerboard of two colours (rows, columns, 2, 3) that no
    other cell, text or frame has: enlarging by nearest neighbour keeps exactly those two, any blend would not."""
    colours = torch.tensor([[[40 + 20 * r, 60 + 30 * c, 200 + 10 * k] for k in range(2)] for r in range(rows)
                            for c in range(columns)]).view(rows, columns, 2, 3) / 255
    odd = ((torch.arange(side)[:, None] + torch.arange(side)) % 2).bool()  # (side, side)
    cells = torch.where(odd, colours[:, :, 1, :, None, None], colours[:, :, 0, :, None, None])
    return cells, colours


def count_colour(picture: torch.Tensor, colour: torch.Tensor) -> int:
    return int((to_uint8(picture) == to_uint8(colour.view(3, 1, 1))).all(0).sum())


def test_labelled_grid_enlarges_every_cell_with_nearest_and_grows_by_one_row_per_row() -> None:
    def grid(rows: int, frames: list | None = None) -> torch.Tensor:
        return labelled_grid(checkered_cells(rows, 3)[0], ["clean", "adversarial", "|difference| x5"],
                             [f"row {r}\nseed {r}" for r in range(rows)], [["a 90%", "b 55%", "L2 0.1"]] * rows,
                             frames=frames)

    one, two, three = grid(1), grid(2), grid(3, frames=[True, False, None])
    assert one.shape[0] == 3 and one.shape[2] == two.shape[2] == three.shape[2]  # rows do not change the width
    assert three.shape[1] - two.shape[1] == two.shape[1] - one.shape[1] > 96  # one row: a cell, its caption, gaps
    assert three.shape[2] > 3 * 96
    colours = checkered_cells(3, 3)[1]
    for r in range(3):
        for c in range(3):  # each 8×8 cell is there once, 12× enlarged to 96×96 by nearest neighbour: no blend
            assert count_colour(three, colours[r, c, 0]) == count_colour(three, colours[r, c, 1]) == 96 * 96 // 2
    green, red = (torch.tensor(FRAME_COLOURS[k]) / 255 for k in (True, False))
    frame = 3 * ((96 + 2 * FRAME) ** 2 - 96 ** 2)  # three framed cells per row
    assert count_colour(three, green) == count_colour(three, red) == frame and count_colour(two, green) == 0
    text = (to_uint8(three) < 100).all(0)  # black ink: the titles, captions and row names
    assert text[:20].any() and text[:, :40].any()


def test_results_grid_names_rows_and_readings_from_the_records_and_the_data_names() -> None:
    records = SampleRecords(torch.arange(3), torch.tensor([2, 0, 1]), torch.tensor([10, 11, 12]), torch.zeros(3),
                            torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8),
                            {"pred": torch.tensor([2, 0, 2]), "confidence": torch.tensor([0.9, 0.81, 0.7])},
                            {"pred": torch.tensor([0, 0, 2]), "confidence": torch.tensor([0.55, 0.6, 0.654])})
    report = Report({}, [{"success": True}, {"success": False}, {"success": False}], "")
    picture, text = results_grid(records, report, 3, ["ant", "bee", "cat"])
    assert text.columns == ["clean", "adversarial", "|difference| x5"]
    assert text.rows == ["cat\nseed 10\nfooled", "ant\nseed 11\nnot fooled", "bee\nseed 12\nclean misread"]
    l2 = (records.optimized - records.original).flatten(1).pow(2).mean(1).sqrt()
    assert text.captions == [["cat 90%", "ant 55%", f"L2 {l2[0]:.3f}"], ["ant 81%", "ant 60%", f"L2 {l2[1]:.3f}"],
                             ["cat 70%", "cat 65%", f"L2 {l2[2]:.3f}"]]
    assert text.frames == [True, False, None]  # the misread clean sample is not counted: no frame
    assert picture.shape[1] > 3 * 96 and picture.shape[2] > 3 * 96  # 16×16 or 8×8 cells enlarged, not 205 px wide
    # other names, fewer rows, no confidences, no success rule: the words follow the inputs
    bare = dataclasses.replace(records, before={"pred": records.before["pred"]}, after={"pred": records.after["pred"]})
    _, other = results_grid(bare, Report({}, [{}, {}, {}], ""), 2, None)
    assert other.columns == ["before", "after", "|difference| x5"] and other.frames == [None, None]
    assert other.rows == ["2\nseed 10", "0\nseed 11"] and [c[:2] for c in other.captions] == [["2", "0"], ["0", "0"]]


@pytest.mark.usefixtures("tiny_models")
def test_the_attack_writes_the_labelled_grid_to_its_png_and_to_tensorboard(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import tiny_classifier
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import lit_sdo.callbacks
    from lit_sdo.datamodules import LabelSeedDataModule
    from lit_sdo.models.sampler import SamplerSpec
    from lit_sdo.objectives import ClassifierObjective
    from lit_sdo.tasks.latent import LatentOptimizationModule

    module = LatentOptimizationModule(SamplerSpec(model="tiny-ddpm", num_steps=2),
                                      ClassifierObjective(tiny_classifier()), eps=0.1,
                                      output_dir=str(tmp_path / "out"), grid_samples=2)
    names, drawn = ["ant", "bee", "cat"], []

    def spy(cells: torch.Tensor, columns: list[str], rows: list[str], *args: object) -> torch.Tensor:
        drawn.append(rows)
        return labelled_grid(cells, columns, rows, *args)

    monkeypatch.setattr(lit_sdo.callbacks, "labelled_grid", spy)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="tb")
    L.Trainer(accelerator="cpu", max_epochs=1, logger=logger, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False).fit(module, datamodule=LabelSeedDataModule(num_classes=3, per_class=1,
                                                                                      class_names=names))
    png = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / "grid.png").convert("RGB")).copy())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    (logged,) = events.Images("results/grid")
    shown = torch.from_numpy(np.asarray(Image.open(io.BytesIO(logged.encoded_image_string)).convert("RGB")).copy())
    assert torch.equal(shown, png)  # the same picture, pixel for pixel
    assert png.shape[0] > 2 * 96 and png.shape[1] > 3 * 96  # two rows of three enlarged 8×8 cells
    assert [row.split("\n")[0] for row in drawn[0]] == ["ant", "bee"]  # the data module's names of labels 0, 1
