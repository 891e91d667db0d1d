"""Gradient policies: which denoiser calls of a sampling run build an autograd graph.

SDO (arXiv 2505.07477, Sec. 4.3, Eq. 18) keeps the graph of ONE model call, at step k, while the
scheduler arithmetic of every step keeps its graph, so the identity/skip path x_t -> x_{t-1}
carries gradient back to x_T. The other policies are the baselines the paper compares against.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, fields
from enum import Enum
from typing import Literal, get_args

import torch

PolicyName = Literal["none", "sdo", "full", "checkpoint", "last_k", "random_truncation", "adjoint", "doodl"]
POLICY_NAMES: tuple[str, ...] = get_args(PolicyName)  # the one list, read off the type
# torchdiffeq methods the adjoint runs: fixed-grid ones step on the scheduler's levels, adaptive ones choose their own.
AdjointSolver = Literal["euler", "midpoint", "rk4", "heun3", "explicit_adams", "dopri5", "bosh3", "adaptive_heun",
                        "dopri8"]
ADJOINT_SOLVERS: tuple[str, ...] = get_args(AdjointSolver)
# What a baseline keeps for its backward: every level's state ("all", as the official code runs) or the end states
# only, rebuilt in backward ("ends": memory flat in N).
BaselineStates = Literal["all", "ends"]
BASELINE_STATES: tuple[str, ...] = get_args(BaselineStates)
# Which EDICT outputs DOODL's loss gradient reaches: x₀ and y₀ (DOODL's default) or x₀ only.
EdictImages = Literal["both", "first"]
EDICT_IMAGES: tuple[str, ...] = get_args(EdictImages)
# The paper's baselines replace the scheduler's step loop by their own sampler (lit_sdo.sampling.baselines).
BASELINE_NAMES: tuple[str, ...] = ("adjoint", "doodl")
# The policies whose kept calls may be rebuilt in backward instead of keeping their graph.
RECOMPUTABLE_NAMES: tuple[str, ...] = ("sdo", "last_k", "random_truncation")


class CallMode(Enum):
    """How one denoiser call (and the scheduler step after it) is run."""

    OFF = "off"  # whole step under no_grad: no gradient passes through it at all
    SKIP = "skip"  # model call under no_grad, scheduler arithmetic keeps its graph (SDO's sg(u))
    GRAPH = "graph"  # model call and step keep their graph
    CHECKPOINT = "checkpoint"  # model call recomputed in backward (torch.utils.checkpoint)
    RECOMPUTE = "recompute"  # no graph; the baseline's own backward re-runs the call (adjoint ODE, EDICT)


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
            ``adjoint`` AdjointDPM (Pan et al., ICLR 2024): the probability-flow ODE forward, the adjoint
            ODE backward (:mod:`lit_sdo.sampling.adjoint`); ``doodl`` DOODL (Wallace et al., ICCV 2023):
            EDICT's invertible coupled sampler, one step at a time re-run with a graph in backward
            (:mod:`lit_sdo.sampling.edict`). These two are their own samplers: their forward is the ODE /
            EDICT chain, which equals the scheduler's chain only approximately (adjoint with ``euler`` and
            ``substeps=1`` on DDIM, Euler or flow-matching Euler: up to rounding; on DDPM, DPM-Solver or
            LCM, ``adjoint`` integrates the deterministic probability-flow ODE of the same noise schedule).
        k: for ``sdo``, the index (0-based, among the steps actually run) of the model call that keeps
            its graph; ``"random"`` draws it uniformly from [0, N) on every call (paper Fig. 5, with
            the upper end excluded so every call yields a gradient step).
        last_k: for ``last_k``, how many final steps keep their graph.
        tail: for ``sdo``, how many final model calls also keep their graph (SDO with an exact tail):
            the plan keeps step ``k`` AND the last ``tail`` calls; every other call keeps only the skip
            path sg(u). ``tail = N`` is ``full``; ``tail = 0`` is plain SDO.
        recompute: for ``sdo``, ``last_k`` and ``random_truncation``, the kept calls save only their inputs in
            forward and rebuild their graph in backward (``torch.utils.checkpoint``): the same gradient for
            one more model call per kept call, and the kept graph no longer coexists with what the forward
            builds after it. With SD1.5's VAE decode after the chain, SDO's peak becomes the larger of the
            two graphs instead of their sum; the truncation policies hold one call's graph at a time (how
            AlignProp fits K calls in memory: gradient checkpointing).
        solver: for ``adjoint`` (AdjointDPM), the torchdiffeq method of the forward and adjoint ODE solves;
            None: the official code's default for the model's family, ``explicit_adams`` for pixel models
            (no VAE), ``euler`` for latent models (:func:`lit_sdo.sampling.adjoint.default_solver`).
        substeps: for ``adjoint``, fixed-grid solver steps per sampling step (1: the official code's grid,
            the scheduler's own levels; more steps make the adjoint's gradient exact). Not with
            ``explicit_adams``, a multistep method the official code runs on the levels themselves.
        states: for ``adjoint`` and ``doodl``, what the forward keeps for the backward. ``all`` (the official
            code): every level's state, N + 1 latents for ``adjoint`` (torchdiffeq restarts the backward from
            the stored state at each level), each step's input pair, 2N latents, for ``doodl`` (memcnn's
            ``keep_input``: each step re-run with a graph from its stored inputs, no inverse calls). ``ends``:
            the end states only, rebuilt in backward (the adjoint ODE integrated back / EDICT's inverse step,
            two more model calls per step): memory flat in N.
        rtol: for ``adjoint`` with an adaptive solver (dopri5, ...), the relative tolerance.
        atol: for ``adjoint`` with an adaptive solver, the absolute tolerance.
        mixing: for ``doodl``, EDICT's mixing coefficient p (0.93 in EDICT, Sec. 4, and DOODL).
        leapfrog: for ``doodl``, alternate which EDICT sequence is updated first on odd steps (EDICT's
            reference pipeline default).
        images: for ``doodl``, which EDICT outputs the loss is taken over: ``both`` x₀ and y₀ (DOODL's loss, the
            mean over both decoded images; y₀ is the sampling run's ``partner``) or ``first``, x₀ only (DOODL's
            ``optimize_first_edict_image_only``).
        seed: seeds the policy's own generator, which draws the random k / K whenever ``plan`` is
            given no generator. The draws never touch torch's global RNG, which stochastic schedulers
            (DDPM, LCM) use for their noise when sampling without a generator: otherwise a random
            policy would change the forward samples.
    """

    name: PolicyName = "sdo"
    k: int | Literal["random"] = 0
    last_k: int = 1
    tail: int = 0
    recompute: bool = False
    solver: AdjointSolver | None = None
    substeps: int = 1
    states: BaselineStates = "all"
    rtol: float = 1e-5
    atol: float = 1e-5
    mixing: float = 0.93
    leapfrog: bool = True
    images: EdictImages = "both"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in POLICY_NAMES:
            raise ValueError(f"policy name={self.name!r} is unknown; allowed values: {', '.join(POLICY_NAMES)}")
        if self.k != "random" and (not isinstance(self.k, int) or self.k < 0):
            raise ValueError(f"policy k={self.k!r} must be a step index >= 0 or 'random'")
        if self.last_k < 1:
            raise ValueError(f"policy last_k={self.last_k} must be >= 1")
        self._check_options()
        object.__setattr__(self, "_generator", torch.Generator().manual_seed(self.seed))  # not a field: no eq/hash

    def __getstate__(self) -> dict[str, object]:
        """Pickle / YAML (hparams) state: the fields only; a restored policy restarts its stream from ``seed``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict[str, object]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_generator", torch.Generator().manual_seed(self.seed))

    def _check_options(self) -> None:
        """One-line errors for the options of SDO's tail and the paper's baselines."""
        if not isinstance(self.tail, int) or self.tail < 0:
            raise ValueError(f"policy tail={self.tail!r} must be an integer >= 0")
        if self.tail and self.name != "sdo":
            raise ValueError(f"policy tail={self.tail} applies to 'sdo' only, not {self.name!r}")
        if self.recompute and self.name not in RECOMPUTABLE_NAMES:
            raise ValueError(f"policy recompute={self.recompute} applies to {', '.join(RECOMPUTABLE_NAMES)} only, "
                             f"not {self.name!r}; use 'checkpoint' for every call")
        if self.solver is not None and self.solver not in ADJOINT_SOLVERS:
            raise ValueError(f"policy solver={self.solver!r} is unknown; allowed values: {', '.join(ADJOINT_SOLVERS)}")
        if not isinstance(self.substeps, int) or self.substeps < 1:
            raise ValueError(f"policy substeps={self.substeps!r} must be an integer >= 1")
        if self.solver is not None:
            check_substeps(self.solver, self.substeps)
        if self.states not in BASELINE_STATES:
            raise ValueError(f"policy states={self.states!r} is unknown; allowed values: {', '.join(BASELINE_STATES)}")
        if self.states != "all" and self.name not in BASELINE_NAMES:
            raise ValueError(f"policy states={self.states!r} applies to {', '.join(BASELINE_NAMES)} only, "
                             f"not {self.name!r}")
        if self.images not in EDICT_IMAGES:
            raise ValueError(f"policy images={self.images!r} is unknown; allowed values: {', '.join(EDICT_IMAGES)}")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"policy rtol={self.rtol}, atol={self.atol} must both be > 0")
        if not 0 < self.mixing <= 1:
            raise ValueError(f"policy mixing={self.mixing} must be in (0, 1] (EDICT's p; 0.93 by default)")

    @property
    def label(self) -> str:
        """The string form :func:`parse_policy` reads back: the name, then the options that differ from the defaults."""
        parts = [f"last_k={self.last_k}" if self.name == "last_k" else self.name]
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "name" or value == field.default or (field.name == "last_k" and self.name == "last_k"):
                continue
            parts.append("random" if field.name == "k" and value == "random" else f"{field.name}={value}")
        return "-".join(parts)

    def check_steps(self, num_steps: int) -> None:
        """One-line ValueError if a fixed option (``k``, ``tail``, ``last_k``) cannot fit a ``num_steps``-call run.

        ``plan`` runs it on every call; a task's sampler runs it when it is built, so a tail longer than the
        run is refused before the first optimisation step instead of at it."""
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be >= 1")
        if self.name == "sdo" and self.k != "random" and not self.k < num_steps:
            raise ValueError(f"policy k={self.k} is outside [0, {num_steps}) for a {num_steps}-step run")
        if self.name == "sdo" and self.tail > num_steps:
            raise ValueError(f"policy tail={self.tail} exceeds the run's {num_steps} steps; "
                             f"allowed: 0 to {num_steps}")
        if self.name == "last_k" and self.last_k > num_steps:
            raise ValueError(f"policy last_k={self.last_k} exceeds the run's {num_steps} steps; "
                             f"allowed: 1 to {num_steps}")

    def plan(self, num_steps: int, generator: torch.Generator | None = None) -> list[CallMode]:
        """Return the call mode of each of ``num_steps`` steps, drawing random choices from ``generator``
        (the policy's own seeded generator when None)."""
        self.check_steps(num_steps)
        if self.name == "none":
            return [CallMode.OFF] * num_steps
        if self.name == "full":
            return [CallMode.GRAPH] * num_steps
        if self.name == "checkpoint":
            return [CallMode.CHECKPOINT] * num_steps
        if self.name in BASELINE_NAMES:
            return [CallMode.RECOMPUTE] * num_steps
        if self.name == "sdo":
            k = self._draw(num_steps, generator) if self.k == "random" else self.k
            kept = {k} | set(range(num_steps - self.tail, num_steps))
            return [self._kept_mode if i in kept else CallMode.SKIP for i in range(num_steps)]
        if self.name == "last_k":
            kept = self.last_k
        else:  # random_truncation
            kept = self._draw(num_steps, generator) + 1
        return [CallMode.OFF] * (num_steps - kept) + [self._kept_mode] * kept

    @property
    def _kept_mode(self) -> CallMode:
        """How a call that carries gradient runs: with its graph, or rebuilt in backward (``recompute``)."""
        return CallMode.CHECKPOINT if self.recompute else CallMode.GRAPH

    def _draw(self, num_steps: int, generator: torch.Generator | None) -> int:
        """Uniform integer in [0, num_steps), from ``generator`` or else the policy's own (never the global RNG)."""
        own: torch.Generator = self._generator  # type: ignore[attr-defined]
        return int(torch.randint(num_steps, (1,), generator=own if generator is None else generator).item())


def check_substeps(solver: str, substeps: int) -> None:
    """One-line error for substeps on a multistep solver: Adams–Bashforth runs on the levels themselves."""
    if solver == "explicit_adams" and substeps > 1:
        raise ValueError(f"policy substeps={substeps} cannot refine solver='explicit_adams' (a multistep method, "
                         "the official AdjointDPM default for pixel models, run on the sampling levels): use "
                         f"substeps=1, or name a one-step solver, e.g. adjoint-solver=rk4-substeps={substeps}")


def as_policy(policy: GradientPolicy | str) -> GradientPolicy:
    """Accept a policy object or its string form (see :func:`parse_policy`; ``"sdo"`` is SDO at step 0).

    A string always gives the same policy object, so a random policy named by a string keeps drawing
    from one generator across calls instead of restarting it (same K every call)."""
    return policy if isinstance(policy, GradientPolicy) else _policy_named(policy)


@functools.cache
def _policy_named(text: str) -> GradientPolicy:
    return parse_policy(text)


# Options a policy string may set, with the type each value is read as.
_OPTION_TYPES: dict[str, type] = {"k": int, "last_k": int, "tail": int, "recompute": bool, "solver": str,
                                  "substeps": int, "states": str, "rtol": float, "atol": float, "mixing": float,
                                  "leapfrog": bool, "images": str, "seed": int}


def parse_policy(text: str) -> GradientPolicy:
    """A policy from its string form, for configs and benchmark lists.

    ``name`` then ``-option=value`` pairs, e.g. ``sdo``, ``sdo-random`` (k drawn per call), ``sdo-k=3``,
    ``sdo-tail=4``, ``sdo-recompute=true``, ``last_k=2`` (the name's own option),
    ``adjoint-solver=rk4-substeps=4``, ``adjoint-states=ends``, ``doodl-mixing=0.9``, ``doodl-images=first``.
    :attr:`GradientPolicy.label` writes this form back.
    """
    head, *options = re.split(r"-(?=[a-z_]+(?:=|-|$))", text.strip())  # "-" before an option (not in 1e-5)
    name, _, own = head.partition("=")
    fields: dict[str, object] = {}
    if own:
        options.insert(0, f"{name}={own}")
    for option in options:
        key, sep, value = option.partition("=")
        if not sep and key == "random":
            key, value = "k", "random"
        elif not sep or key not in _OPTION_TYPES:
            raise ValueError(f"policy {text!r}: option {option!r} is unknown; allowed: random, "
                             + ", ".join(f"{k}=..." for k in _OPTION_TYPES))
        fields[key] = _read_option(text, key, value)
    return GradientPolicy(name=name, **fields)  # type: ignore[arg-type]


def _read_option(text: str, key: str, value: str) -> object:
    """One option's value as its field's type; one-line error naming the policy string otherwise."""
    if key == "k" and value == "random":
        return value
    kind = _OPTION_TYPES[key]
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"policy {text!r}: {key}={value!r} must be true or false")
        return value.lower() in ("true", "1")
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"policy {text!r}: {key}={value!r} must be a{'n' if kind is int else ''} "
                         f"{kind.__name__}") from None
