"""Lightning callbacks for what is not the model: publishing results, timing, memory, the NaN stop.

The latent-optimisation module only optimises and evaluates; :class:`LatentResultsWriter` gathers the
evaluation records (:class:`~lit_sdo.records.SampleRecords`) of every rank and writes results.json,
delta.safetensors and grid.png atomically (and logs the grid and the aggregate numbers to TensorBoard).
:class:`StepCost` measures what each optimiser step of any module costs (time, memory held for backward);
:class:`NaNStop` stops a run at the first non-finite loss or gradient, before it reaches the weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only, rank_zero_warn
from torch import Tensor

from lit_sdo.images import labelled_grid, save_png, to_uint8
from lit_sdo.io import keep_previous, writable_folder, write_json, write_tensors
from lit_sdo.metrics import lp_distances
from lit_sdo.objectives import Report
from lit_sdo.records import SampleRecords

RESULT_FILES = ("results.json", "delta.safetensors", "grid.png")
IDENTITY_COLUMNS = ("label", "seed")  # who a sample is: in its results row, not averaged in the generic report


@rank_zero_only
def announce(message: str) -> None:
    """A job's user-facing line (its result and where the files are), on stdout, once under DDP."""
    print(f"[lit_sdo] {message}", flush=True)


def output_folder(trainer: L.Trainer, module: L.LightningModule) -> Path:
    """The task's ``output_dir`` or the logger's folder. ``trainer.log_dir`` is a collective under DDP:
    every rank must call this."""
    return Path(module.hparams.get("output_dir") or trainer.log_dir or ".")


class SavedTensorMeter:
    """The bytes autograd holds for backward, now (``live``) and at their largest (``peak``).

    A saved tensor counts from when a graph saves it until autograd drops it (after its node's backward, or
    with its graph), so graphs built and freed inside a backward count at their largest. A storage saved
    several times counts once; ``excluded`` storage addresses (a module's weights) never count.
    Use as ``with meter.hooks(): ...``. The meter hands autograd back detached tensors (same storage), so a
    backward with ``create_graph=True`` (higher-order gradients) must not run under it. A call that
    ``torch.utils.checkpoint`` rebuilds in backward saves through checkpoint's own hooks and is not seen
    (the ``checkpoint`` policy, ``sdo`` with ``recompute``); CUDA's allocator peak, which StepCost uses on a GPU,
    has it.
    """

    def __init__(self, excluded: set[int] | None = None) -> None:
        self.live = self.peak = 0
        self._excluded = excluded or set()
        self._holders: dict[int, int] = {}  # storage address -> how many saved tensors hold it now

    @classmethod
    def excluding_weights_of(cls, module: torch.nn.Module) -> SavedTensorMeter:
        """A meter that does not count ``module``'s parameters (saving them costs no new memory)."""
        return cls(excluded={p.untyped_storage().data_ptr() for p in module.parameters()})

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, tensor: Tensor) -> _Held | Tensor:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address in self._excluded:
            return tensor
        if not self._holders.get(address):
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._holders[address] = self._holders.get(address, 0) + 1
        # detached: a saved output holding its own grad_fn would close a reference cycle (node -> saved
        # variable -> this holder -> tensor -> node) that keeps a retained graph (torchdiffeq's adjoint VJPs)
        # alive until the garbage collector runs; the same storage, so nothing is copied
        return _Held(tensor.detach(), address, storage.nbytes(), self)

    def _drop(self, address: int, size: int) -> None:
        self._holders[address] -= 1
        if not self._holders[address]:
            del self._holders[address]
            self.live -= size


class _Held:
    """One saved tensor; its storage leaves :class:`SavedTensorMeter`'s count when the last holder is dropped."""

    __slots__ = ("address", "meter", "size", "tensor")

    def __init__(self, tensor: Tensor, address: int, size: int, meter: SavedTensorMeter) -> None:
        self.tensor, self.address, self.size, self.meter = tensor, address, size, meter

    def __del__(self) -> None:
        self.meter._drop(self.address, self.size)


def _unpack(held: _Held | Tensor) -> Tensor:
    return held.tensor if isinstance(held, _Held) else held


