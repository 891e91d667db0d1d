"""The latent-optimisation engine: δ per sample, its optimiser, the best-δ tracker and the L∞ bound, with one
:meth:`LatentEngine.step`. A plain class: :class:`~lit_sdo.tasks.latent.LatentOptimizationModule` (the CLI job)
and :class:`~lit_sdo.tasks.attack.SDOAttack` (the library attack) are thin wrappers over it.

One step (paper Sec. 3 and 5.1.4): the sampler turns x_start + δ into images with its gradient policy → the
objective scores them (and, for an attack, says which reach the goal) → the tracker keeps each sample's best δ
→ dΣloss/dδ → per-sample update → projection onto ‖δ‖∞ ≤ τ.

Only the open samples are stepped: a sample whose goal is reached keeps that δ for good (the tracker keeps the
first success), so with ``stop_at_success`` (the default) later steps no longer sample or differentiate it, and a
job costs what is left to do. Objectives without a goal (edit, style, aesthetic) never close a sample. Closing
samples does not change what the open ones compute, but it changes the shape of their batch: float32 kernels
(MKL/oneDNN GEMM and convolutions on some CPUs, cuDNN) may round differently for another batch size, so an open
sample's δ can differ from a run without stopping in its last bits, and a success decided by a hair can move by
a step. Schedulers that draw noise per batch position (DDPM, LCM) give the open samples other noise once a sample
closes: there stopping changes results, not only their rounding; set ``stop_at_success: false`` to keep them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_sdo.models.sampler import Sampler
from lit_sdo.objectives import Batch, Measure, Objective
from lit_sdo.optim import BestTracker, OptimizerName, PerSampleOptimizer, merge_across_ranks, project_linf
from lit_sdo.records import SampleRecords


@dataclass
class StepResult:
    """What one step did to a batch's samples (B = len(rows)): what the training log reads.

    Attributes:
        rows: (B,) the samples of the batch.
        stepped: (B,) bool: sampled and updated by this step (the open ones).
        loss: (B,) each sample's latest loss: this step's where stepped, else its loss at its first success.
        success: (B,) bool: succeeded so far (:attr:`lit_sdo.optim.BestTracker.success`); None: no goal.
        counted: (B,) bool: counts in the success rate; None: no goal.
    """

    rows: Tensor
    stepped: Tensor
    loss: Tensor
    success: Tensor | None
    counted: Tensor | None


def latent_gradient(loss: Tensor, delta: Tensor) -> Tensor:
    """dΣloss/dδ, or zeros when the policy keeps no graph back to δ (DRaFT/AlignProp truncation)."""
    if not loss.requires_grad:
        return torch.zeros_like(delta)
    (grad,) = torch.autograd.grad(loss.sum(), delta, allow_unused=True)
    return torch.zeros_like(delta) if grad is None else grad


def select(batch: Batch, keep: Tensor) -> Batch:
    """The samples of ``batch`` where ``keep`` (B,) is True: tensors indexed, lists (prompts) picked."""
    picked = keep.nonzero().flatten().tolist()
    return {key: value[keep] if isinstance(value, Tensor) else
            [value[i] for i in picked] if isinstance(value, Sequence) and not isinstance(value, str) else value
            for key, value in batch.items()}


class LatentEngine:
    """Per-sample δ on a start latent, optimised through a sampler against an objective.

    Gradients come from ``torch.autograd.grad`` on a per-batch leaf, so nothing accumulates in ``.grad`` and DDP
    never reduces them (each sample is its own problem); the per-sample state is merged across ranks by
    :meth:`merge_across_ranks`. δ starts at zero, so a sample's first offer to the tracker is its clean image.

    Args:
        sampler: turns start latents into images (its gradient policy, precision and seeds).
        objective: images in [0, 1] + batch -> per-sample loss (and the goal, for an attack).
        num_samples: N, the samples of the whole job (δ is (N, C, H, W); batches name their rows).
        eps: L∞ bound τ on δ (None = unbounded).
        optimizer: per-sample update rule (:class:`~lit_sdo.optim.PerSampleOptimizer`).
        lr: learning rate.
        stop_at_success: step only the samples whose goal is not yet reached (see the module docstring).
    """

    def __init__(self, sampler: Sampler, objective: Objective, num_samples: int, *, eps: float | None = None,
                 optimizer: OptimizerName = "sgd", lr: float = 0.1, stop_at_success: bool = True) -> None:
        if eps is not None and eps <= 0:
            raise ValueError(f"eps={eps} must be > 0 (the L∞ bound τ on δ), or null for no bound")
        self.sampler, self.objective = sampler, objective
        self.eps, self.stop_at_success = eps, stop_at_success
        shape = (num_samples, *sampler.latent_shape)
        device = sampler.device
        self.delta = torch.nn.Parameter(torch.zeros(shape, device=device))  # a wrapper may register it
        self.optim = PerSampleOptimizer(shape, optimizer, lr).to(device)
        self.tracker = BestTracker(shape).to(device)

    def to(self, device: torch.device | str) -> LatentEngine:
        """Move the per-sample state to δ's new device (a Lightning module moves δ itself, after ``setup``)."""
        self.delta.data = self.delta.data.to(device)
        self.optim.to(device)
        self.tracker.to(device)
        return self

    def open(self, rows: Tensor) -> Tensor:
        """Bool (len(rows),): the samples a step still samples and updates."""
        if not self.stop_at_success:
            return torch.ones_like(rows, dtype=torch.bool)
        return ~self.tracker.succeeded[rows]

    def finished(self) -> bool:
        """Every sample's result is fixed (its goal reached): more steps would change nothing."""
        return bool(self.tracker.succeeded.all())

    # ----- one optimisation step ----------------------------------------------------------------------
    def step(self, batch: Batch, x_start: Tensor, cond: Tensor | None, *, policy_key: int = 0) -> StepResult:
        """Step the open samples of ``batch``: score ``x_start + δ`` (B, C, H, W), offer it to the tracker, update
        δ in place. ``policy_key`` names the optimisation step (the policy's random draws derive from it)."""
        rows = batch["index"]
        stepped = self.open(rows)
        loss = self.tracker.best_score[rows].clone()  # a closed sample's loss at its first success
        reached_given = not bool(stepped.all())  # a closed sample means the objective has a goal
        if stepped.any():
            if not stepped.all():
                batch, x_start = select(batch, stepped), x_start[stepped]
                cond = None if cond is None else cond[stepped]
            loss[stepped], reached = self._step_rows(batch, x_start, cond, policy_key)
            reached_given = reached_given or reached is not None
        success = self.tracker.success[rows] if reached_given else None
        counted = self.tracker.counted[rows] if reached_given else None
        return StepResult(rows, stepped, loss, success, counted)

    def _step_rows(self, batch: Batch, x_start: Tensor, cond: Tensor | None,
                   policy_key: int) -> tuple[Tensor, Tensor | None]:
        rows = batch["index"]
        leaf = self.delta.detach()[rows].clone().requires_grad_(True)
        images, *others = self.sampler.loss_images(x_start + leaf, cond, policy_key=policy_key)
        loss, reached = self.objective.evaluate(images, batch)
        counted = self._counted(images, batch, rows) if reached is not None else None
        self.tracker.update(rows, leaf.detach(), loss.detach(), reached, counted)
        # DOODL's loss over both EDICT images: the mean with y₀'s; the sample, tracked and reported, is x₀
        if others:
            loss_of_all = torch.stack([loss, *(self.objective.evaluate(other, batch)[0] for other in others)])
            grad = latent_gradient(loss_of_all.mean(0), leaf)
        else:
            grad = latent_gradient(loss, leaf)
        with torch.no_grad():
            delta = self.delta.data
            self.optim.step(delta, grad, rows, base=x_start)  # DOODL renormalises x_T + δ to the start latent's norm
            if self.eps is not None:
                delta[rows] = project_linf(delta[rows], self.eps)
        return loss.detach(), reached

    @torch.no_grad()
    def _counted(self, images: Tensor, batch: Batch, rows: Tensor) -> Tensor | None:
        """Which samples count, read on the images of their first offer (δ = 0, the clean image)."""
        if self.tracker.tensors["offered"][rows].all():
            return None
        return self.objective.counts(images.detach(), batch)

    @torch.no_grad()
    def offer_current(self, batch: Batch, x_start: Tensor, cond: Tensor | None) -> None:
        """Offer the δ of the last update (no step has scored it yet) to the tracker, measured in float32. Samples
        whose result is fixed are skipped: the tracker would keep their first success anyway."""
        keep = ~self.tracker.succeeded[batch["index"]]
        if not keep.any():
            return
        if not keep.all():
            batch, x_start = select(batch, keep), x_start[keep]
            cond = None if cond is None else cond[keep]
        rows = batch["index"]
        images = self.sampler.evaluate(x_start + self.delta.data[rows], cond)
        self.tracker.update(rows, self.delta.data[rows], *self.objective.evaluate(images, batch))

    # ----- the result ---------------------------------------------------------------------------------
    @torch.no_grad()
    def records(self, batch: Batch, x_start: Tensor, cond: Tensor | None,
                measures: Sequence[Measure] = ()) -> SampleRecords:
        """Images before (δ = 0) and after (the best δ) of a batch, measured in float32 by the objective and
        ``measures``: what results, reports and the library attack publish."""
        rows = batch["index"]
        best = self.tracker.best[rows]
        shown = {"reference": ((batch["image"] + 1) / 2).clamp(0, 1)} if "image" in batch else {}
        shown |= {k: v.to(best.device) for k, v in self.objective.reference_images(len(rows)).items()}
        images, measured = {}, {}
        for name, delta in (("original", torch.zeros_like(best)), ("optimized", best)):
            images[name] = self.sampler.evaluate(x_start + delta, cond)
            measured[name] = self.objective.measure(images[name], batch)
            for measure in measures:
                measured[name] |= measure(images[name], batch)
        return SampleRecords(rows, batch["label"], batch["seed"], best.flatten(1).abs().amax(1), images["original"],
                             images["optimized"], measured["original"], measured["optimized"], shown)

    # ----- checkpoints and ranks ----------------------------------------------------------------------
    def state(self) -> dict[str, Tensor]:
        """Every per-sample tensor by name (δ, the optimiser's and the tracker's state): checkpoints and merges."""
        return {"delta": self.delta.data} | {f"optim.{n}": t for n, t in self.optim.tensors.items()} | {
            f"tracker.{n}": t for n, t in self.tracker.tensors.items()}

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Restore the optimiser's and the tracker's state from :meth:`state` (δ is restored by its owner)."""
        self.optim.load_state_dict({n[len("optim."):]: t for n, t in state.items() if n.startswith("optim.")})
        self.tracker.load_state_dict({n[len("tracker."):]: t for n, t in state.items() if n.startswith("tracker.")})

    def merge_across_ranks(self, all_gather: Callable[[Tensor], Tensor], touched: Tensor | None = None) -> None:
        """Every rank takes each sample's state from the rank that owns it (:func:`lit_sdo.optim.merge_across_ranks`).
        A collective: every rank calls it after every step, whether it stepped any sample or not."""
        merge_across_ranks(self.state(), all_gather, touched)
