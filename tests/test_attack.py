"""The attack (latent optimisation + classifier objective) on tiny random models: δ stays in the L∞ ball,
the objective moves, results are written and agree with each other, checkpoints restore, bad input fails
in one line. The generator loader is patched to return a tiny model (tests/conftest.py); the objective is
given tiny classifiers.

Bit for bit, by construction (the same operations on the same shapes in the same order): resume vs an
uninterrupted run (the checkpoint restores δ, the optimiser state and the tracker exactly, and the same
batches follow); the library attack from lists vs from tensors; ``sdo-tail=N`` vs ``full`` (the same call
modes, hence the same calls); predictions recomputed by the same classifier on the same images and batch.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import make_tiny_unet, patch_loaders, tiny_classifier, tiny_generator
from torch import nn

from lit_sdo.datamodules import LabelSeedDataModule
from lit_sdo.io import read_tensors
from lit_sdo.models import Classifier, DiffusionModel
from lit_sdo.models.sampler import SamplerSpec
from lit_sdo.objectives import ClassifierObjective
from lit_sdo.sampling import PixelUNetDenoiser, parse_policy
from lit_sdo.tasks.attack import SDOAttack
from lit_sdo.tasks.latent import LatentOptimizationModule

SAMPLER_KEYS = {"num_steps", "policy", "k", "last_k", "model"}
OBJECTIVE_KEYS = {"loss", "targeted", "target", "kappa", "transfer_classifier", "resize_for_classifier"}


def make_trainer(tmp_path, max_epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, default_root_dir=tmp_path,
                     enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, **kwargs)


def attack(tmp_path, classifier: Classifier | None = None, **kwargs) -> LatentOptimizationModule:
    """The attack config of configs/attack/digits.yaml, tiny: 4 sampling steps, ce loss (never saturates on
    random models), sign steps so δ reaches the bound; the tiny classifiers are built here and injected."""
    arguments = {"num_steps": 4, "eps": 0.1, "lr": 0.5, "optimizer": "sign", "output_dir": str(tmp_path / "out"),
                 "transfer_classifier": "tiny-transfer", "loss": "ce", "model": "tiny-ddpm"} | kwargs
    sampler = SamplerSpec(**{k: v for k, v in arguments.items() if k in SAMPLER_KEYS})
    options = {k: v for k, v in arguments.items() if k in OBJECTIVE_KEYS}
    classifier = tiny_classifier("tiny-classifier") if classifier is None else classifier
    transfer = options.pop("transfer_classifier")
    transfer = None if transfer is None else tiny_classifier(transfer)
    objective = ClassifierObjective(classifier, transfer_classifier=transfer, **options)
    rest = {k: v for k, v in arguments.items() if k not in SAMPLER_KEYS | OBJECTIVE_KEYS}
    return LatentOptimizationModule(sampler=sampler, objective=objective, **rest)


def data(per_class: int = 2, batch_size: int = 4, seed: int = 0) -> LabelSeedDataModule:
    return LabelSeedDataModule(num_classes=3, per_class=per_class, batch_size=batch_size, seed=seed)


def read_results(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "results.json").read_text())


@pytest.mark.usefixtures("tiny_models")
def test_attack_keeps_delta_in_the_linf_ball_at_every_step_and_writes_consistent_results(tmp_path) -> None:
    module = attack(tmp_path)
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            seen.append(float(pl_module.delta.detach().abs().max()))

    make_trainer(tmp_path, 3, callbacks=[Watch()]).fit(module, datamodule=data(per_class=3, batch_size=4))
    assert len(seen) == 3 * 3  # 9 samples in batches of 4: 3 batches per optimisation step
    assert max(seen) == pytest.approx(0.1)  # sign steps of 0.5 reach the bound, projection holds it there
    results = read_results(tmp_path)
    assert results["objective"] == "ClassifierObjective"
    assert results["config"]["sampler"]["num_steps"] == 4 and results["config"]["eps"] == 0.1
    assert results["config"]["objective"]["class_path"] == "lit_sdo.objectives.classifier.ClassifierObjective"
    aggregate, samples = results["aggregate"], results["samples"]
    assert aggregate["num_samples"] == 9 and len(samples) == 9
    assert [s["index"] for s in samples] == list(range(9))
    assert [(s["label"], s["seed"]) for s in samples] == [(j % 3, j) for j in range(9)]
    assert 0 < aggregate["delta_linf_max"] <= 0.1 + 1e-7
    assert aggregate["lpips_mean"] is None  # no AlexNet weights here: never a random-backbone LPIPS
    assert aggregate["seconds_per_step"] > 0
    # success = fooled AND the clean image was labelled y, the same in every published place
    for s in samples:
        assert s["success"] == (s["adv_pred"] != s["label"] and s["clean_pred"] == s["label"])
    correct = [s for s in samples if s["clean_pred"] == s["label"]]
    assert aggregate["num_clean_correct"] == len(correct)
    assert aggregate["num_success"] == sum(s["success"] for s in samples)
    assert aggregate["success_rate"] == pytest.approx(aggregate["num_success"] / len(correct))
    assert aggregate["raw_success_rate"] == pytest.approx(sum(s["adv_pred"] != s["label"] for s in samples) / 9)
    successes = [s for s in samples if s["success"]]
    transferred = [s for s in successes if s["transfer_adv_pred"] != s["label"]]
    assert aggregate["transfer_rate"] == pytest.approx(len(transferred) / len(successes))
    tensors = read_tensors(tmp_path / "out" / "delta.safetensors")
    assert tensors["succeeded"].tolist() == [s["success"] for s in samples]
    torch.testing.assert_close(tensors["delta"], module.engine.tracker.best)
    assert [s["delta_linf"] for s in samples] == pytest.approx(tensors["delta"].flatten(1).abs().amax(1).tolist())
    assert (tmp_path / "out" / "grid.png").is_file()


@pytest.mark.usefixtures("tiny_models")
def test_sdo_attack_lowers_the_loss_of_each_sample(tmp_path) -> None:
    """The SDO gradient points downhill: one small SGD step lowers every sample's loss."""
    module = attack(tmp_path, optimizer="sgd", lr=1e-3, eps=None)
    trainer = make_trainer(tmp_path, 1)
    trainer.fit(module, datamodule=data(per_class=2, batch_size=6))
    batch = next(iter(trainer.datamodule.train_dataloader()))
    assert module.delta.abs().max() > 0
    with torch.no_grad():
        x_start, labels = module.start_latent(batch), batch["label"]
        before = module.objective(module.sampler.generate(x_start, labels, policy="none"), batch)
        after = module.objective(module.sampler.generate(x_start + module.delta, labels, policy="none"), batch)
    assert (after < before).all()
    samples = read_results(tmp_path)["samples"]
    torch.testing.assert_close(torch.tensor([s["clean_pred"] for s in samples]),
                               module.objective.classifier(module.sampler.generate(x_start, labels, "none")).argmax(1))


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

    assert straight.delta.abs().max() > 0
    torch.testing.assert_close(resumed.delta, straight.delta, rtol=0, atol=0)
    for name, value in straight.engine.state().items():
        assert torch.equal(resumed.engine.state()[name], value), name
    steps, fooled = straight.engine.optim.steps, straight.engine.tracker.succeeded
    assert (steps[~fooled] == 4).all() and (steps[fooled] <= 4).all()  # a fooled sample is stepped no more


