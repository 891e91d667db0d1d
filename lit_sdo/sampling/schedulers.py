"""Scheduler construction and checks: any diffusers scheduler, configured for optimisation.

A new scheduler costs nothing: diffusers provides it. This module only names the common ones, turns
off the x̂₀ clamp that kills gradients, and gives each sampling run a fresh scheduler state.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SCHEDULERS: dict[str, type] = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "lcm": LCMScheduler,
    "flow_euler": FlowMatchEulerDiscreteScheduler,
}

# Clamping x̂₀ (clip_sample) or dynamic thresholding zeroes the gradient wherever it clips; with an
# untrained model the SDO gradient to x_T was exactly 0. Off by default for optimisation.
_GRADIENT_KILLERS = ("clip_sample", "thresholding")


def build_scheduler(name: str, num_steps: int, base_config: dict[str, Any] | None = None,
                    **overrides: Any) -> SchedulerMixin:
    """A diffusers scheduler by short name, with ``num_steps`` timesteps set.

    Keys of ``base_config`` listed under its ``_use_default_values`` (a config taken from a scheduler built
    in code, e.g. ``dict(DDPMScheduler().config)``) were the source class's defaults, not the model's choice:
    they are dropped, as diffusers' ``from_config`` drops them, so the new class keeps its own defaults. The
    keys this function sets (``clip_sample``/``thresholding`` False) and ``overrides`` always win; diffusers
    would silently restore the class default (DDIM: ``clip_sample=True``) for a key listed there.

    Args:
        name: one of ``SCHEDULERS`` (ddim, ddpm, dpm, euler, lcm, flow_euler).
        num_steps: number of sampling steps N.
        base_config: the loaded model's scheduler config (its β schedule, prediction type...), e.g.
            ``DiffusionModel.scheduler_config``. None warns: the scheduler then has diffusers' default β
            schedule (linear, 1000 steps), which silently mismatches a model trained with another
            (lit_sdo's digits DDPM uses ``squaredcos_cap_v2``). Pass ``{}`` to use the defaults on purpose.
        overrides: config keys to set, e.g. ``prediction_type="v_prediction"``.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler name={name!r} is unknown; allowed values: {', '.join(SCHEDULERS)}")
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    if base_config is None:
        warnings.warn(
            f"build_scheduler({name!r}, {num_steps}) without base_config uses diffusers' default β schedule "
            "(linear, 1000 steps), not the model's: pass base_config=model.scheduler_config, or base_config={} "
            "to use the defaults on purpose",
            stacklevel=2,
        )
    cls = SCHEDULERS[name]
    accepted = inspect.signature(cls.__init__).parameters
    config = _explicit_keys(base_config or {}) | overrides
    for key in _GRADIENT_KILLERS:
        if key in accepted and key not in overrides:
            config[key] = False
    scheduler = cls.from_config(config)
    scheduler.set_timesteps(num_steps)
    return scheduler


def _explicit_keys(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the keys it lists under ``_use_default_values`` (and without that list itself)."""
    defaults = set(config.get("_use_default_values", ()))
    return {key: value for key, value in config.items() if key not in defaults and key != "_use_default_values"}


def warn_if_clipping(scheduler: SchedulerMixin) -> None:
    """Warn when a scheduler clamps x̂₀: gradients are zero wherever the clamp is active."""
    active = [key for key in _GRADIENT_KILLERS if scheduler.config.get(key, False)]
    if active:
        warnings.warn(
            f"{type(scheduler).__name__} has {', '.join(active)}=True: the gradient is zero wherever x̂₀ is "
            f"clamped; rebuild it with build_scheduler(..., {active[0]}=False) for optimisation",
            stacklevel=3,
        )


def fresh_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """A private copy with the step state reset, so one scheduler object serves many sampling runs."""
    if getattr(scheduler, "num_inference_steps", None) is None or getattr(scheduler, "timesteps", None) is None:
        raise ValueError(
            f"scheduler {type(scheduler).__name__} is not configured with timesteps: call "
            "scheduler.set_timesteps(N) first (or use lit_sdo.sampling.build_scheduler)"
        )
    fresh = copy.deepcopy(scheduler)
    if getattr(fresh, "step_index", None) is not None:  # the caller already stepped it: start over
        fresh.set_timesteps(fresh.num_inference_steps, device=fresh.timesteps.device)
    return fresh


def start_step_for(scheduler: SchedulerMixin, timestep: float) -> int:
    """Index of the first scheduled timestep at or below ``timestep`` (e.g. t=600 of 1000, paper Sec. 5.1)."""
    timesteps = scheduler.timesteps
    below = (timesteps <= timestep).nonzero()
    top = scheduler.config.get("num_train_timesteps", float(timesteps.max()))
    if timestep < 0 or timestep > top or len(below) == 0:
        raise ValueError(
            f"timestep={timestep} is outside the schedule [{float(timesteps.min())}, {top}]"
        )
    return int(below[0])
