"""Latent optimisation: one LightningModule for every task whose trainable thing is a latent.

δ is added to a starting latent of each sample — x_T from its seed, the latent at an intermediate step,
or a real image DDIM-inverted to the start step — the forward pass is the sampler with its gradient
policy, and an injected :class:`~lit_sdo.objectives.Objective` scores the decoded image. The attack
(classifier objective + L∞ bound), text edit, style and aesthetic guidance are YAML files on this one
module; what each measures and reports is decided by the objective and measures it is given.

One Lightning epoch is one optimisation step for every sample, so ``trainer.max_epochs`` is the number
of optimisation steps, and a checkpoint per epoch lets a killed run resume exactly. The step itself, δ and its
per-sample state are :class:`~lit_sdo.tasks.engine.LatentEngine`'s; this module adds data, logging, checkpoints
and ranks. Results (results.json, delta.safetensors, grid.png, TensorBoard) are published by
:class:`lit_sdo.callbacks.LatentResultsWriter` from the engine's :class:`~lit_sdo.records.SampleRecords`.

Distributed runs: each rank optimises its own samples (gradients from ``torch.autograd.grad`` on a
per-batch leaf, never reduced by DDP), and the per-sample state is merged after every step by taking
each row from the rank that owns it, so a sample's δ is never averaged across ranks.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from torch import Tensor

from lit_sdo.callbacks import LatentResultsWriter, StepCost
from lit_sdo.models.sampler import Sampler, SamplerSpec
from lit_sdo.objectives import Batch, Measure, Objective
from lit_sdo.optim import OptimizerName
from lit_sdo.records import SampleRecords
from lit_sdo.tasks.engine import LatentEngine, StepResult


def describe(module: torch.nn.Module) -> dict[str, Any]:
    """Class path and plain attributes of an injected module, for results.json."""
    plain = {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
    return {"class_path": f"{type(module).__module__}.{type(module).__qualname__}"} | plain


def warn_if_no_graph_to_the_latent(sampler: Sampler) -> None:
    """Truncated policies (DRaFT-K with K < the steps run, AlignProp's random truncation) give δ a zero
    gradient: say so once, instead of a run that silently never moves."""
    policy, steps_run = sampler.policy, sampler.steps_run
    if policy.name == "random_truncation" or (policy.name == "last_k" and policy.last_k < steps_run):
        warnings.warn(f"policy {policy.name} keeps no graph back to the start latent (K < {steps_run} steps): δ gets "
                      "a zero gradient and stays where it starts; use sdo, full or checkpoint to optimise a latent",
                      stacklevel=3)


class LatentOptimizationModule(L.LightningModule):
    """Optimise a per-sample δ on a starting latent through the sampler.

    Args:
        sampler: generator, scheduler, steps, guidance, gradient policy and start timestep.
        objective: images in [0, 1] + batch -> per-sample loss (e.g. ``lit_sdo.objectives.ClassifierObjective``).
        measures: extra per-sample measurements for the results (e.g. ``lit_sdo.objectives.LabelAgreement``).
        eps: L∞ bound τ on δ (None = unbounded).
        optimizer: per-sample update rule: ``sgd`` (paper), ``sign`` (PGD), ``adam`` or ``doodl``.
        lr: learning rate.
        output_dir: where results are written (default: the logger's folder).
        grid_samples: samples shown in the results grid.
        stop_at_success: stop stepping a sample once its goal is reached (an attack's first success: its result
            no longer changes), so a job costs what is left to do; objectives without a goal never stop one.
            Same results as ``false`` up to the float32 rounding of smaller batches, except with schedulers that
            draw noise per batch position (see :mod:`lit_sdo.tasks.engine`). The logged ``train/loss`` of a
            stopped sample is its loss at its first success.
    """

    def __init__(self, sampler: SamplerSpec, objective: Objective, measures: list[Measure] | None = None,
                 eps: float | None = None, optimizer: OptimizerName = "sgd", lr: float = 0.1,
                 output_dir: str | None = None, grid_samples: int = 8, stop_at_success: bool = True) -> None:
        super().__init__()
        if eps is not None and eps <= 0:  # before any work (the engine is built in setup)
            raise ValueError(f"eps={eps} must be > 0 (the L∞ bound τ on δ), or null for no bound")
        if grid_samples < 1:
            raise ValueError(f"grid_samples={grid_samples} must be >= 1")
        self.save_hyperparameters(ignore=["objective", "measures"])
        self.automatic_optimization = False
        self.sampler = Sampler(sampler)
        warn_if_no_graph_to_the_latent(self.sampler)
        model = self.sampler.model
        self.objective = objective.requires_grad_(False)
        self.objective.prepare(model.image_size, model.channels, model.num_classes)
        self.measures = torch.nn.ModuleList(measures or []).requires_grad_(False)
        self.strict_loading = False  # checkpoints hold δ and its state, not the frozen networks
        self.delta: torch.nn.Parameter | None = None  # the engine's δ, registered here (DDP, checkpoints)
        self.engine: LatentEngine | None = None
        self._start_cache: dict[int, Tensor] = {}  # sample index -> start latent (deterministic, so not saved)
        self.records: list[SampleRecords] = []  # evaluation records, gathered by the results writer

    def configure_callbacks(self) -> list[L.Callback]:
        return [LatentResultsWriter(), StepCost()]

    def train(self, mode: bool = True) -> LatentOptimizationModule:
        super().train(mode)
        for module in self.children():  # every network here is frozen (δ is a parameter, not a module)
            module.eval()
        return self

    def setup(self, stage: str) -> None:
        """Allocate δ and the per-sample state once the number of samples is known (before a restore)."""
        if self.delta is not None:
            return
        self.sampler.check_precision(self.trainer.strategy.root_device)  # one line before any work
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "num_samples"):
            raise ValueError("this task needs a sample-set data module, e.g. lit_sdo.datamodules.LabelSeedDataModule")
        self.check_samples(datamodule.dataset)
        hp = self.hparams
        self.engine = LatentEngine(self.sampler, self.objective, datamodule.num_samples, eps=hp.eps,
                                   optimizer=hp.optimizer, lr=hp.lr, stop_at_success=hp.stop_at_success)
        self.delta = self.engine.delta

    def on_fit_start(self) -> None:
        self.engine.to(self.device)  # Lightning moved δ after setup; the per-sample state follows

    def on_test_start(self) -> None:
        self.engine.to(self.device)

    def check_samples(self, dataset: Any) -> None:
        """One-line errors for samples the generator cannot make (labels out of range, references of another size)."""
        model = self.sampler.model
        labels = [int(y) for y in getattr(dataset, "labels", []) if int(y) >= 0]
        if model.num_classes is not None and labels and max(labels) >= model.num_classes:
            raise ValueError(f"class labels {min(labels)}..{max(labels)} are out of range for generator {model.name} "
                             f"with {model.num_classes} classes (0..{model.num_classes - 1})")
        images = getattr(dataset, "images", None)
        expected = (model.channels, model.image_size, model.image_size)
        if images is not None and tuple(images.shape[1:]) != expected:
            raise ValueError(f"reference images are {tuple(images.shape[1:])} but generator {model.name} makes "
                             f"{expected}; set data.init_args.image_size={model.image_size} and "
                             f"channels={model.channels} to resize")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A zero-lr optimiser over δ that only counts steps for Lightning (``global_step``, so checkpoints are
        written after every step); the per-sample update itself is :class:`~lit_sdo.optim.PerSampleOptimizer`'s."""
        return torch.optim.SGD([self.delta], lr=0.0)

    # ----- the forward pass -----------------------------------------------------------------------
    def condition(self, batch: Batch) -> Tensor | None:
        """Prompt embeddings (text generators), class labels (class-conditional ones) or None."""
        return self.sampler.condition(batch["label"], batch.get("prompt"))

    @torch.no_grad()
    def start_latent(self, batch: Batch) -> Tensor:
        """The latent δ is added to: a reference image DDIM-inverted to the start step, else x_T from the seed
        (run without gradient down to the start step when it is > 0)."""
        rows = batch["index"].tolist()
        todo = [j for j, r in enumerate(rows) if r not in self._start_cache]
        if todo:
            latents = self._start_latents(batch, todo)
            for j, latent in zip(todo, latents, strict=True):
                self._start_cache[rows[j]] = latent
        return torch.stack([self._start_cache[r] for r in rows]).to(self.device)

    def _start_latents(self, batch: Batch, todo: list[int]) -> Tensor:
        cond = self.condition(batch)
        cond = None if cond is None else cond[todo]
        if "image" in batch:
            return self.sampler.start_latent(cond, images=batch["image"][todo].to(self.device))
        return self.sampler.start_latent(cond, seeds=batch["seed"][todo], dtype=self.dtype)

    # ----- one optimisation step ------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        result = self.engine.step(batch, self.start_latent(batch), self.condition(batch),
                                  policy_key=self.current_epoch)
        self.optimizers().step()  # counts the step (zero lr): Lightning's global_step drives checkpoints
        self.merge_ranks()  # on every rank, whether it stepped a sample or not
        self.log_step(result)
        return result.loss.mean()

    def log_step(self, result: StepResult) -> None:
        """The same keys on every rank at every step (their epoch means are reduced across ranks)."""
        batch_size = len(result.rows)
        self.log("train/loss", result.loss.mean(), on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=batch_size)
        if result.success is not None:  # the report's rate: successes so far among the samples that count
            rate = result.success.float().sum() / result.counted.float().sum().clamp(min=1)
            self.log("train/success_rate", rate, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=batch_size, prog_bar=True)
        self.log("train/delta_linf", self.delta.detach()[result.rows].abs().amax(), on_step=False, on_epoch=True,
                 sync_dist=True, reduce_fx="max", batch_size=batch_size)

    def merge_ranks(self, touched: Tensor | None = None) -> None:
        if self.trainer.world_size > 1:
            self.engine.merge_across_ranks(self.all_gather, touched)

    # ----- evaluation (the results writer gathers and publishes the records) ---------------------------
    @torch.no_grad()
    def evaluate_batch(self, batch: Batch, offer_current: bool) -> SampleRecords:
        """Images before (δ = 0) and after (best δ) of a batch, with every measurement of both."""
        cond, x_start = self.condition(batch), self.start_latent(batch)
        if offer_current:
            self.engine.offer_current(batch, x_start, cond)
        return self.engine.records(batch, x_start, cond, self.measures)

    def hparams_for_results(self) -> dict[str, Any]:
        """The run's settings as plain JSON values (the objective and measures by class and arguments)."""
        return {"sampler": self.sampler.spec.as_dict(), "objective": describe(self.objective),
                "measures": [describe(m) for m in self.measures]} | {
            k: v for k, v in self.hparams.items() if k != "sampler"}

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.records.append(self.evaluate_batch(batch, offer_current=False))

    # ----- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {"delta": self.delta.detach().cpu()}  # frozen networks load from their names
        checkpoint["per_sample_state"] = {n: t.cpu() for n, t in self.engine.state().items()}
        checkpoint["samples_fingerprint"] = self.trainer.datamodule.fingerprint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("per_sample_state")
        if state is None:
            raise ValueError("the checkpoint has no per-sample state: it was not written by a latent-optimisation task")
        saved, current = checkpoint.get("samples_fingerprint"), self.trainer.datamodule.fingerprint()
        if saved is not None and saved != current:
            raise ValueError("the checkpoint was written for another sample set (other seeds, labels, images or "
                             "prompts): resume with the data arguments of the run that wrote it, or start a new run")
        delta = state["delta"]
        if self.delta is None or delta.shape != self.delta.shape:
            expected = None if self.delta is None else tuple(self.delta.shape)
            raise ValueError(f"checkpoint δ has shape {tuple(delta.shape)}, this config expects {expected}: "
                             "the checkpoint comes from another config (other samples or model)")
        checkpoint["state_dict"]["delta"] = delta
        self.engine.load_state(state)
