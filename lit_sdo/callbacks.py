"""Lightning callbacks for what is not the model: publishing results, timing, memory.

The latent-optimisation module only optimises and evaluates; :class:`LatentResultsWriter` gathers the
evaluation records of every rank and writes results.json, delta.safetensors and grid.png atomically
(and logs the grid and the aggregate numbers to TensorBoard); :class:`StepTimer` measures each
optimisation step's wall-clock and CPU time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only, rank_zero_warn
from torch import Tensor

from lit_sdo.images import image_grid, mark_rows, save_png
from lit_sdo.io import keep_previous, writable_folder, write_json, write_tensors
from lit_sdo.objectives import Report

RESULT_FILES = ("results.json", "delta.safetensors", "grid.png")
INTEGER_KEYS = ("label", "seed")  # record keys rounded back to integers after gathering (and every *pred*/target*)


@rank_zero_only
def announce(message: str) -> None:
    """A job's user-facing line (its result and where the files are), on stdout, once under DDP."""
    print(f"[lit_sdo] {message}", flush=True)


def output_folder(trainer: L.Trainer, module: L.LightningModule) -> Path:
    """The task's ``output_dir`` or the logger's folder. ``trainer.log_dir`` is a collective under DDP:
    every rank must call this."""
    return Path(module.hparams.get("output_dir") or trainer.log_dir or ".")


class StepTimer(L.Callback):
    """Wall-clock and process CPU time of every optimisation step (one training batch), kept in checkpoints."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._started = (0.0, 0.0)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._started = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._started[0])
        self.cpu_seconds.append(time.process_time() - self._started[1])
        module.log("train/seconds_per_step", self.seconds[-1], on_step=False, on_epoch=True, sync_dist=True,
                   batch_size=1)

    def mean_seconds(self) -> float | None:
        return sum(self.seconds) / len(self.seconds) if self.seconds else None

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds, self.cpu_seconds = list(state_dict["seconds"]), list(state_dict["cpu_seconds"])


class LatentResultsWriter(L.Callback):
    """Evaluate every sample at the end of fit (and gather ``test`` records), then publish the results."""

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        folder = output_folder(trainer, module)  # on every rank: log_dir is a collective
        if trainer.is_global_zero:
            writable_folder(folder)  # a bad output path stops the run before any work
            earlier = [name for name in RESULT_FILES if (folder / name).exists()]
            if earlier:
                rank_zero_warn(f"{folder} holds results of an earlier run ({', '.join(earlier)}); they are kept as "
                               "<name>.previous-<n> when this run writes its own")

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        touched = torch.zeros(module.delta.shape[0], dtype=torch.bool, device=module.device)
        for batch in trainer.train_dataloader:
            batch = module.transfer_batch_to_device(batch, module.device, 0)
            module.records.append(module.evaluate_batch(batch, offer_current=True))
            touched[batch["index"]] = True
        module.merge_ranks(touched)
        self.publish(trainer, module)

    def on_test_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.publish(trainer, module)

    def publish(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        records = gather_records(trainer, module)
        folder = output_folder(trainer, module)
        if not trainer.is_global_zero:
            return
        report = module.objective.summarize(records) or generic_report(records, trainer.datamodule)
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, StepTimer)), None)
        if timer is not None and timer.mean_seconds() is not None:
            report.summary["seconds_per_step"] = timer.mean_seconds()
        tensors = {"delta": module.tracker.best}
        if "success" in (report.samples[0] if report.samples else {}):
            tensors["succeeded"] = torch.tensor([row["success"] for row in report.samples])
        for name in RESULT_FILES:
            keep_previous(folder / name)
        write_json(folder / "results.json", {"objective": type(module.objective).__name__,
                                             "config": module.hparams_for_results(), "aggregate": report.summary,
                                             "samples": report.samples})
        write_tensors(folder / "delta.safetensors", tensors,
                      metadata={"model": module.sampler.spec.model, "eps": str(module.hparams.eps)})
        grid, columns = results_grid(records, report, module.hparams.grid_samples)
        save_png(folder / "grid.png", grid, scale=4 if grid.shape[-1] < 256 else 1)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("results/" + "|".join(columns), grid, trainer.current_epoch)
            for key, value in report.summary.items():
                if isinstance(value, (int, float)):
                    experiment.add_scalar(f"result/{key}", value, trainer.current_epoch)
            if "success_rate" in report.summary and trainer.state.fn == "fit":  # the curve ends at the final scoring
                experiment.add_scalar("train/success_rate", report.summary["success_rate"], trainer.global_step)
        announce(f"{report.headline}; results in {folder / 'results.json'}; TensorBoard: "
                       f"tensorboard --logdir {folder.parent}")


def gather_records(trainer: L.Trainer, module: L.LightningModule) -> dict[str, Tensor]:
    """All ranks' records as full (N, ...) tensors in sample order (rows evaluated twice are averaged)."""
    n = module.delta.shape[0]
    local = {key: torch.cat([r[key] for r in module.records]) for key in module.records[0]}
    module.records = []
    rows = local.pop("index")
    device = module.device
    count = torch.zeros(n, device=device).index_add_(0, rows, torch.ones(len(rows), device=device))
    count = trainer.strategy.reduce(count, reduce_op="sum")
    full = {}
    for key, value in local.items():
        buffer = torch.zeros((n, *value.shape[1:]), device=device)
        buffer.index_add_(0, rows, value.float())
        total = trainer.strategy.reduce(buffer, reduce_op="sum")
        full[key] = total / count.clamp(min=1).view(-1, *([1] * (value.dim() - 1)))
        if key in INTEGER_KEYS or "pred" in key or key.startswith("target"):
            full[key] = full[key].round().long()
    return full


def generic_report(records: dict[str, Tensor], datamodule: Any) -> Report:
    """Means of every per-sample number before and after, one row per sample (prompts included)."""
    keys = [k for k, v in records.items() if v.dim() == 1]
    n = len(records["label"])
    summary: dict[str, Any] = {"num_samples": n}
    summary |= {f"{k}_mean": float(records[k].float().mean()) for k in keys if k not in INTEGER_KEYS}
    samples = [{"index": i} | {k: records[k][i].item() for k in keys} for i in range(n)]
    prompts = getattr(getattr(datamodule, "dataset", None), "prompts", None)
    if prompts is not None:
        for row in samples:
            row["prompt"] = prompts[row["index"]]
    headline = f"loss {summary['loss_original_mean']:.4f} -> {summary['loss_optimized_mean']:.4f} " \
               f"(before -> after, mean of {n} samples)"
    return Report(summary, samples, headline)


def results_grid(records: dict[str, Tensor], report: Report, rows: int) -> tuple[Tensor, list[str]]:
    """One row per sample: [reference] [style] | before | after | difference ×5; rows whose sample succeeded
    are framed green, failed ones red (when the task has a success rule)."""
    columns = {name: records[name][:rows] for name in ("reference", "style") if name in records}
    columns |= {"original": records["original"][:rows], "optimized": records["optimized"][:rows]}
    columns["difference×5"] = ((columns["optimized"] - columns["original"]) * 5 + 0.5).clamp(0, 1)
    cells = torch.stack(list(columns.values()), dim=1)  # (rows, columns, C, H, W)
    success = [row.get("success") for row in report.samples[:rows]]
    if all(s is not None for s in success) and success:
        cells = mark_rows(cells, torch.tensor(success, dtype=torch.bool))
    return image_grid(cells.flatten(0, 1), nrow=len(columns)), list(columns)
