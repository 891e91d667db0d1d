"""Per-sample optimisation state: each attacked/edited sample is its own optimisation problem.

torch.optim optimizers hold one state for a whole parameter tensor; when one tensor holds the δ of
many samples and a step touches only a batch of them, Adam's moments would still move the others.
Here every row (sample) has its own moments and step count, updated only when that row is stepped.

The state is kept in plain tensors (not module buffers) on purpose: DDP broadcasts buffers from rank
0 at every forward, which would overwrite the rows other ranks own. Tasks save it in checkpoints and
merge it across ranks with :func:`merge_across_ranks` (each row from the rank that owns it), so nothing
is ever averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor

OptimizerName = Literal["sgd", "sign", "adam"]


def project_linf(delta: Tensor, eps: float) -> Tensor:
    """Project onto the L∞ ball ‖δ‖∞ ≤ eps (element-wise clamp)."""
    return delta.clamp(-eps, eps)


class RowState:
    """A named set of tensors whose first dimension is the sample index."""

    tensors: dict[str, Tensor]

    def state_dict(self) -> dict[str, Tensor]:
        return {name: t.clone() for name, t in self.tensors.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, t in self.tensors.items():
            if name not in state or state[name].shape != t.shape:
                got = tuple(state[name].shape) if name in state else "nothing"
                raise ValueError(f"checkpoint state {name!r} has shape {got}, this run expects {tuple(t.shape)}: "
                                 "the checkpoint comes from another config (other samples or image size)")
            t.copy_(state[name])

    def to(self, device: torch.device | str) -> RowState:
        self.tensors = {name: t.to(device) for name, t in self.tensors.items()}
        return self


class PerSampleOptimizer(RowState):
    """Row-wise SGD, sign-SGD (PGD's step) or Adam over a tensor of per-sample variables (N, ...).

    Args:
        shape: shape of the whole variable, first dimension = number of samples.
        name: ``sgd`` (x -= lr·g, the paper's Sec. 5.1.4), ``sign`` (x -= lr·sign(g), PGD), ``adam``.
        lr: learning rate.
        betas: Adam's (β1, β2).
        eps: Adam's ε.
    """

    def __init__(self, shape: tuple[int, ...], name: OptimizerName = "sgd", lr: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if name not in ("sgd", "sign", "adam"):
            raise ValueError(f"optimizer={name!r} is unknown; allowed values: sgd, sign, adam")
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0")
        self.name, self.lr, self.betas, self.eps = name, lr, betas, eps
        moments = shape if name == "adam" else (shape[0], 0)
        self.tensors = {"steps": torch.zeros(shape[0], dtype=torch.long),
                        "exp_avg": torch.zeros(moments), "exp_avg_sq": torch.zeros(moments)}

    @property
    def steps(self) -> Tensor:
        """Updates applied to each row: the row's version, used to merge ranks."""
        return self.tensors["steps"]

    @torch.no_grad()
    def step(self, variable: Tensor, grad: Tensor, rows: Tensor) -> None:
        """Update ``variable[rows]`` in place with ``grad`` (len(rows), ...) for those rows."""
        self.steps[rows] += 1
        if self.name == "sgd":
            update = grad
        elif self.name == "sign":
            update = grad.sign()
        else:
            beta1, beta2 = self.betas
            m = self.tensors["exp_avg"][rows].mul_(beta1).add_(grad, alpha=1 - beta1)
            v = self.tensors["exp_avg_sq"][rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            self.tensors["exp_avg"][rows], self.tensors["exp_avg_sq"][rows] = m, v
            t = self.steps[rows].to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))
            update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + self.eps)
        variable[rows] -= self.lr * update


class BestTracker(RowState):
    """Keeps, per sample, the best variable seen: the first that succeeds, else the lowest score.

    The paper keeps the best-loss result (Sec. 5.1.4); for an attack "best" is the first success, the
    smallest change that works. ``initial_success`` records whether a sample already succeeded at its
    first offer (δ = 0: a clean image the classifier gets wrong), which is no success of the attack.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.tensors = {"best": torch.zeros(shape), "best_score": torch.full((shape[0],), float("inf")),
                        "succeeded": torch.zeros(shape[0], dtype=torch.bool),
                        "initial_success": torch.zeros(shape[0], dtype=torch.bool),
                        "offered": torch.zeros(shape[0], dtype=torch.bool)}

    @property
    def initial_success(self) -> Tensor:
        return self.tensors["initial_success"]

    @property
    def attack_success(self) -> Tensor:
        """Bool (N,): succeeded, and not already at the first offer."""
        return self.succeeded & ~self.initial_success

    @property
    def best(self) -> Tensor:
        return self.tensors["best"]

    @property
    def succeeded(self) -> Tensor:
        return self.tensors["succeeded"]

    @torch.no_grad()
    def update(self, rows: Tensor, candidate: Tensor, score: Tensor, success: Tensor | None = None) -> None:
        """Offer ``candidate`` (len(rows), ...) with per-sample ``score`` (lower is better) and ``success``."""
        success = torch.zeros_like(score, dtype=torch.bool) if success is None else success
        first = ~self.tensors["offered"][rows]
        self.tensors["initial_success"][rows[first]] = success[first]
        self.tensors["offered"][rows] = True
        already = self.succeeded[rows]
        better = ~already & (success | (score < self.tensors["best_score"][rows]))
        take = rows[better]
        self.best[take] = candidate[better].to(self.best)
        self.tensors["best_score"][take] = score[better].to(self.tensors["best_score"])
        self.succeeded[rows] = already | success


def merge_rows_by_version(gathered: dict[str, Tensor], versions: Tensor) -> dict[str, Tensor]:
    """Merge per-rank copies (W, N, ...) row by row, taking each row from the rank that updated it most.

    Every sample is optimised by one rank (or, when DDP pads the last shard, by two ranks doing the
    identical computation), so the rank holding the highest version of a row holds its true state.
    """
    owner = versions.argmax(dim=0)  # (N,)
    rows = torch.arange(owner.shape[0], device=owner.device)
    return {name: t[owner, rows] for name, t in gathered.items()}


def merge_across_ranks(state: dict[str, Tensor], all_gather: Callable[[Tensor], Tensor],
                       touched: Tensor | None = None) -> None:
    """Make every rank hold every sample's current state, in place: each row from the rank that owns it.

    ``state`` holds per-sample tensors (N, ...) including ``optim.steps`` (the row versions);
    ``all_gather`` stacks a tensor from every rank (W, N, ...). ``touched`` (N,) bool marks rows this rank
    changed without an optimiser step (the final scoring): at equal step counts they win over the other
    ranks' stale copies.
    """
    gathered = {name: all_gather(t) for name, t in state.items()}  # (W, N, ...)
    versions = gathered["optim.steps"].long() * 2
    if touched is not None:
        versions = versions + all_gather(touched.long())
    merged = merge_rows_by_version(gathered, versions)
    for name, t in state.items():
        t.copy_(merged[name])


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA of ``model``'s weights into ``ema`` with the usual warm-up: the decay grows from 0 towards
    ``max_decay`` as (1 + step) / (10 + step), so the random initialisation does not dominate early."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p, 1 - decay)


def adamw_with_warmup(parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
                      warmup_steps: int) -> dict[str, Any]:
    """AdamW with a linear learning-rate warm-up over the first ``warmup_steps`` optimiser steps, in the
    form Lightning's ``configure_optimizers`` returns (the scheduler steps per optimiser step, not per epoch):
    the recipe both model-training tasks use."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}
