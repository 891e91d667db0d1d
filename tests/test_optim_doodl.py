"""DOODL's latent optimiser (``PerSampleOptimizer(name="doodl")``): the official update, step by step.

Official code (salesforce/DOODL, doodl.py, ``gen``): g = clip(∇, ±1e-3) of the loss-scaled gradient,
b ← 0.9·b + g, x ← x − b + 1e-4·ξ, x rescaled to its starting norm. Here x = base + δ, rows independent.

Bit for bit, by construction: a row updated alone or in a batch (elementwise operations, a per-row norm over
the same row length, and noise drawn from the row's own seed and step), and a step after a state reload.
The optimiser keeps its momentum in float32, the hand-written update in float64: a stated 1e-9 tolerance.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lit_sdo import optim as optim_module
from lit_sdo.optim import PerSampleOptimizer

SHAPE = (3, 2, 4, 4)


def start(seed: int = 0) -> tuple[Tensor, Tensor]:
    """(base latents (3, 2, 4, 4) ~ N(0, I), δ = 0), float64 so the hand formula matches to rounding."""
    base = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return base, torch.zeros_like(base)


def gradient(step: int) -> Tensor:
    """A gradient whose lr-scaled elements are partly beyond the 1e-3 clip, partly inside it."""
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + step), dtype=torch.float64) * 2e-2


def test_doodl_step_is_the_official_update_without_its_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optim_module, "DOODL_NOISE", 0.0)
    base, delta = start()
    rows = torch.arange(3)
    optimizer = PerSampleOptimizer(SHAPE, "doodl", lr=0.1)
    latent, momentum = base.clone(), torch.zeros_like(base)
    for step in range(4):
        optimizer.step(delta, gradient(step), rows, base=base)
        momentum = 0.9 * momentum + (0.1 * gradient(step)).clamp(-1e-3, 1e-3)
        latent = latent - momentum
        latent = latent * (base.flatten(1).norm(dim=1) / latent.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
        # the momentum buffer is float32 (the optimiser's state): |b| ≤ 1e-2 rounds by ~1e-9 at most
        torch.testing.assert_close(base + delta, latent, rtol=0, atol=1e-9)
    assert optimizer.steps.tolist() == [4, 4, 4]


def test_doodl_keeps_each_latent_on_its_starting_norm_and_adds_its_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    base, delta = start()
    rows = torch.arange(3)
    PerSampleOptimizer(SHAPE, "doodl", lr=0.1).step(delta, gradient(0), rows, base=base)
    torch.testing.assert_close((base + delta).flatten(1).norm(dim=1), base.flatten(1).norm(dim=1), rtol=1e-12,
                               atol=0)
    monkeypatch.setattr(optim_module, "DOODL_NOISE", 0.0)
    _, quiet = start()
    PerSampleOptimizer(SHAPE, "doodl", lr=0.1).step(quiet, gradient(0), rows, base=base)
    per_element = float((delta - quiet).pow(2).mean().sqrt())  # ≈ 1e-4, the noise's std
    assert 0.7e-4 < per_element < 1.3e-4


def test_doodl_noise_of_a_row_depends_on_its_seed_and_step_only() -> None:
    """A row's update is the same whichever rows share its batch and after a resume (the state reloaded)."""
    base, together = start()
    _, alone = start()
    both = PerSampleOptimizer(SHAPE, "doodl", lr=0.1)
    single = PerSampleOptimizer(SHAPE, "doodl", lr=0.1)
    for step in range(2):
        both.step(together, gradient(step), torch.arange(3), base=base)
        single.step(alone, gradient(step)[1:2], torch.tensor([1]), base=base[1:2])
    assert torch.equal(together[1], alone[1]) and torch.equal(alone[0], torch.zeros_like(alone[0]))

    resumed = PerSampleOptimizer(SHAPE, "doodl", lr=0.1)
    resumed.load_state_dict(both.state_dict())
    continued, after_resume = together.clone(), together.clone()
    both.step(continued, gradient(2), torch.arange(3), base=base)
    resumed.step(after_resume, gradient(2), torch.arange(3), base=base)
    assert torch.equal(continued, after_resume)

    _, other_seed = start()
    PerSampleOptimizer(SHAPE, "doodl", lr=0.1, seed=1).step(other_seed, gradient(0), torch.arange(3), base=base)
    _, same_seed = start()
    PerSampleOptimizer(SHAPE, "doodl", lr=0.1).step(same_seed, gradient(0), torch.arange(3), base=base)
    assert not torch.equal(other_seed, same_seed)


def test_doodl_refuses_what_is_not_a_latent() -> None:
    with pytest.raises(ValueError, match=r"optimizer='doodl' optimises latents \(N, C, H, W\).*shape \(3, 16\)") as e:
        PerSampleOptimizer((3, 16), "doodl")
    assert "\n" not in str(e.value)
    base, delta = start()
    optimizer = PerSampleOptimizer(SHAPE, "doodl")
    with pytest.raises(ValueError, match="step\\(\\) needs base=the latent δ is added to") as e:
        optimizer.step(delta, gradient(0), torch.arange(3))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"base has shape \(2, 2, 4, 4\), the gradient \(3, 2, 4, 4\)"):
        optimizer.step(delta, gradient(0), torch.arange(3), base=base[:2])
    assert optimizer.steps.tolist() == [0, 0, 0]  # a refused step changes nothing
