"""The attack task on tiny random models: δ stays in the L∞ ball, the objective moves, results are
written, checkpoints restore, bad input fails in one line. Loaders are replaced by tiny models."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from diffusers import UNet2DModel
from torch import nn

from lit_sdo.datamodules import LabelSeedDataModule
from lit_sdo.models import Classifier, DiffusionModel
from lit_sdo.sampling import PixelUNetDenoiser
from lit_sdo.tasks import attack as attack_module
from lit_sdo.tasks.attack import AttackModule, SDOAttack
from lit_sdo.tasks.latent import LatentOptimizationModule


def tiny_generator(*_args: object, **_kwargs: object) -> DiffusionModel:
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=4)
    return DiffusionModel(name="tiny-ddpm", denoiser=PixelUNetDenoiser(unet).eval(), scheduler_config={},
                          num_classes=3, image_size=8, channels=1)


def tiny_classifier(name: str = "tiny-classifier", **_kwargs: object) -> Classifier:
    torch.manual_seed(1)
    network = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 8 * 8, 3))
    return Classifier(network, name, num_classes=3, input_size=8, channels=1, mean=(0.5,), std=(0.5,))


@pytest.fixture
def tiny_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LatentOptimizationModule, "load_generator", staticmethod(tiny_generator))
    monkeypatch.setattr(attack_module, "load_classifier", tiny_classifier)


def make_trainer(tmp_path, max_epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, default_root_dir=tmp_path,
                     enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, **kwargs)


def attack(tmp_path, **kwargs) -> AttackModule:
    arguments = {"num_steps": 4, "eps": 0.1, "lr": 0.5, "optimizer": "sign", "output_dir": str(tmp_path / "out"),
                 "transfer_classifier": "tiny-transfer", "loss": "ce"} | kwargs  # ce never saturates on random models
    return AttackModule(**arguments)


def data(per_class: int = 2, batch_size: int = 4) -> LabelSeedDataModule:
    return LabelSeedDataModule(num_classes=3, per_class=per_class, batch_size=batch_size)


@pytest.mark.usefixtures("tiny_models")
def test_attack_keeps_delta_in_the_linf_ball_at_every_step_and_writes_results(tmp_path) -> None:
    module = attack(tmp_path)
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen.append(float(pl_module.delta.detach().abs().max()))

    make_trainer(tmp_path, 3, callbacks=[Watch()]).fit(module, datamodule=data(per_class=3, batch_size=4))
    assert len(seen) == 3 * 3  # 9 samples in batches of 4: 3 batches per optimisation step
    assert max(seen) <= 0.1 + 1e-7 and max(seen) > 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    aggregate, samples = results["aggregate"], results["samples"]
    assert aggregate["num_samples"] == 9 and len(samples) == 9
    assert [s["index"] for s in samples] == list(range(9))
    assert aggregate["delta_linf_max"] <= 0.1 + 1e-7
    assert 0 <= aggregate["raw_success_rate"] <= 1 and "transfer_rate" in aggregate
    assert aggregate["lpips_mean"] is None  # no AlexNet weights here: never a random-backbone LPIPS
    assert (tmp_path / "out" / "delta.safetensors").is_file() and (tmp_path / "out" / "grid.png").is_file()


@pytest.mark.usefixtures("tiny_models")
def test_sdo_attack_lowers_the_margin_of_each_sample(tmp_path) -> None:
    """The SDO gradient points downhill: one small SGD step lowers every sample's loss."""
    module = attack(tmp_path, optimizer="sgd", lr=1e-3, eps=None)
    trainer = make_trainer(tmp_path, 1)
    trainer.fit(module, datamodule=data(per_class=2, batch_size=6))
    batch = next(iter(trainer.datamodule.train_dataloader()))
    with torch.no_grad():
        x_start = module.start_latent(batch)
        before = module.loss_and_success(module.generate(x_start, batch["label"], "none"), batch)[0]
        after = module.loss_and_success(module.generate(x_start + module.delta, batch["label"], "none"), batch)[0]
    assert (after < before).all()