class StepCost(L.Callback):
    """What each optimiser step costs, for any module: the wall-clock and process CPU time of its training
    batches (evaluation, grids and checkpoints excluded) and the memory autograd keeps for backward.

    Memory is, on a GPU, the peak CUDA memory a batch allocates above what was allocated when it started (the
    weights, δ and whatever earlier steps left excluded; the device is synchronised at the batch's edges, so its
    time includes its kernels); on CPU (no allocator statistics) it is the peak of what autograd holds for
    backward while a batch runs, its backward included (:class:`SavedTensorMeter`,
    weights excluded: they cost no new memory): the part in which gradient policies differ. Counting through
    the backward matters for AdjointDPM and DOODL, whose forward saves nearly nothing and whose backward
    rebuilds one step's graph at a time. ``rows`` has one entry per optimiser step:
    cumulative ``seconds`` and ``cpu_seconds`` and the step's ``peak_bytes`` (its largest micro-batch),
    each the largest over the ranks. Kept in checkpoints, so a resumed run keeps counting.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._clock = [0.0, 0.0]  # this rank's training wall-clock and CPU seconds so far
        self._started = (0.0, 0.0)
        self._peak = 0
        self._hooks: Any = None  # the saved-tensor hooks while a batch runs, backward included
        self._read: Callable[[], int] | None = None
        self._last_step = 0

    @staticmethod
    def find(trainer: L.Trainer) -> StepCost | None:
        return next((cb for cb in trainer.callbacks if isinstance(cb, StepCost)), None)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start_memory(module)
        self._started = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)  # the batch's queued kernels belong to its time
        self._clock[0] += time.perf_counter() - self._started[0]
        self._clock[1] += time.process_time() - self._started[1]
        self._stop_memory()
        if trainer.global_step > self._last_step:  # this batch completed an optimiser step
            self._last_step = trainer.global_step
            self._end_step(trainer, module)

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self._stop_memory()

    def _end_step(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        local = torch.tensor([*self._clock, self._peak], dtype=torch.float64, device=module.device)
        seconds, cpu_seconds, peak = trainer.strategy.reduce(local, reduce_op="max").tolist()  # slowest rank
        previous = self.rows[-1] if self.rows else {"seconds": 0.0, "cpu_seconds": 0.0}
        self.rows.append({"step": trainer.global_step, "seconds": seconds, "cpu_seconds": cpu_seconds,
                          "peak_bytes": int(peak)})
        self._peak = 0
        for key, value in (("seconds_per_step", seconds - previous["seconds"]),
                           ("cpu_seconds_per_step", cpu_seconds - previous["cpu_seconds"]),
                           ("saved_mib_per_step", peak / 2**20)):
            module.log(f"train/{key}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)

    def _start_memory(self, module: L.LightningModule) -> None:
        device = module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            held_before = torch.cuda.memory_allocated(device)
            self._read = lambda: torch.cuda.max_memory_allocated(device) - held_before
            return
        meter = SavedTensorMeter.excluding_weights_of(module)
        self._hooks = meter.hooks()
        self._hooks.__enter__()
        self._read = lambda: meter.peak

    def _stop_memory(self) -> None:
        if self._hooks is not None:
            self._hooks.__exit__(None, None, None)
            self._hooks = None
        if self._read is not None:
            self._peak = max(self._peak, self._read())
            self._read = None

    def mean_seconds(self) -> float | None:
        """Mean wall-clock of an optimiser step."""
        return self.rows[-1]["seconds"] / len(self.rows) if self.rows else None

    def peak_mib(self) -> float | None:
        """The largest step's memory (CUDA peak, or on CPU the bytes held for backward), in MiB."""
        return max(row["peak_bytes"] for row in self.rows) / 2**20 if self.rows else None

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "clock": self._clock}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows, self._clock = list(state_dict["rows"]), list(state_dict["clock"])


