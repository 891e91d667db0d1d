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
from typing import Any, Literal, get_args

import torch
from torch import Tensor

OptimizerName = Literal["sgd", "sign", "adam", "doodl"]
OPTIMIZER_NAMES: tuple[str, ...] = get_args(OptimizerName)

# DOODL's latent optimiser (Wallace et al., ICCV 2023). The values are the defaults of ``gen()`` in the official
# code (salesforce/DOODL, doodl.py), which its latent-traversal loop applies in this order: use_momentum=True with
# "mom = 0.9" and no dampening; clip_grad_val=1e-3 on each element of the loss-scaled gradient; the latent plus
# perturb_grad_scale=1e-4 times unit Gaussian noise; renormalize_latents=True, back to the latent's norm at the start.
DOODL_MOMENTUM = 0.9
DOODL_CLIP = 1e-3
DOODL_NOISE = 1e-4


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
    """Row-wise SGD, sign-SGD (PGD's step), Adam or DOODL's optimiser over per-sample variables (N, ...).

    ``doodl`` optimises a latent x = base + δ as DOODL does (constants above): g = clip(lr·∇, ±1e-3) element-wise
    (lr scales the gradient before the clip, as DOODL's ``grad_scale`` scales its loss), b ← 0.9·b + g,
    x ← x − b + 1e-4·ξ, then x rescaled to ‖base‖, the norm of the latent it started from (DOODL's x_T; for
    an intermediate or inverted latent, its own). ξ is drawn from (seed, row, the row's step count), so a row's
    noise does not depend on which rows share its batch, on the rank, or on a resume.

    Args:
        shape: shape of the whole variable, first dimension = number of samples; (N, C, H, W) for ``doodl``.
        name: ``sgd`` (x -= lr·g, the paper's Sec. 5.1.4), ``sign`` (x -= lr·sign(g), PGD), ``adam``, ``doodl``.
        lr: learning rate.
        betas: Adam's (β1, β2).
        eps: Adam's ε.
        seed: seeds ``doodl``'s per-step noise.
    """

    def __init__(self, shape: tuple[int, ...], name: OptimizerName = "sgd", lr: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, seed: int = 0) -> None:
        if name not in OPTIMIZER_NAMES:
            raise ValueError(f"optimizer={name!r} is unknown; allowed values: {', '.join(OPTIMIZER_NAMES)}")
        if lr <= 0:
            raise ValueError(f"lr={lr} must be > 0")
        if name == "doodl" and len(shape) != 4:
            raise ValueError(f"optimizer='doodl' optimises latents (N, C, H, W), renormalising each to its starting "
                             f"norm; got a variable of shape {tuple(shape)}: use sgd, sign or adam")
        self.name, self.lr, self.betas, self.eps, self.seed = name, lr, betas, eps, seed
        first = shape if name in ("adam", "doodl") else (shape[0], 0)  # Adam's m, or DOODL's momentum b
        second = shape if name == "adam" else (shape[0], 0)
        self.tensors = {"steps": torch.zeros(shape[0], dtype=torch.long),
                        "exp_avg": torch.zeros(first), "exp_avg_sq": torch.zeros(second)}

    @property
    def steps(self) -> Tensor:
        """Updates applied to each row: the row's version, used to merge ranks."""
        return self.tensors["steps"]

    @torch.no_grad()
    def step(self, variable: Tensor, grad: Tensor, rows: Tensor, base: Tensor | None = None) -> None:
        """Update ``variable[rows]`` in place with ``grad`` (len(rows), ...) for those rows.

        ``base`` (len(rows), ...): the latent each row's variable is added to; ``doodl`` needs it (to renormalise
        base + δ), the others ignore it.
        """
        if self.name == "doodl":
            self._check_base(base, grad)
        self.steps[rows] += 1
        if self.name == "doodl":
            variable[rows] = self._doodl_update(variable[rows], grad, rows, base)
            return
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

    @staticmethod
    def _check_base(base: Tensor | None, grad: Tensor) -> None:
        if base is None:
            raise ValueError("optimizer='doodl' renormalises the latent base + δ after every step: step() needs "
                             "base=the latent δ is added to; for a parameter that is not a latent use sgd, sign, adam")
        if base.shape != grad.shape:
            raise ValueError(f"optimizer='doodl': base has shape {tuple(base.shape)}, the gradient "
                             f"{tuple(grad.shape)}; pass the start latent of the rows stepped")

    def _doodl_update(self, delta: Tensor, grad: Tensor, rows: Tensor, base: Tensor) -> Tensor:
        """δ of the rows after one DOODL step (see the class docstring)."""
        g = (self.lr * grad).clamp(-DOODL_CLIP, DOODL_CLIP)
        momentum = self.tensors["exp_avg"][rows].mul_(DOODL_MOMENTUM).add_(g)  # b ← 0.9·b + g
        self.tensors["exp_avg"][rows] = momentum
        latent = base + delta - momentum + DOODL_NOISE * self._noise(rows, grad)  # (B, C, H, W)
        scale = base.flatten(1).norm(dim=1) / latent.flatten(1).norm(dim=1)  # (B,)
        return latent * scale.view(-1, 1, 1, 1) - base

    def _noise(self, rows: Tensor, like: Tensor) -> Tensor:
        """Unit Gaussian (len(rows), ...) drawn from (seed, row, the row's step count)."""
        draws = []
        for row, step in zip(rows.tolist(), self.steps[rows].tolist(), strict=True):
            key = ((self.seed * 1_000_003 + row) * 1_000_003 + step) % 2**63
            draws.append(torch.randn(like.shape[1:], generator=torch.Generator().manual_seed(key)))
        return torch.stack(draws).to(like)