@pytest.mark.usefixtures("tiny_models")
def test_checkpoint_of_another_sample_set_is_refused_in_one_line(tmp_path) -> None:
    module = attack(tmp_path)
    trainer = make_trainer(tmp_path, 1)
    trainer.fit(module, datamodule=data(per_class=2))
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    for other in (data(per_class=3), data(per_class=2, seed=1)):  # other samples, or the same count other seeds
        with pytest.raises(ValueError, match=r"^the checkpoint was written for another sample set[^\n]*$"):
            make_trainer(tmp_path, 2).fit(attack(tmp_path), datamodule=other, ckpt_path=tmp_path / "two.ckpt")


def test_checkpoint_of_another_generator_size_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path) -> None:
    patch_loaders(monkeypatch)
    module = attack(tmp_path)
    trainer = make_trainer(tmp_path, 1)
    trainer.fit(module, datamodule=data())
    trainer.save_checkpoint(tmp_path / "small.ckpt")

    def large(*_a: object, **_k: object) -> DiffusionModel:
        denoiser = PixelUNetDenoiser(make_tiny_unet(num_class_embeds=4, sample_size=16)).eval()
        return DiffusionModel("tiny-16", denoiser, {}, num_classes=3, image_size=16, channels=1)

    patch_loaders(monkeypatch, generator=large)
    expected = r"checkpoint δ has shape \(6, 1, 8, 8\), this config expects \(6, 1, 16, 16\)"
    with pytest.raises(ValueError, match=expected):
        make_trainer(tmp_path, 2).fit(attack(tmp_path, resize_for_classifier=True), datamodule=data(),
                                      ckpt_path=tmp_path / "small.ckpt")