@pytest.mark.usefixtures("tiny_models")
def test_checkpoint_resume_gives_the_same_delta_as_an_uninterrupted_run(tmp_path) -> None:
    straight = attack(tmp_path / "a")
    make_trainer(tmp_path / "a", 4).fit(straight, datamodule=data())

    first = attack(tmp_path / "b")
    trainer = make_trainer(tmp_path / "b", 2)
    trainer.fit(first, datamodule=data())
    ckpt = tmp_path / "b.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = attack(tmp_path / "b")
    make_trainer(tmp_path / "b", 4).fit(resumed, datamodule=data(), ckpt_path=ckpt)

    torch.testing.assert_close(resumed.delta, straight.delta, rtol=0, atol=0)
    torch.testing.assert_close(resumed.tracker.best, straight.tracker.best, rtol=0, atol=0)
    assert torch.equal(resumed.optim.steps, straight.optim.steps)


@pytest.mark.usefixtures("tiny_models")
def test_checkpoint_from_another_config_is_refused_in_one_line(tmp_path) -> None:
    module = attack(tmp_path)
    trainer = make_trainer(tmp_path, 1)
    trainer.fit(module, datamodule=data(per_class=2))
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    with pytest.raises(ValueError, match=r"checkpoint δ has shape \(6, 1, 8, 8\), this config expects \(9, 1, 8, 8\)"):
        make_trainer(tmp_path, 2).fit(attack(tmp_path), datamodule=data(per_class=3), ckpt_path=tmp_path / "two.ckpt")


@pytest.mark.usefixtures("tiny_models")
def test_test_subcommand_evaluates_saved_delta(tmp_path) -> None:
    module = attack(tmp_path)
    trainer = make_trainer(tmp_path, 2)
    trainer.fit(module, datamodule=data())
    trained = json.loads((tmp_path / "out" / "results.json").read_text())["aggregate"]
    trainer.save_checkpoint(tmp_path / "done.ckpt")
    (tmp_path / "out" / "results.json").unlink()
    make_trainer(tmp_path, 2).test(attack(tmp_path), datamodule=data(), ckpt_path=tmp_path / "done.ckpt")
    tested = json.loads((tmp_path / "out" / "results.json").read_text())["aggregate"]
    for key in ("num_success", "raw_success_rate", "ssim_mean", "delta_linf_max"):
        assert tested[key] == pytest.approx(trained[key])


@pytest.mark.usefixtures("tiny_models")
@pytest.mark.parametrize(
    ("module_kwargs", "data_kwargs", "message"),
    [
        ({"eps": 0.0}, {}, r"eps=0.0 must be > 0"),
        ({}, {"classes": [0, 5]}, r"class labels 0..5 are out of range for generator tiny-ddpm with 3 classes"),
        ({"targeted": True, "target": 7}, {}, r"target=7 is out of range"),
        ({"policy": "adjoint"}, {}, r"policy name='adjoint' is unknown"),
    ],
)
def test_bad_input_is_one_line(tmp_path, module_kwargs: dict, data_kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        module = attack(tmp_path, **module_kwargs)
        dm = LabelSeedDataModule(**({"num_classes": 3, "per_class": 1} | data_kwargs))
        make_trainer(tmp_path, 1).fit(module, datamodule=dm)


def test_classifier_size_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(LatentOptimizationModule, "load_generator", staticmethod(tiny_generator))
    monkeypatch.setattr(attack_module, "load_classifier",
                        lambda name, **_: Classifier(nn.Flatten(), name, 3, 224, 3, (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(ValueError, match="takes 224×224 images but generator tiny-ddpm makes 8×8"):
        AttackModule(eps=0.1)


def test_library_attack_returns_images_in_unit_range_within_budget() -> None:
    generator, classifier = tiny_generator(), tiny_classifier()
    labels, seeds = torch.tensor([0, 1, 2]), torch.tensor([10, 11, 12])
    adversarial = SDOAttack(generator, classifier, eps=0.1, steps=3, lr=0.05, num_sampling_steps=4,
                            optimizer="sign")(labels, seeds)
    assert adversarial.shape == (3, 1, 8, 8)
    assert adversarial.min() >= 0 and adversarial.max() <= 1


@pytest.mark.usefixtures("tiny_models")
def test_truncated_policy_warns_and_leaves_delta_at_zero(tmp_path) -> None:
    """DRaFT-1 / AlignProp-1 (last_k=1) has no graph back to x_T: a warning, then a zero gradient."""
    with pytest.warns(UserWarning, match="keeps no graph back to the start latent"):
        module = attack(tmp_path, policy="last_k", last_k=1)
    make_trainer(tmp_path, 2).fit(module, datamodule=data())
    assert module.delta.abs().max() == 0