def row_tensor(name: str, doc: str) -> property:
    """A read-only view of one of a :class:`RowState`'s per-sample tensors."""
    return property(lambda self: self.tensors[name], doc=doc)


class BestTracker(RowState):
    """Keeps, per sample, the best variable seen: the first that reaches the goal, else the lowest score.

    The paper keeps the best-loss result (Sec. 5.1.4); for an attack "best" is the first success, the
    smallest change that works, so a sample's result is fixed once it reaches the goal (:attr:`succeeded`).
    Whether a sample counts in success rates is read at its first offer, δ = 0 (an attack counts the samples
    whose clean image is labelled y), and kept in :attr:`counted`; :attr:`success` combines the two.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.tensors = {"best": torch.zeros(shape), "best_score": torch.full((shape[0],), float("inf")),
                        "succeeded": torch.zeros(shape[0], dtype=torch.bool),
                        "counted": torch.ones(shape[0], dtype=torch.bool),
                        "offered": torch.zeros(shape[0], dtype=torch.bool)}

    best = row_tensor("best", "The kept variable, per sample.")
    best_score = row_tensor("best_score", "Score of the kept variable (N,): for a sample that succeeded, its score "
                                          "at the first success.")
    succeeded = row_tensor("succeeded", "Bool (N,): the goal was reached at some offer, so the kept variable no "
                                        "longer changes.")
    counted = row_tensor("counted", "Bool (N,): the sample counts in success rates (read at its first offer; True "
                                    "where nothing was said).")

    @property
    def success(self) -> Tensor:
        """Bool (N,): the goal reached at the kept variable, by a sample that counts. For an attack this is the
        report's success (:func:`lit_sdo.metrics.attack_successes`: fooled, and the clean image labelled y),
        here from the objective's verdicts on the images the optimisation saw."""
        return self.succeeded & self.counted

    @torch.no_grad()
    def update(self, rows: Tensor, candidate: Tensor, score: Tensor, success: Tensor | None = None,
               counted: Tensor | None = None) -> None:
        """Offer ``candidate`` (len(rows), ...) with per-sample ``score`` (lower is better), ``success`` (the goal
        reached) and ``counted`` (read at a row's first offer only; None: the rows count)."""
        success = torch.zeros_like(score, dtype=torch.bool) if success is None else success
        first = ~self.tensors["offered"][rows]
        if counted is not None:
            self.counted[rows[first]] = counted[first]
        self.tensors["offered"][rows] = True
        already = self.succeeded[rows]
        better = ~already & (success | (score < self.best_score[rows]))
        take = rows[better]
        self.best[take] = candidate[better].to(self.best)
        self.best_score[take] = score[better].to(self.best_score)
        self.succeeded[rows] = already | success

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "initial_success" in state and "counted" not in state:
            raise ValueError("the checkpoint's best-δ tracker predates counting successes among clean-correct "
                             "samples (it holds 'initial_success', not 'counted'): start a new run")
        super().load_state_dict(state)


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
