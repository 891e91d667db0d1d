"""The sample-quality monitor on a tiny DDPM training: it leaves training untouched, samples the EMA exactly as
the exported model samples, logs its curve everywhere it says, and refuses what it cannot watch in one line.

Bit for bit, by construction: training with and without the monitor (it restores the random state), and the
monitor's samples against the exported model sampled in the monitor's batches (a batch of 6 and batches of
4 + 2 call the UNet on other shapes: GEMM kernels may round those differently). The FID's features are
batched otherwise by feature_fid: a stated tolerance."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_classifier
from torch.utils.data import DataLoader, TensorDataset

from lit_sdo.images import to_unit_range
from lit_sdo.metrics import accuracy, batched_outputs, feature_fid
from lit_sdo.models import load_diffusion
from lit_sdo.sampling import build_scheduler, noise_for_seeds, sample
from lit_sdo.tasks.train_diffusion import DiffusionTrainingModule, export_diffusion
from lit_sdo.training_monitor import SampleQualityMonitor

NUM_CLASSES = 3
TINY_UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[4, 8], layers_per_block=1,
                 norm_num_groups=4, down_block_types=["DownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "UpBlock2D"], num_class_embeds=NUM_CLASSES + 1)


class TinyImages(L.LightningDataModule):
    """12 random 8×8 grey images per split, 3 classes, with ``split_tensors`` like the digits and photo modules."""

    num_classes = NUM_CLASSES

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.splits = {name: (torch.rand(12, 1, 8, 8, generator=generator) * 2 - 1, torch.arange(12) % NUM_CLASSES)
                       for name in ("train", "val")}

    def split_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits[name]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.splits["train"]), batch_size=4, shuffle=False)


def tiny_module() -> DiffusionTrainingModule:
    L.seed_everything(0)
    return DiffusionTrainingModule(TINY_UNET, num_classes=NUM_CLASSES, num_train_timesteps=100, lr=1e-2,
                                   warmup_steps=1, ema_decay=0.5)


def monitor(**kwargs) -> SampleQualityMonitor:
    arguments = {"classifier": tiny_classifier(num_classes=NUM_CLASSES), "every_n_steps": 2, "num_samples": 6,
                 "num_steps": 3, "guidance_scales": [1.0, 3.0], "batch_size": 4} | kwargs
    return SampleQualityMonitor(**arguments)


def train(tmp_path: Path, callbacks: list[L.Callback], steps: int = 4) -> tuple[DiffusionTrainingModule, L.Trainer]:
    module = tiny_module()
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, callbacks=callbacks, default_root_dir=tmp_path,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="run"), log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=TinyImages())
    return module, trainer


def test_training_draws_the_same_numbers_with_and_without_the_monitor(tmp_path: Path) -> None:
    watched, trainer = train(tmp_path / "with", [monitor()])
    plain, _ = train(tmp_path / "without", [])
    # identical arithmetic by construction (same ops on the same data in the same order): bit for bit, as long as
    # the monitor leaves the random state (label dropout, timesteps, noise) where it found it
    for name, weight in plain.unet.state_dict().items():
        torch.testing.assert_close(watched.unet.state_dict()[name], weight, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(watched.ema.state_dict(), plain.ema.state_dict(), rtol=0, atol=0)

    curve = [json.loads(line) for line in (Path(trainer.log_dir) / "sample_quality.jsonl").read_text().splitlines()]
    assert [row["step"] for row in curve] == [2, 4]
    keys = {"agreement_g1", "fid_g1", "out_of_range_g1", "agreement_g3", "fid_g3", "out_of_range_g3", "fid_floor"}
    assert keys <= set(curve[0]) and curve[0]["fid_floor"] == curve[1]["fid_floor"]  # one floor for the curve
    for value in (row[f"agreement_g{g}"] for row in curve for g in (1, 3)):
        assert value * 6 == pytest.approx(round(value * 6))  # a share of the 6 samples
    with open(Path(trainer.log_dir) / "metrics.csv") as handle:  # what the logger (TensorBoard in the configs) got
        logged = [row for row in csv.DictReader(handle) if row.get("samples/fid_g3")]
    assert [int(row["step"]) for row in logged] == [2, 4]
    assert float(logged[1]["samples/agreement_g3"]) == pytest.approx(curve[1]["agreement_g3"])
    assert trainer.progress_bar_metrics["samples/agreement_g1"] == pytest.approx(curve[1]["agreement_g1"])


def test_the_monitor_samples_the_ema_as_the_exported_model_samples_unclipped(tmp_path: Path) -> None:
    module, watcher = tiny_module(), monitor(guidance_scales=[2.0])
    with torch.no_grad():  # the trained weights now differ from their EMA: the EMA is what must be sampled
        for weight in module.unet.parameters():
            weight.add_(0.1)
    folder = export_diffusion(module.ema, module.noise_scheduler, tmp_path / "export", NUM_CLASSES)
    exported = load_diffusion(str(folder), guidance_scale=2.0)  # what the attack loads
    scheduler = build_scheduler("ddim", 3, base_config=exported.scheduler_config)
    noise = noise_for_seeds(range(6), exported.denoiser.sample_shape)
    labels, size = torch.arange(6) % NUM_CLASSES, watcher.batch_size  # in the monitor's batches: its shapes
    expected = torch.cat([sample(exported.denoiser, scheduler, noise[i:i + size], labels[i:i + size],
                                 policy="none").sample for i in range(0, 6, size)])
    samples = watcher.generate(module, 2.0)
    torch.testing.assert_close(samples, expected, rtol=0, atol=0)  # the same weights, ops and shapes: bit for bit
    assert float(samples.abs().max()) > 1  # no clip: the random UNet's x̂₀ leaves [-1, 1] as the attack sees it

    data = TinyImages()
    row = watcher.measure(module, data)
    images, val = to_unit_range(samples), to_unit_range(data.splits["val"][0])
    classifier = watcher.classifier
    assert row["agreement_g2"] == accuracy(batched_outputs(classifier, images, size), labels)  # its batches too
    # batched in fours inside the monitor, in one batch here: float32 rounding of the features only
    assert row["fid_g2"] == pytest.approx(feature_fid(classifier, images, val), rel=1e-4)
    assert row["fid_floor"] == pytest.approx(feature_fid(classifier, to_unit_range(data.splits["train"][0][:6]), val),
                                             rel=1e-4)
    assert row["out_of_range_g2"] == pytest.approx(float((samples.abs() > 1).float().mean()))


@pytest.mark.parametrize(("kwargs", "data", "message"), [
    ({"classifier": tiny_classifier(num_classes=5)}, TinyImages,
     r"^classifier tiny-classifier tells 5 classes apart but the generator is trained for num_classes=3; "),
    ({}, L.LightningDataModule, r"split_tensors\('val'\); LightningDataModule has none$"),
])
def test_what_the_monitor_cannot_watch_is_one_line(tmp_path: Path, kwargs: dict, data: type, message: str) -> None:
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, default_root_dir=tmp_path,
                        callbacks=[monitor(**kwargs)], enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    with pytest.raises(ValueError, match=message) as info:  # at setup, before any training step
        trainer.fit(tiny_module(), datamodule=data())
    assert "\n" not in str(info.value) and trainer.global_step == 0
    with pytest.raises(ValueError, match=r"num_samples=1 >= 2 \(FID needs two\)"):
        monitor(num_samples=1)
    with pytest.raises(TypeError, match=r"^got a Linear where a model name or a built Classifier is expected"):
        monitor(classifier=torch.nn.Linear(2, 3))
