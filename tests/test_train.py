"""Training modules on tiny networks: the diffusion targets, EMA, export that diffusers loads, classifier
export that the loader rebuilds exactly, and the CLI fits, checkpoints and samples (tests/test_configs.py
loads every YAML).

Bit for bit: exported weights read back are the EMA's (copies)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from cli import main as cli_main
from lit_sdo.datamodules import DigitsDataModule
from lit_sdo.models import load_classifier, load_diffusion
from lit_sdo.tasks.train_classifier import ClassifierTrainingModule
from lit_sdo.tasks.train_diffusion import DiffusionTrainingModule

TINY_UNET = {"sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": [4, 8],
             "layers_per_block": 1, "norm_num_groups": 4, "down_block_types": ["DownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "UpBlock2D"], "num_class_embeds": 11}


def tiny_trainer(tmp_path: Path, steps: int = 2) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, limit_val_batches=1, default_root_dir=tmp_path,
                     enable_progress_bar=False, enable_model_summary=False, logger=False,
                     enable_checkpointing=False)


def tiny_digits() -> DigitsDataModule:
    return DigitsDataModule(batch_size=8, seed=0)


class Recorder(torch.nn.Module):
    """Stands in for the UNet: returns a fixed output and records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor):  # noqa: ANN201
        self.calls.append((x, t))
        return type("Out", (), {"sample": torch.zeros_like(x)})()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusion_loss_regresses_the_ddpm_target(prediction_type: str) -> None:
    module = DiffusionTrainingModule(TINY_UNET, prediction_type=prediction_type)
    x0, labels = torch.rand(4, 1, 16, 16) * 2 - 1, torch.arange(4)
    recorder = Recorder()
    torch.manual_seed(0)
    loss = module.diffusion_loss(recorder, x0, labels)
    torch.manual_seed(0)  # replay the same ε and t
    eps = torch.randn_like(x0)
    t = torch.randint(0, 1000, (4,))
    alpha_bar = module.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    target = eps if prediction_type == "epsilon" else alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    torch.testing.assert_close(recorder.calls[0][0], x_t)
    torch.testing.assert_close(loss, target.pow(2).mean())  # the recorder predicts 0


def test_validation_draws_the_same_noise_every_time_and_leaves_the_training_stream_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    module = DiffusionTrainingModule(TINY_UNET)
    module.ema = Recorder()
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)  # no trainer to log to
    batch = (torch.rand(4, 1, 16, 16) * 2 - 1, torch.arange(4))
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    module.validation_step(batch, 2)
    module.validation_step(batch, 2)
    assert torch.equal(torch.rand(3), expected_next)  # training's stream is where it was
    assert torch.equal(module.ema.calls[0][0], module.ema.calls[1][0])  # the same x_t both times


def test_num_class_embeds_must_leave_a_null_label() -> None:
    with pytest.raises(ValueError, match="num_classes \\+ 1"):
        DiffusionTrainingModule(TINY_UNET | {"num_class_embeds": 10})


def test_diffusion_fit_updates_ema_and_exports_a_diffusers_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = DiffusionTrainingModule(TINY_UNET, ema_decay=0.5, export_dir=str(tmp_path / "export"))
    before = [p.clone() for p in module.ema.parameters()]
    tiny_trainer(tmp_path).fit(module, tiny_digits())
    moved = [not torch.equal(a, b) for a, b in zip(before, module.ema.parameters(), strict=True)]
    assert any(moved) and not any(p.requires_grad for p in module.ema.parameters())
    unet = UNet2DModel.from_pretrained(tmp_path / "export")  # diffusers' own loaders
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "export")
    assert scheduler.config.timestep_spacing == "leading" and scheduler.config.clip_sample is False
    for a, b in zip(unet.parameters(), module.ema.parameters(), strict=True):
        assert torch.equal(a, b)  # the EMA weights are what ships
    model = load_diffusion(str(tmp_path / "export"), guidance_scale=2.0)
    assert (model.num_classes, model.denoiser.null_class, model.image_size) == (10, 10, 16)


def test_ema_follows_the_warmup_formula(tmp_path: Path) -> None:
    module = DiffusionTrainingModule(TINY_UNET, ema_decay=0.9)
    ema0 = [p.clone() for p in module.ema.parameters()]
    with torch.no_grad():
        for p in module.unet.parameters():
            p.add_(1.0)
    module.on_train_batch_end(None, None, 0)  # global_step 0: decay = min(0.9, 1/10) = 0.1
    for e0, e, p in zip(ema0, module.ema.parameters(), module.unet.parameters(), strict=True):
        torch.testing.assert_close(e, 0.1 * e0 + 0.9 * p)


def test_classifier_fit_exports_what_the_loader_rebuilds(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = {"in_chans": 1, "channels": [4, 8, 8, 8]}
    module = ClassifierTrainingModule("resnet", network, export_dir=str(tmp_path / "clf"))
    tiny_trainer(tmp_path).fit(module, tiny_digits())
    classifier = load_classifier(str(tmp_path / "clf"))
    module.eval()
    images = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(classifier(images), module(images * 2 - 1))  # [0, 1] in, [-1, 1] inside


def test_cli_fit_runs_on_cpu_and_checkpoints(tmp_path: Path) -> None:
    cli_main(["fit", "--config", "configs/train/digits_ddpm.yaml", "--trainer.max_epochs=1",
              "--trainer.limit_train_batches=2", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.enable_progress_bar=false", f"--model.init_args.export_dir={tmp_path / 'export'}"])
    assert list(tmp_path.rglob("*.ckpt"))
    assert (tmp_path / "export" / "diffusion_pytorch_model.safetensors").is_file()


def test_cli_predict_writes_the_sample_grid(tmp_path: Path) -> None:
    if not Path("data/models/digits-ddpm/MANIFEST.json").is_file():
        pytest.skip("the sample config loads the shipped DDPM")
    out = tmp_path / "grid.png"
    cli_main(["predict", "--config", "configs/sample/digits.yaml", "--model.init_args.num_steps=2",
              "--model.init_args.samples_per_class=2", "--model.init_args.classes=[3,7]",
              f"--model.init_args.output={out}", "--model.init_args.scale=1"])
    with Image.open(out) as image:
        assert image.size == (2 * 17 + 1, 2 * 17 + 1)  # 2×2 cells of 16 px with 1 px padding
