"""Gradient policies: which denoiser calls of a sampling run build an autograd graph.

SDO (arXiv 2505.07477, Sec. 4.3, Eq. 18) keeps the graph of ONE model call, at step k, while the
scheduler arithmetic of every step keeps its graph, so the identity/skip path x_t -> x_{t-1}
carries gradient back to x_T. The other policies are the baselines the paper compares against.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from enum import Enum
from typing import Literal

import torch

PolicyName = Literal["none", "sdo", "full", "checkpoint", "last_k", "random_truncation"]
POLICY_NAMES: tuple[str, ...] = ("none", "sdo", "full", "checkpoint", "last_k", "random_truncation")


class CallMode(Enum):
    """How one denoiser call (and the scheduler step after it) is run."""

    OFF = "off"  # whole step under no_grad: no gradient passes through it at all
    SKIP = "skip"  # model call under no_grad, scheduler arithmetic keeps its graph (SDO's sg(u))
    GRAPH = "graph"  # model call and step keep their graph
    CHECKPOINT = "checkpoint"  # model call recomputed in backward (torch.utils.checkpoint)


@dataclass(frozen=True)
class GradientPolicy:
    """Which model calls of an N-step sampling run carry gradient.

    Attributes:
        name: ``none`` plain sampling under no_grad; ``sdo`` one model call with a graph (step ``k``);
            ``full`` backprop through every step; ``checkpoint`` exact gradient recomputing each model
            call in backward (AlignProp's memory trick); ``last_k`` graph through the last ``last_k``
            steps only, earlier steps detached (DRaFT-K; ``last_k=1`` is AlignProp-1 / DRaFT-1);
            ``random_truncation`` like ``last_k`` with K drawn uniformly from [1, N] per call
            (AlignProp-uniform).
        k: for ``sdo``, the index (0-based, among the steps actually run) of the model call that keeps
            its graph; ``"random"`` draws it uniformly from [0, N) on every call (paper Fig. 5, with
            the upper end excluded so every call yields a gradient step).
        last_k: for ``last_k``, how many final steps keep their graph.
        seed: seeds the policy's own generator, which draws the random k / K whenever ``plan`` is
            given no generator. The draws never touch torch's global RNG, which stochastic schedulers
            (DDPM, LCM) use for their noise when sampling without a generator: otherwise a random
            policy would change the forward samples.
    """

    name: PolicyName = "sdo"
    k: int | Literal["random"] = 0
    last_k: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in POLICY_NAMES:
            raise ValueError(f"policy name={self.name!r} is unknown; allowed values: {', '.join(POLICY_NAMES)}")
        if self.k != "random" and (not isinstance(self.k, int) or self.k < 0):
            raise ValueError(f"policy k={self.k!r} must be a step index >= 0 or 'random'")
        if self.last_k < 1:
            raise ValueError(f"policy last_k={self.last_k} must be >= 1")
        object.__setattr__(self, "_generator", torch.Generator().manual_seed(self.seed))  # not a field: no eq/hash

    def __getstate__(self) -> dict[str, object]:
        """Pickle / YAML (hparams) state: the fields only; a restored policy restarts its stream from ``seed``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict[str, object]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_generator", torch.Generator().manual_seed(self.seed))

    def plan(self, num_steps: int, generator: torch.Generator | None = None) -> list[CallMode]:
        """Return the call mode of each of ``num_steps`` steps, drawing random choices from ``generator``
        (the policy's own seeded generator when None)."""
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be >= 1")
        if self.name == "none":
            return [CallMode.OFF] * num_steps
        if self.name == "full":
            return [CallMode.GRAPH] * num_steps
        if self.name == "checkpoint":
            return [CallMode.CHECKPOINT] * num_steps
        if self.name == "sdo":
            k = self._draw(num_steps, generator) if self.k == "random" else self.k
            if not 0 <= k < num_steps:
                raise ValueError(f"policy k={k} is outside [0, {num_steps}) for a {num_steps}-step run")
            return [CallMode.GRAPH if i == k else CallMode.SKIP for i in range(num_steps)]
        if self.name == "last_k":
            if self.last_k > num_steps:
                raise ValueError(f"policy last_k={self.last_k} exceeds the run's {num_steps} steps")
            kept = self.last_k
        else:  # random_truncation
            kept = self._draw(num_steps, generator) + 1
        return [CallMode.OFF] * (num_steps - kept) + [CallMode.GRAPH] * kept

    def _draw(self, num_steps: int, generator: torch.Generator | None) -> int:
        """Uniform integer in [0, num_steps), from ``generator`` or else the policy's own (never the global RNG)."""
        own: torch.Generator = self._generator  # type: ignore[attr-defined]
        return int(torch.randint(num_steps, (1,), generator=own if generator is None else generator).item())


def as_policy(policy: GradientPolicy | str) -> GradientPolicy:
    """Accept a policy object or a bare name (``"sdo"`` means SDO at the first step).

    A name always gives the same policy object, so a random policy named by a string keeps drawing
    from one generator across calls instead of restarting it (same K every call)."""
    return policy if isinstance(policy, GradientPolicy) else _policy_named(policy)


@functools.cache
def _policy_named(name: str) -> GradientPolicy:
    return GradientPolicy(name=name)  # type: ignore[arg-type]
