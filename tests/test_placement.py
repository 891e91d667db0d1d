"""Every network a task touches is a registered module, so Lightning moves and casts it with the task.

A model kept outside the module tree (a dataclass holding a CLIP, a lambda closing over an MLP) stays
on the CPU in float32 when the task moves to a GPU. Here each shipped digits config is built, cast with
``module.to(torch.float64)`` and run forward in float64: an unmoved network fails the forward with a
dtype mismatch, and every parameter and buffer must be float64 afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data.init_args.batch_size=2", "--model.init_args.sampler.num_steps=2"]


def build(config: str, *extra: str, tmp_path: Path):  # noqa: ANN202 - (model, datamodule)
    built = cli.build_cli(["--config", str(ROOT / config), f"--trainer.default_root_dir={tmp_path}", *extra],
                          run=False)
    return built.model, built.datamodule


def assert_all_float64(module: torch.nn.Module) -> None:
    wrong = [name for name, t in [*module.named_parameters(), *module.named_buffers()]
             if t.is_floating_point() and t.dtype != torch.float64]
    assert not wrong, f"not moved by module.to(float64): {wrong[:5]}"


def first_batch(datamodule, n: int = 2) -> dict:  # noqa: ANN001
    items = [datamodule.dataset[i] for i in range(n)]
    return {key: torch.stack([item[key] for item in items]) if isinstance(items[0][key], torch.Tensor)
            else [item[key] for item in items] for key in items[0]}


LATENT_CONFIGS = [
    ("configs/attack/digits.yaml", ["--data.init_args.per_class=1"]),
    ("configs/edit/digits.yaml", ["--data.init_args.num_samples=2"]),
    ("configs/style/digits.yaml", ["--data.init_args.per_class=1"]),
    ("configs/aesthetic/digits.yaml", ["--data.init_args.per_class=1"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("config", "extra"), LATENT_CONFIGS, ids=[c for c, _ in LATENT_CONFIGS])
def test_latent_task_moves_every_network_it_touches(config: str, extra: list[str], tmp_path: Path) -> None:
    module, datamodule = build(config, *TINY, *extra, tmp_path=tmp_path)
    module = module.to(torch.float64)
    assert_all_float64(module)
    batch = first_batch(datamodule)
    batch = {k: v.to(torch.float64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
             for k, v in batch.items()}
    with torch.no_grad():
        x = module.start_latent(batch).to(torch.float64)
        images = module.sampler.generate(x, module.condition(batch), policy="none")
        assert images.dtype == torch.float64
        measured = module.objective.measure(images, batch)
        for measure in module.measures:
            measured |= measure(images, batch)
    assert measured["loss"].dtype == torch.float64  # the objective's networks ran in float64


@pytest.mark.slow
def test_reward_task_moves_its_reward_model(tmp_path: Path) -> None:
    module, _ = build("configs/reward/digits_class.yaml", "--model.init_args.sampler.num_steps=2",
                      tmp_path=tmp_path)
    module = module.to(torch.float64)
    assert_all_float64(module)
    x = module.sampler.initial_noise([0, 1]).to(torch.float64)
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        images = module.sampler.generate(x, labels, policy="none")
        reward = module.reward(images, {"label": labels})
    assert reward.dtype == torch.float64 and reward.shape == (2,)
