"""The attack job through the CLI, on tiny models exported to folders: one device vs two DDP ranks.

Not bit for bit: each rank sees another batch composition and float32 convolutions round differently by
batch size, so δ, ‖δ‖∞ and SSIM agree to a stated tolerance; predictions exactly (that rounding is far
smaller than these samples' logit margins)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

from lit_sdo.io import read_tensors
from lit_sdo.models.networks import build_network
from lit_sdo.tasks.train_classifier import export_classifier
from lit_sdo.tasks.train_diffusion import export_diffusion

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import make_tiny_unet

    root = tmp_path_factory.mktemp("models")
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    generator = export_diffusion(make_tiny_unet(num_class_embeds=3), scheduler, root / "ddpm", num_classes=2)
    torch.manual_seed(0)
    kwargs = {"in_chans": 1, "layers": [1, 1, 1, 1], "channels": [4, 4, 4, 4]}
    network = build_network("resnet", num_classes=2, **kwargs)
    classifier = export_classifier(network, root / "resnet", "resnet", kwargs, num_classes=2, input_size=8)
    return generator, classifier


def run_attack(out: Path, folders: tuple[Path, Path], *extra: str) -> dict:
    generator, classifier = folders
    command = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(ROOT / "configs/attack/digits.yaml"),
               f"--model.init_args.sampler.model={generator}",
               f"--model.init_args.objective.init_args.classifier={classifier}",
               f"--model.init_args.objective.init_args.transfer_classifier={classifier}",  # 8×8, like the generator
               "--model.init_args.sampler.num_steps=3",
               "--model.init_args.objective.init_args.loss=ce", f"--model.init_args.output_dir={out}",
               "--trainer.max_epochs=2",
               "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={out}",
               "--data.init_args.num_classes=2", "--data.init_args.per_class=3", "--data.init_args.batch_size=4",
               *extra]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_two_ddp_ranks_give_the_same_per_sample_results_as_one_device(tmp_path: Path, tiny_folders) -> None:
    single = run_attack(tmp_path / "one", tiny_folders)
    assert (tmp_path / "one" / "attack_digits" / "version_0" / "checkpoints" / "last.ckpt").is_file()  # resumable
    double = run_attack(tmp_path / "two", tiny_folders, "--trainer.devices=2", "--trainer.strategy=ddp")
    assert len(double["samples"]) == len(single["samples"]) == 6
    for a, b in zip(single["samples"], double["samples"], strict=True):
        assert (a["index"], a["label"], a["seed"], a["adv_pred"]) == (b["index"], b["label"], b["seed"], b["adv_pred"])
        assert a["delta_linf"] == pytest.approx(b["delta_linf"], abs=1e-3)
        assert a["ssim"] == pytest.approx(b["ssim"], abs=1e-3)
    one = read_tensors(tmp_path / "one" / "delta.safetensors")["delta"]
    two = read_tensors(tmp_path / "two" / "delta.safetensors")["delta"]
    # Same samples, other batch composition: float32 convolutions round differently by batch size
    # (measured: 4e-4 on gradients of magnitude 7e2), so δ agrees to 1 % of τ, predictions exactly.
    torch.testing.assert_close(two, one, rtol=0, atol=1e-3)
    assert one.abs().max() > 0 and one.abs().max() <= 0.1 + 1e-7
    # a second run in the same folder does not stop on the saved config
    run_attack(tmp_path / "one", tiny_folders)


def test_imagenet_dit_config_runs_on_tiny_models_of_the_same_classes(tmp_path: Path) -> None:
    """configs/attack/imagenet_dit.yaml with a tiny DiT pipeline + a tiny timm ResNet in place of the real weights."""
    import timm
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel
    from timm.models import save_for_hf

    import cli

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=1000)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=8)
    folder = tmp_path / "dit"
    index = {"_class_name": "DiTPipeline"}
    for key, component in {"transformer": dit, "vae": vae, "scheduler": DDIMScheduler()}.items():
        component.save_pretrained(folder / key)
        index[key] = ["diffusers", type(component).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    resnet = timm.create_model("test_resnet", pretrained=False, num_classes=1000).eval()
    save_for_hf(resnet, tmp_path / "resnet", model_config={"num_classes": 1000})

    out = tmp_path / "out"
    cli.main(["fit", "--config", str(ROOT / "configs/attack/imagenet_dit.yaml"), "--trainer.accelerator=cpu",
              "--trainer.devices=1", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
              f"--trainer.logger.init_args.save_dir={tmp_path}", f"--model.init_args.sampler.model={folder}",
              f"--model.init_args.objective.init_args.classifier={tmp_path / 'resnet'}",
              "--model.init_args.sampler.num_steps=2",
              f"--model.init_args.output_dir={out}", "--data.init_args.per_class=1"])
    results = json.loads((out / "results.json").read_text())
    assert [s["label"] for s in results["samples"]] == [1, 9, 130, 207, 279, 291, 323, 388, 417, 511, 817, 933, 980]
    assert results["aggregate"]["delta_linf_max"] <= 0.1 + 1e-7


@pytest.mark.parametrize("null", [["--model.init_args.objective.init_args.transfer_classifier=null"],
                                  ["--model.init_args.objective.init_args.transfer_classifier", "~"]])
def test_null_for_an_option_of_a_class_inside_a_class_is_none(tmp_path: Path, tiny_folders, null: list[str]) -> None:
    """On the command line as in a config file: no transfer classifier, not one named 'None'."""
    import cli

    generator, classifier = tiny_folders
    out = tmp_path / "out"
    cli.main(["fit", "--config", str(ROOT / "configs/attack/digits.yaml"),
              f"--model.init_args.sampler.model={generator}",
              f"--model.init_args.objective.init_args.classifier={classifier}", *null,
              "--model.init_args.sampler.num_steps=2", f"--model.init_args.output_dir={out}", "--trainer.max_epochs=1",
              "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--data.init_args.num_classes=2", "--data.init_args.per_class=1", "--data.init_args.batch_size=2"])
    results = json.loads((out / "results.json").read_text())
    assert "transfer_rate" not in results["aggregate"] and "delta_linf_max" in results["aggregate"]
    saved = (tmp_path / "attack_digits" / "version_0" / "config.yaml").read_text()
    assert "transfer_classifier: null" in saved


def test_only_nested_nulls_become_config_strings() -> None:
    from cli import nested_nulls_as_config

    argv = ["--model.init_args.objective.init_args.target=null", "--model.init_args.eps=null",
            "--model.init_args.objective.init_args.loss=ce", "--model.init_args.objective.init_args.target", "NULL",
            "--model.init_args.objective.init_args.classifier="]
    assert nested_nulls_as_config(argv) == [
        '--config={"model": {"init_args": {"objective": {"init_args": {"target": null}}}}}',
        "--model.init_args.eps=null", "--model.init_args.objective.init_args.loss=ce",
        '--config={"model": {"init_args": {"objective": {"init_args": {"target": null}}}}}',
        "--model.init_args.objective.init_args.classifier="]


def test_a_nested_null_from_the_console_is_null_without_a_lightning_warning() -> None:
    """The console route rewrites ``sys.argv`` itself: LightningCLI warns when it gets ``args`` as well."""
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "fit", "--config",
                           str(ROOT / "configs/attack/digits.yaml"),
                           "--model.init_args.objective.init_args.transfer_classifier=null", "--print_config"],
                          capture_output=True, text=True, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "transfer_classifier: null" in done.stdout
    assert "args parameter" not in done.stderr