class NaNStop(L.Callback):
    """Stop training at the first non-finite training loss or gradient, before the optimiser applies it.

    The message is one line naming the optimiser step, the value and the last checkpoint written (which
    holds the weights of the last good step). Lightning's ``EarlyStopping(check_finite=True)`` does not fit:
    it reads a logged metric at the end of an epoch, after the optimiser has applied the non-finite update
    (and ``ModelCheckpoint`` has saved it as last.ckpt), and it ends the run as if it had finished.
    Modules that compute their gradients themselves (``torch.autograd.grad``) are not checked.
    """

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise FloatingPointError(self.message(trainer, f"training loss is {float(loss.detach().sum()):g}"))

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        names = {id(p): n for n, p in module.named_parameters()}
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None and not torch.isfinite(param.grad).all():
                    bad = param.grad[~torch.isfinite(param.grad)].flatten()[0]
                    what = f"the gradient of {names.get(id(param), 'a parameter')} is {float(bad):g}"
                    raise FloatingPointError(self.message(trainer, what))

    @staticmethod
    def message(trainer: L.Trainer, what: str) -> str:
        callback = getattr(trainer, "checkpoint_callback", None)
        last = getattr(callback, "last_model_path", "") or "none written yet"
        return (f"{what} at optimiser step {trainer.global_step} (epoch {trainer.current_epoch}); the run stops "
                f"without updating the weights; last good checkpoint: {last}")


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
        timer = StepCost.find(trainer)
        if timer is not None and timer.mean_seconds() is not None:
            report.summary["seconds_per_step"] = timer.mean_seconds()
            report.summary["peak_mib_per_step"] = timer.peak_mib()
        tensors = {"delta": module.engine.tracker.best}
        if "success" in (report.samples[0] if report.samples else {}):
            tensors["succeeded"] = torch.tensor([row["success"] for row in report.samples])
        for name in RESULT_FILES:
            keep_previous(folder / name)
        write_json(folder / "results.json", {"objective": type(module.objective).__name__,
                                             "config": module.hparams_for_results(), "aggregate": report.summary,
                                             "samples": report.samples})
        write_tensors(folder / "delta.safetensors", tensors,
                      metadata={"model": module.sampler.spec.model, "eps": str(module.hparams.eps)})
        grid, _ = results_grid(records, report, module.hparams.grid_samples,
                               getattr(trainer.datamodule, "class_names", None))
        save_png(folder / "grid.png", grid)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("results/grid", to_uint8(grid), trainer.current_epoch)  # the pixels of grid.png
            for key, value in report.summary.items():
                if isinstance(value, (int, float)):
                    experiment.add_scalar(f"result/{key}", value, trainer.current_epoch)
            if "success_rate" in report.summary and trainer.state.fn == "fit":  # the curve ends at the final scoring
                experiment.add_scalar("train/success_rate", report.summary["success_rate"], trainer.global_step)
        announce(f"{report.headline}; results in {folder / 'results.json'}; TensorBoard: "
                       f"tensorboard --logdir {folder.parent}")


def gather_records(trainer: L.Trainer, module: L.LightningModule) -> SampleRecords:
    """All ranks' records as full (N, ...) tensors in sample order (rows evaluated twice are averaged), each of
    its own kind again: integers and flags rounded back, numbers in float32. They come back on the host, whatever
    the module's device: every reader after this (the report's NumPy metrics, results.json, the grid) is
    host-side, and the reduction across ranks is the last step that needs the device."""
    n = module.delta.shape[0]
    local = SampleRecords.concat(module.records)
    module.records = []
    device = module.device
    rows = local.index.to(device)
    count = torch.zeros(n, device=device).index_add_(0, rows, torch.ones(len(rows), device=device))
    count = trainer.strategy.reduce(count, reduce_op="sum")

    def full(value: Tensor) -> Tensor:
        buffer = torch.zeros((n, *value.shape[1:]), device=device)
        buffer.index_add_(0, rows, value.float().to(device))
        total = trainer.strategy.reduce(buffer, reduce_op="sum")
        mean = total / count.clamp(min=1).view(-1, *([1] * (value.dim() - 1)))
        return (mean if value.is_floating_point() else mean.round().to(value.dtype)).cpu()

    return local.apply(full, index=torch.arange(n))


