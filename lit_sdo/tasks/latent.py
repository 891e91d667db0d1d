"""Latent optimisation: one LightningModule for every task whose trainable thing is a latent.

δ is added to a starting latent (x_T, or the latent at an intermediate step) of each sample; the
forward pass is the SDO sampler; an injected objective scores the decoded image. The attack, text
edit, style and aesthetic tasks are configurations of this idea (subclasses add their objective and
metrics). One Lightning epoch is one optimisation step for every sample, so ``trainer.max_epochs`` is
the number of optimisation steps and a checkpoint per epoch lets a killed run resume exactly.

Distributed runs: each rank optimises its own samples. Gradients come from ``torch.autograd.grad`` on
a per-batch leaf (DDP never reduces them), and the per-sample state is merged after every step by
taking each row from the rank that owns it, so a sample's δ is never averaged across ranks.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lit_sdo.images import save_png, to_unit_range
from lit_sdo.io import writable_folder, write_json, write_tensors
from lit_sdo.models import DiffusionModel, build_sampler, load_diffusion
from lit_sdo.optim import BestTracker, OptimizerName, PerSampleOptimizer, merge_rows_by_version, project_linf
from lit_sdo.sampling import GradientPolicy, noise_for_seeds, sample, start_step_for


def latent_gradient(loss: Tensor, delta: Tensor) -> Tensor:
    """dΣloss/dδ, or zeros when the policy keeps no graph back to δ (DRaFT/AlignProp truncation)."""
    if not loss.requires_grad:
        return torch.zeros_like(delta)
    (grad,) = torch.autograd.grad(loss.sum(), delta, allow_unused=True)
    return torch.zeros_like(delta) if grad is None else grad


class LatentOptimizationModule(L.LightningModule):
    """Optimise a per-sample δ on a starting latent through the sampler.

    Args:
        generator: diffusion model name for :func:`lit_sdo.models.load_diffusion` (``embedded:<name>``,
            a hub id or a local folder).
        scheduler: sampler (``ddim``, ``dpm``, ``euler``, ``lcm``, ``flow_euler``, ``ddpm``), or ``shortcut`` for
            a shortcut / flow-matching model's own N-step sampler (``embedded:digits-shortcut``, ``digits-flow``).
        num_steps: sampling steps N.
        guidance_scale: classifier-free guidance scale (1 = none).
        policy: gradient policy name (``sdo``, ``full``, ``checkpoint``, ``last_k``, ...).
        k: SDO's graph step (0 = the first step run: the paper's Fig. 4), or ``random``.
        last_k: K for the ``last_k`` policy.
        start_timestep: optimise the latent at this timestep (e.g. 600 of 1000) instead of x_T.
        eps: L∞ bound τ on δ (None = unbounded).
        optimizer: per-sample update rule: ``sgd`` (paper), ``sign`` (PGD) or ``adam``.
        lr: learning rate.
        output_dir: where results are written (default: the logger's folder).
    """

    def __init__(self, generator: str = "embedded:digits-ddpm", scheduler: str = "ddim", num_steps: int = 30,
                 guidance_scale: float = 1.0, policy: str = "sdo", k: int | Literal["random"] = 0, last_k: int = 1,
                 start_timestep: int | None = None, eps: float | None = None, optimizer: OptimizerName = "sgd",
                 lr: float = 0.1, output_dir: str | None = None) -> None:
        super().__init__()
        if eps is not None and eps <= 0:
            raise ValueError(f"eps={eps} must be > 0 (the L∞ bound τ on δ), or null for no bound")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.policy = GradientPolicy(name=policy, k=k, last_k=last_k)  # type: ignore[arg-type]
        self.generator = self.load_generator(generator, guidance_scale)
        denoiser, self.scheduler = build_sampler(self.generator, scheduler, num_steps)
        self.denoiser = denoiser.requires_grad_(False)  # registered: moves with .to(device)
        self.strict_loading = False  # checkpoints hold δ and its state, not the frozen networks
        self.start_step = 0 if start_timestep is None else start_step_for(self.scheduler, start_timestep)
        steps_run = num_steps - self.start_step
        if policy == "random_truncation" or (policy == "last_k" and last_k < steps_run):
            warnings.warn(f"policy {policy} keeps no graph back to the start latent (K < {steps_run} steps): δ gets "
                          "a zero gradient and stays where it starts; use sdo, full or checkpoint to optimise a "
                          "latent", stacklevel=2)
        self.delta: torch.nn.Parameter | None = None
        self.optim: PerSampleOptimizer | None = None
        self.tracker: BestTracker | None = None
        self.step_seconds: list[float] = []  # wall-clock of each optimisation step on this rank
        self._records: list[dict[str, Tensor]] = []  # per-batch evaluation records (see evaluate_batch)

    # ----- construction ---------------------------------------------------------------------------
    @staticmethod
    def load_generator(name: str, guidance_scale: float) -> DiffusionModel:
        return load_diffusion(name, guidance_scale=guidance_scale)

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Networks that must stay in eval mode (no dropout, BatchNorm running stats)."""
        return [self.denoiser]

    def train(self, mode: bool = True) -> LatentOptimizationModule:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def setup(self, stage: str) -> None:
        """Allocate δ and the per-sample state once the number of samples is known (before a restore)."""
        if self.delta is not None:
            return
        if self.trainer.is_global_zero:
            writable_folder(self.output_folder())  # a bad output path stops the run before any work
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "num_samples"):
            raise ValueError("this task needs a data module with num_samples, e.g. LabelSeedDataModule")
        self.check_data(datamodule)
        shape = (datamodule.num_samples, *self.denoiser.sample_shape)
        self.delta = torch.nn.Parameter(torch.zeros(shape, device=self.device))
        self.optim = PerSampleOptimizer(shape, self.hparams.optimizer, self.hparams.lr).to(self.device)
        self.tracker = BestTracker(shape).to(self.device)

    def check_data(self, datamodule: Any) -> None:
        """Subclasses validate the samples against the models (e.g. class labels in range)."""

    def configure_optimizers(self) -> None:
        return None  # per-sample updates: see lit_sdo.optim.PerSampleOptimizer

    # ----- the forward pass -----------------------------------------------------------------------
    def start_latent(self, batch: dict[str, Tensor]) -> Tensor:
        """The latent δ is added to: x_T from each sample's seed (subclasses may invert an image)."""
        return noise_for_seeds(batch["seed"].tolist(), self.denoiser.sample_shape, device=self.device)

    def condition(self, batch: dict[str, Tensor]) -> Tensor | None:
        return batch.get("label")

    def generate(self, x: Tensor, cond: Tensor | None, policy: GradientPolicy | str) -> Tensor:
        """Latent -> image in [0, 1] through the sampler and the decoder."""
        out = sample(self.denoiser, self.scheduler, x, cond, policy=policy, start_step=self.start_step)
        return to_unit_range(self.denoiser.decode(out.sample))

    def loss_and_success(self, images: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Per-sample loss (B,) to minimise and, where the task has one, a success flag (B,)."""
        raise NotImplementedError

    # ----- one optimisation step ------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        started = time.perf_counter()
        rows = batch["index"]
        delta = self.delta.detach()[rows].clone().requires_grad_(True)  # leaf: DDP never sees its grad
        images = self.generate(self.start_latent(batch) + delta, self.condition(batch), self.policy)
        loss, success = self.loss_and_success(images, batch)
        self.tracker.update(rows, delta.detach(), loss.detach(), success)
        grad = latent_gradient(loss, delta)
        with torch.no_grad():
            self.optim.step(self.delta.data, grad, rows)
            if self.hparams.eps is not None:
                self.delta.data[rows] = project_linf(self.delta.data[rows], self.hparams.eps)
        self.merge_ranks()
        self.step_seconds.append(time.perf_counter() - started)
        self.log_step(loss, success, rows, self.step_seconds[-1])
        return loss.mean().detach()

    def log_step(self, loss: Tensor, success: Tensor | None, rows: Tensor, seconds: float) -> None:
        batch_size = len(rows)
        self.log("train/loss", loss.mean(), on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)
        if success is not None:
            self.log("train/success_rate", success.float().mean(), on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=batch_size, prog_bar=True)
        self.log("train/delta_linf", self.delta.detach()[rows].abs().amax(), on_step=False, on_epoch=True,
                 sync_dist=True, reduce_fx="max", batch_size=batch_size)
        self.log("train/seconds_per_step", seconds, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=batch_size)

    def per_sample_state(self) -> dict[str, Tensor]:
        return {"delta": self.delta.data} | {f"optim.{n}": t for n, t in self.optim.tensors.items()} | {
            f"tracker.{n}": t for n, t in self.tracker.tensors.items()}

    def merge_ranks(self, touched: Tensor | None = None) -> None:
        """Make every rank hold every sample's current state (each row from the rank that owns it).

        ``touched`` (N,) bool marks rows this rank changed without an optimiser step (the final scoring
        in ``on_train_end``): at equal step counts they win over the other ranks' stale copies.
        """
        if self.trainer.world_size == 1:
            return
        state = self.per_sample_state()
        gathered = {name: self.all_gather(t) for name, t in state.items()}  # (W, N, ...)
        versions = gathered["optim.steps"].long() * 2
        if touched is not None:
            versions = versions + self.all_gather(touched.long())
        merged = merge_rows_by_version(gathered, versions)
        for name, t in state.items():
            t.copy_(merged[name])

    # ----- evaluation and results (subclasses: evaluate_batch + write_results) ----------------------
    integer_record_keys: tuple[str, ...] = ("label", "seed")  # record keys rounded back to integers after gathering

    def evaluate_batch(self, batch: dict[str, Tensor], offer_current: bool) -> None:
        """Append a record (tensors with a leading sample dimension, ``index`` included) to ``self._records``."""
        raise NotImplementedError

    def write_results(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def final_delta(self, batch: dict[str, Tensor], offer_current: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        """(start latent, condition, best δ) of a batch; ``offer_current`` first scores the δ of the last update."""
        rows, cond = batch["index"], self.condition(batch)
        x_start = self.start_latent(batch)
        if offer_current:  # the δ after the last update has not been scored yet
            images = self.generate(x_start + self.delta[rows], cond, "none")
            self.tracker.update(rows, self.delta[rows], *self.loss_and_success(images, batch))
        return x_start, cond, self.tracker.best[rows]

    def on_train_end(self) -> None:
        touched = torch.zeros(self.delta.shape[0], dtype=torch.bool, device=self.device)
        for batch in self.trainer.train_dataloader:
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            self.evaluate_batch(batch, offer_current=True)
            touched[batch["index"]] = True
        self.merge_ranks(touched)
        self.write_results()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.evaluate_batch(batch, offer_current=False)

    def on_test_epoch_end(self) -> None:
        self.write_results()

    def gather_records(self) -> dict[str, Tensor]:
        """All ranks' records as full (N, ...) tensors in sample order (rows evaluated twice are averaged)."""
        n = self.delta.shape[0]
        local = {key: torch.cat([r[key] for r in self._records]) for key in self._records[0]}
        self._records = []
        rows = local.pop("index")
        count = torch.zeros(n, device=self.device).index_add_(0, rows, torch.ones(len(rows), device=self.device))
        count = self.trainer.strategy.reduce(count, reduce_op="sum")
        full = {}
        for key, value in local.items():
            buffer = torch.zeros((n, *value.shape[1:]), device=self.device)
            buffer.index_add_(0, rows, value.float())
            total = self.trainer.strategy.reduce(buffer, reduce_op="sum")
            full[key] = total / count.clamp(min=1).view(-1, *([1] * (value.dim() - 1)))
        for key in self.integer_record_keys:
            if key in full:
                full[key] = full[key].round().long()
        return full

    def output_folder(self) -> Path:
        return Path(self.hparams.output_dir or self.trainer.log_dir or ".")

    def publish(self, results: dict[str, Any], tensors: dict[str, Tensor], metadata: dict[str, str], grid: Tensor,
                grid_tag: str) -> Path:
        """Write results.json, delta.safetensors and grid.png atomically and log the grid and the aggregate
        numbers to TensorBoard; adds the mean seconds per optimisation step to ``results["aggregate"]``."""
        out_dir = self.output_folder()
        summary = results["aggregate"]
        if self.step_seconds:
            summary["seconds_per_step"] = sum(self.step_seconds) / len(self.step_seconds)
        write_json(out_dir / "results.json", results)
        write_tensors(out_dir / "delta.safetensors", tensors, metadata=metadata)
        save_png(out_dir / "grid.png", grid, scale=4 if grid.shape[-1] < 256 else 1)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(grid_tag, grid, self.current_epoch)
            for key, value in summary.items():
                if isinstance(value, (int, float)):
                    experiment.add_scalar(f"result/{key}", value, self.current_epoch)
        return out_dir

    # ----- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {"delta": self.delta.detach().cpu()}  # frozen networks load from their names
        checkpoint["per_sample_state"] = {n: t.cpu() for n, t in self.per_sample_state().items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("per_sample_state")
        if state is None:
            raise ValueError("the checkpoint has no per-sample state: it was not written by a latent-optimisation task")
        delta = state["delta"]
        if self.delta is None or delta.shape != self.delta.shape:
            expected = None if self.delta is None else tuple(self.delta.shape)
            raise ValueError(f"checkpoint δ has shape {tuple(delta.shape)}, this config expects {expected}: "
                             "the checkpoint comes from another config (other samples or model)")
        checkpoint["state_dict"]["delta"] = delta
        self.optim.load_state_dict({n[len("optim."):]: t for n, t in state.items() if n.startswith("optim.")})
        self.tracker.load_state_dict({n[len("tracker."):]: t for n, t in state.items() if n.startswith("tracker.")})
