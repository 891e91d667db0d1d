"""build_scheduler: x̂₀ clipping stays off whatever the base config says, and a missing model config warns."""

from __future__ import annotations

import warnings

import pytest
from diffusers import DDPMScheduler

from lit_sdo.sampling import build_scheduler

# scheduler_config.json of google/ddpm-ema-celebahq-256 (hub DDPM configs set clip_sample explicitly)
HUB_DDPM_CONFIG = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
                   "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000,
                   "trained_betas": None}


@pytest.mark.parametrize("route", ["hub json", "built in code", "saved with defaults listed"])
@pytest.mark.parametrize("override", [{}, {"clip_sample": False}])
def test_build_scheduler_turns_clipping_off_whatever_the_base_config(route: str, override: dict) -> None:
    """diffusers' from_config restores the class default for keys listed in ``_use_default_values``: a config
    taken from a scheduler built in code lists clip_sample there, and DDIM's default is clip_sample=True."""
    if route == "hub json":
        base = dict(HUB_DDPM_CONFIG)
    elif route == "built in code":
        base = dict(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)
        assert "clip_sample" in base["_use_default_values"]
    else:
        base = dict(HUB_DDPM_CONFIG, beta_schedule="squaredcos_cap_v2", _use_default_values=["clip_sample"])
    for name in ("ddim", "ddpm", "lcm"):
        scheduler = build_scheduler(name, 30, base_config=base, **override)
        assert scheduler.config["clip_sample"] is False, name
        assert scheduler.config["beta_schedule"] == base["beta_schedule"]  # the model's choices are kept
    assert build_scheduler("ddim", 30, base_config=base, clip_sample=True).config["clip_sample"] is True


def test_build_scheduler_without_the_model_config_warns() -> None:
    with pytest.warns(UserWarning, match="without base_config uses diffusers' default β schedule"):
        scheduler = build_scheduler("ddim", 50)
    assert scheduler.config["beta_schedule"] == "linear"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_scheduler("ddim", 50, base_config={})  # the defaults, on purpose
