"""One optimisation step of per-sample latents through the sampler: the step the LightningModule and the
library's :class:`~lit_sdo.tasks.attack.SDOAttack` both take.

gradient of the objective w.r.t. δ (through the sampler, as the gradient policy allows) → per-sample
update → projection onto the L∞ ball ‖δ‖∞ ≤ τ; the best δ per sample is tracked on the way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_sdo.models.sampler import Sampler
from lit_sdo.objectives import Batch, Objective
from lit_sdo.optim import BestTracker, PerSampleOptimizer, project_linf


def latent_gradient(loss: Tensor, delta: Tensor) -> Tensor:
    """dΣloss/dδ, or zeros when the policy keeps no graph back to δ (DRaFT/AlignProp truncation)."""
    if not loss.requires_grad:
        return torch.zeros_like(delta)
    (grad,) = torch.autograd.grad(loss.sum(), delta, allow_unused=True)
    return torch.zeros_like(delta) if grad is None else grad


def optimisation_step(sampler: Sampler, objective: Objective, x_start: Tensor, cond: Tensor | None, batch: Batch,
                      delta: Tensor, rows: Tensor, optim: PerSampleOptimizer, tracker: BestTracker,
                      eps: float | None, *, policy_key: int = 0) -> tuple[Tensor, Tensor | None]:
    """Score ``x_start + δ[rows]``, offer it to ``tracker``, and update ``delta[rows]`` in place.

    Gradients come from ``torch.autograd.grad`` on a per-batch leaf, so nothing accumulates in ``.grad``
    and DDP never reduces them (each sample is its own problem). ``policy_key`` names the optimisation step
    (the policy's random draws derive from it, see :meth:`Sampler.generate`). Returns the loss (B,) and success.
    """
    leaf = delta.detach()[rows].clone().requires_grad_(True)
    images = sampler.generate(x_start + leaf, cond, policy_key=policy_key)
    loss, reached = objective.evaluate(images, batch)
    counted = None
    if reached is not None and not tracker.tensors["offered"][rows].all():  # a first offer: δ = 0, the clean image
        with torch.no_grad():
            counted = objective.counts(images.detach(), batch)
    tracker.update(rows, leaf.detach(), loss.detach(), reached, counted)
    grad = latent_gradient(loss, leaf)
    with torch.no_grad():
        optim.step(delta, grad, rows, base=x_start)  # DOODL renormalises x_T + δ to the start latent's norm
        if eps is not None:
            delta[rows] = project_linf(delta[rows], eps)
    return loss.detach(), reached


@torch.no_grad()
def score_current(sampler: Sampler, objective: Objective, x_start: Tensor, cond: Tensor | None, batch: Batch,
                  delta: Tensor, rows: Tensor, tracker: BestTracker) -> None:
    """Offer the δ of the last update (not scored by any step yet) to ``tracker``, measured in float32."""
    images = sampler.evaluate(x_start + delta[rows], cond)
    tracker.update(rows, delta[rows], *objective.evaluate(images, batch))