def generic_report(records: SampleRecords, datamodule: Any) -> Report:
    """Means of every per-sample number before and after, one row per sample (prompts included)."""
    columns = {k: v for k, v in records.columns().items() if v.dim() == 1}
    n = len(records)
    summary: dict[str, Any] = {"num_samples": n}
    summary |= {f"{k}_mean": float(v.float().mean()) for k, v in columns.items() if k not in IDENTITY_COLUMNS}
    samples = [{"index": i} | {k: v[i].item() for k, v in columns.items()} for i in range(n)]
    prompts = getattr(getattr(datamodule, "dataset", None), "prompts", None)
    if prompts is not None:
        for row in samples:
            row["prompt"] = prompts[row["index"]]
    headline = f"loss {summary['loss_original_mean']:.4f} -> {summary['loss_optimized_mean']:.4f} " \
               f"(before -> after, mean of {n} samples)"
    return Report(summary, samples, headline)


DIFFERENCE_GAIN = 5  # |after - before| is enlarged this much in the grid: an attack's change is faint


@dataclass
class GridText:
    """The words of a results grid, taken from the records and the report (tests read them here)."""

    columns: list[str]
    rows: list[str]  # each row's class name (or prompt), seed and, for an attack, its verdict
    captions: list[list[str]]  # under each image: prediction and confidence, or loss; L2 under the difference
    frames: list[bool | None]  # success (green), failure (red), no rule or not counted (None: no frame)


def results_grid(records: SampleRecords, report: Report, rows: int,
                 class_names: Sequence[str] | None = None) -> tuple[Tensor, GridText]:
    """One row per sample: [reference] [style] | before | after | |difference|, with a title per column, the
    sample's class (``class_names[label]``, else the label or prompt) per row, what the attacked classifier
    reads (class and confidence) under each image, and a green / red frame where the task has a success rule
    (none around an attacked sample whose clean image is already misread: the success rate does not count it).
    An attack's columns are "clean" and "adversarial"; PIL's default font has no "×", hence "x5"."""
    n = min(rows, len(records))
    samples = report.samples[:n] if report.samples else [{} for _ in range(n)]
    attack = "success" in samples[0]
    before, after = ("clean", "adversarial") if attack else ("before", "after")
    original, optimized = records.original[:n], records.optimized[:n]
    images = {name: shown[:n] for name, shown in records.shown.items()}
    images |= {before: original, after: optimized,
               f"|difference| x{DIFFERENCE_GAIN}": ((optimized - original).abs() * DIFFERENCE_GAIN).clamp(0, 1)}
    l2, _ = lp_distances(optimized.float(), original.float())

    def name(label: int) -> str:
        return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)

    def reading(measured: dict[str, Tensor], i: int) -> str:
        if "pred" in measured:
            confidence = measured.get("confidence")
            text = name(int(measured["pred"][i]))
            return text if confidence is None else f"{text} {float(confidence[i]):.0%}"
        loss = measured.get("loss")
        return "" if loss is None else f"loss {float(loss[i]):.3g}"

    titles, captions, frames = [], [], []
    for i, sample in enumerate(samples):
        label = int(records.label[i])
        lines = [name(label) if label >= 0 else _shorten(sample.get("prompt") or f"sample {i}"),
                 f"seed {int(records.seed[i])}"]
        frame = sample.get("success")
        if attack:  # the success rate counts the samples whose clean image is labelled y
            counted = "pred" not in records.before or int(records.before["pred"][i]) == label
            lines.append("fooled" if frame else "not fooled" if counted else "clean misread")
            frame = frame if counted else None
        titles.append("\n".join(lines))
        frames.append(frame)
        captions.append([""] * (len(images) - 3) + [reading(records.before, i), reading(records.after, i),
                                                    f"L2 {l2[i]:.3f}"])
    text = GridText(list(images), titles, captions, frames)
    cells = torch.stack([image.float().cpu() for image in images.values()], dim=1)  # (rows, columns, C, H, W)
    return labelled_grid(cells, text.columns, text.rows, text.captions, text.frames), text


def _shorten(text: str, length: int = 24) -> str:
    return text if len(text) <= length else text[:length - 3] + "..."