@pytest.mark.usefixtures("tiny_models")
def test_test_subcommand_evaluates_saved_delta(tmp_path) -> None:
    module = attack(tmp_path)
    trainer = make_trainer(tmp_path, 2)
    trainer.fit(module, datamodule=data())
    trained = read_results(tmp_path)
    trainer.save_checkpoint(tmp_path / "done.ckpt")
    (tmp_path / "out" / "results.json").unlink()
    make_trainer(tmp_path, 2).test(attack(tmp_path), datamodule=data(), ckpt_path=tmp_path / "done.ckpt")
    tested = read_results(tmp_path)
    assert trained["aggregate"]["delta_linf_max"] > 0
    for key in ("num_success", "raw_success_rate", "ssim_mean", "delta_linf_max", "l2_mean"):
        assert tested["aggregate"][key] == pytest.approx(trained["aggregate"][key])
    assert [s["adv_pred"] for s in tested["samples"]] == [s["adv_pred"] for s in trained["samples"]]
    assert not (tmp_path / "out" / "results.json.previous-1").exists()  # the deleted one is not brought back
    assert (tmp_path / "out" / "delta.safetensors.previous-1").is_file()  # the trained run's is kept


@pytest.mark.usefixtures("tiny_models")
@pytest.mark.parametrize(
    ("module_kwargs", "data_kwargs", "message"),
    [
        ({"eps": 0.0}, {}, r"eps=0.0 must be > 0"),
        ({}, {"classes": [0, 5]}, r"class labels 0..5 are out of range for generator tiny-ddpm with 3 classes"),
        ({"targeted": True, "target": 7}, {}, r"target=7 is out of range"),
        ({"policy": "adjoin"}, {}, r"policy name='adjoin' is unknown"),
        ({"grid_samples": 0}, {}, r"grid_samples=0 must be >= 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, module_kwargs: dict, data_kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        module = attack(tmp_path, **module_kwargs)
        dm = LabelSeedDataModule(**({"num_classes": 3, "per_class": 1} | data_kwargs))
        make_trainer(tmp_path, 1).fit(module, datamodule=dm)
    assert "\n" not in str(err.value)


@pytest.mark.usefixtures("tiny_models")
def test_classifier_size_mismatch_is_refused(tmp_path) -> None:
    large = Classifier(nn.Flatten(), "tiny-classifier", 3, 224, 3, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="classifier tiny-classifier takes 224×224 images but the generator makes 8×8"):
        attack(tmp_path, classifier=large)


def test_library_attack_returns_images_in_unit_range_within_budget() -> None:
    generator, classifier = tiny_generator(), tiny_classifier("tiny-classifier")
    result = SDOAttack(generator, classifier, eps=0.1, steps=3, lr=0.05, num_sampling_steps=4,
                       optimizer="sign", loss="ce")([0, 1, 2], [10, 11, 12])  # lists, not tensors
    assert result.images.shape == result.clean.shape == (3, 1, 8, 8)
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert 0 < result.delta.abs().max() <= 0.1 + 1e-7
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(result.clean_pred, classifier(result.clean).argmax(1))
        assert torch.equal(result.adv_pred, classifier(result.images).argmax(1))
    assert torch.equal(result.success, (result.adv_pred != labels) & (result.clean_pred == labels))
    again = SDOAttack(generator, classifier, eps=0.1, steps=3, lr=0.05, num_sampling_steps=4,
                      optimizer="sign", loss="ce")(labels, torch.tensor([10, 11, 12]))
    torch.testing.assert_close(again.delta, result.delta, rtol=0, atol=0)  # tensors give the same attack
    with pytest.raises(ValueError, match="got 2 labels and 1 seeds"):
        SDOAttack(generator, classifier, steps=1, num_sampling_steps=2)([0, 1], [0])
    with pytest.raises(ValueError, match="targets were given to an untargeted attack"):
        SDOAttack(generator, classifier, steps=1, num_sampling_steps=2)([0], [0], targets=[1])


def test_library_attack_takes_policy_strings_with_options() -> None:
    """``policy="sdo-tail=4"`` over 4 sampling steps keeps every call's graph: the attack equals ``full``'s."""
    generator, classifier = tiny_generator(), tiny_classifier("tiny-classifier")
    runs = {policy: SDOAttack(generator, classifier, eps=0.1, steps=2, lr=0.05, num_sampling_steps=4,
                              loss="ce", policy=policy)([0, 1], [3, 4]) for policy in ("sdo-tail=4", "full", "sdo")}
    torch.testing.assert_close(runs["sdo-tail=4"].delta, runs["full"].delta, rtol=0, atol=0)
    assert not torch.equal(runs["sdo"].delta, runs["full"].delta)


@pytest.mark.usefixtures("tiny_models")
def test_truncated_policy_warns_and_leaves_delta_at_zero(tmp_path) -> None:
    """DRaFT-1 / AlignProp-1 (last_k=1) has no graph back to x_T: a warning, then a zero gradient."""
    with pytest.warns(UserWarning, match="keeps no graph back to the start latent"):
        module = attack(tmp_path, policy="last_k", last_k=1)
    make_trainer(tmp_path, 2).fit(module, datamodule=data())
    assert module.delta.abs().max() == 0


@pytest.mark.parametrize(("policy", "scheduler", "message"), [
    ("sdo-tail=5", "ddim", r"^policy tail=5 exceeds the run's 4 steps; allowed: 0 to 4$"),
    ("last_k=5", "ddim", r"^policy last_k=5 exceeds the run's 4 steps; allowed: 1 to 4$"),
    ("doodl", "ddpm", r"^policy 'doodl' cannot run on DDPMScheduler"),
])
def test_library_attack_refuses_a_policy_its_run_cannot_take_when_built(policy: str, scheduler: str,
                                                                       message: str) -> None:
    """The attack's sampler is built with its policy, so the build-time checks run before any step."""
    with pytest.raises(ValueError, match=message) as err:
        SDOAttack(tiny_generator(), tiny_classifier(), num_sampling_steps=4, scheduler=scheduler, policy=policy)
    assert "\n" not in str(err.value)


def test_library_attack_spec_holds_the_policy_it_runs() -> None:
    attack_ = SDOAttack(tiny_generator(), tiny_classifier(), num_sampling_steps=4, policy="sdo-tail=4")
    assert attack_.sampler.spec.policy == attack_.sampler.policy == parse_policy("sdo-tail=4")
    assert attack_.sampler.spec.as_dict()["policy"] == "sdo-tail=4"
