"""The photo-crop data module: shipped photographs, exact crops, a held-out strip, and one-line bad input.

Bit for bit: crops and splits are slices of the same pixels, seeded draws repeat, shipped weights are copies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_sdo.datamodules import PHOTOGRAPHS, PhotoCropsDataModule, read_photograph
from lit_sdo.datamodules.photos import random_crops, split_region

SMALL = dict(photos=["coins", "chelsea"], image_size=8, photo_side=64, scale=(0.25, 0.5), holdout_fraction=0.5,
             holdout_per_class=4, batch_size=6, samples_per_epoch=12)


@pytest.mark.parametrize("name", ["chelsea", "china", "grace_hopper", "brick", "stereo_motorcycle"])
def test_every_package_source_reads_as_rgb_in_unit_range(name: str) -> None:
    photo = read_photograph(name)  # skimage (colour, grey, a tuple), sklearn and matplotlib files
    assert photo.dim() == 3 and photo.shape[0] == 3 and min(photo.shape[1:]) >= 256
    assert 0 <= float(photo.min()) and float(photo.max()) <= 1 and float(photo.std()) > 0.05


def test_unknown_photograph_is_one_line_naming_it() -> None:
    with pytest.raises(ValueError, match="photograph 'lena' is not shipped") as info:
        PhotoCropsDataModule(photos=["astronaut", "lena"]).setup()
    assert "\n" not in str(info.value) and "astronaut" in str(info.value)  # lists what is allowed
    assert set(PhotoCropsDataModule().photos) <= set(PHOTOGRAPHS)


def test_crop_larger_than_its_region_is_one_line_naming_the_size() -> None:
    # coins (303×384) at short side 64 is 64×81: parts of 40 and 41 px along its width; 0.7·64 = 45 px
    data = PhotoCropsDataModule(**SMALL | {"scale": (0.25, 0.7)})
    with pytest.raises(ValueError, match=r"a crop of 45 px .* larger than the train region \(64, 40\) of "
                                         r"photograph 'coins'") as info:
        data.setup()
    assert "\n" not in str(info.value)
    PhotoCropsDataModule(**SMALL | {"scale": (0.25, 0.62)}).setup()  # 40 px: the largest that fits both halves


def test_held_out_strip_and_training_region_partition_the_long_axis() -> None:
    photo = torch.arange(3 * 4 * 10.0).view(3, 4, 10)  # landscape: split along width
    train, holdout = split_region(photo, 0.3, "train"), split_region(photo, 0.3, "holdout")
    assert train.shape == (3, 4, 7) and holdout.shape == (3, 4, 3)
    assert torch.equal(torch.cat([train, holdout], dim=-1), photo)
    assert split_region(photo.transpose(1, 2), 0.3, "holdout").shape == (3, 3, 4)  # portrait: along height


def test_a_crop_is_the_exact_box_average_of_its_pixels() -> None:
    # A region exactly one crop wide forces the box to the whole region; side 4·size -> 4×4 box averages.
    region = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    crops = random_crops([region], torch.zeros(64, dtype=torch.long), size=8, side=32, scale=(1.0, 1.0),
                         jitter=0.0, generator=torch.Generator().manual_seed(1))  # (64, 3, 8, 8)
    reference = F.avg_pool2d(region[None], 4)  # (1, 3, 8, 8)
    flipped = (crops - reference.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    straight = (crops - reference).abs().flatten(1).amax(1) < 1e-5
    assert bool((flipped | straight).all()) and 10 < int(flipped.sum()) < 54  # and both orientations occur


def test_training_crops_are_fresh_and_held_out_crops_fixed() -> None:
    data = PhotoCropsDataModule(**SMALL)
    batches = list(data.train_dataloader())
    assert len(batches) == 2 and batches[0][0].shape == (6, 3, 8, 8) and batches[0][1].shape == (6,)
    assert -1 <= float(batches[0][0].min()) and float(batches[0][0].max()) <= 1
    again = next(iter(data.train_dataloader()))
    assert not torch.equal(again[0], batches[0][0])  # unlimited data: a new draw at every access
    test, val = data.split_tensors("test"), PhotoCropsDataModule(**SMALL).split_tensors("val")
    assert torch.equal(test[0], PhotoCropsDataModule(**SMALL).split_tensors("test")[0])  # fixed by seed
    assert not torch.equal(test[0], val[0]) and test[1].tolist() == [0, 1] * 4


@pytest.mark.slow
def test_default_classes_are_not_separable_by_mean_colour() -> None:
    from sklearn.linear_model import LogisticRegression

    data = PhotoCropsDataModule(image_size=16, holdout_per_class=100)
    (train, y_train), (test, y_test) = data.split_tensors("train"), data.split_tensors("test")
    colour = LogisticRegression(max_iter=2000).fit(train.mean((2, 3)).numpy(), y_train.numpy())
    accuracy = float((colour.predict(test.mean((2, 3)).numpy()) == y_test.numpy()).mean())
    assert 0.1 < accuracy < 0.5, accuracy  # above chance (colour says something) but far from separable


def test_attack_on_a_class_the_photo_generator_was_not_trained_for_is_one_line() -> None:
    from lit_sdo.datamodules import LabelSeedDataModule
    from lit_sdo.models.sampler import SamplerSpec
    from lit_sdo.objectives import ClassifierObjective
    from lit_sdo.tasks.latent import LatentOptimizationModule

    module = LatentOptimizationModule(SamplerSpec(model="embedded:photos-ddpm", num_steps=2),
                                      ClassifierObjective("embedded:photos-resnet"), eps=0.1)
    module.check_samples(LabelSeedDataModule(num_classes=10, per_class=1).dataset)  # the trained classes pass
    with pytest.raises(ValueError, match=r"class labels 0\.\.11 are out of range for generator "
                                         r"embedded:photos-ddpm with 10 classes") as info:
        module.check_samples(LabelSeedDataModule(num_classes=12, per_class=1).dataset)
    assert "\n" not in str(info.value)


def test_a_classifier_trained_on_photo_crops_exports_as_rgb(tmp_path) -> None:
    import lightning as L

    from lit_sdo.models import load_classifier
    from lit_sdo.tasks.train_classifier import ClassifierTrainingModule

    module = ClassifierTrainingModule("resnet", {"in_chans": 3, "channels": [4, 8, 8, 8]}, num_classes=2,
                                      input_size=8, export_dir=str(tmp_path / "clf"))
    L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, PhotoCropsDataModule(**SMALL))
    classifier = load_classifier(str(tmp_path / "clf"))
    assert classifier.channels == 3 and classifier.mean.numel() == 3
    image = torch.rand(2, 3, 8, 8)
    assert torch.allclose(classifier(image), module.network.eval()(image * 2 - 1), atol=1e-5)  # same [-1, 1] input


def test_a_diffusion_run_continues_from_an_export_and_refuses_another_architecture() -> None:
    import yaml
    from diffusers import UNet2DModel

    from lit_sdo.models import EMBEDDED_ROOT
    from lit_sdo.tasks.train_diffusion import DiffusionTrainingModule

    args = yaml.safe_load(open("configs/train/photos_ddpm.yaml"))["model"]["init_args"]
    module = DiffusionTrainingModule(**args | {"init_from": str(EMBEDDED_ROOT / "photos-ddpm")})
    shipped = UNet2DModel.from_pretrained(EMBEDDED_ROOT / "photos-ddpm").state_dict()
    for network in (module.unet, module.ema):  # the EMA starts from the same weights
        assert all(torch.equal(network.state_dict()[k], v) for k, v in shipped.items())
    with pytest.raises(ValueError, match="has another architecture .*in_channels"):
        DiffusionTrainingModule(**args | {"init_from": str(EMBEDDED_ROOT / "digits-ddpm")})


def test_training_on_more_photographs_than_the_model_has_classes_is_one_line(tmp_path) -> None:
    import lightning as L

    from lit_sdo.tasks.train_classifier import ClassifierTrainingModule

    module = ClassifierTrainingModule("resnet", {"in_chans": 3, "channels": [4, 8, 8, 8]}, num_classes=3, input_size=8)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^the model is trained for num_classes=3 but the data has 2 classes \(one "
                                         r"per photograph: coins, chelsea\); give the data 3 classes or set the "
                                         r"model's num_classes to 2$"):
        trainer.fit(module, PhotoCropsDataModule(**SMALL))  # before any step: a label would miss its row
    assert trainer.global_step == 0


def test_photo_crops_name_their_classes_and_refuse_an_unknown_photograph_when_built() -> None:
    assert PhotoCropsDataModule(**SMALL).class_names == ["coins", "chelsea"]  # class c is photos[c]
    with pytest.raises(ValueError, match=r"^photograph 'lena' is not shipped with the installed packages; allowed: "
                                         r"astronaut, ") as info:
        PhotoCropsDataModule(photos=["astronaut", "lena"])  # at construction: no setup, no photo read
    assert "\n" not in str(info.value)
