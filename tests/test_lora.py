"""LoRA injection, saving, applying and mixing on a tiny attention UNet (exact references: peft's forward).

Bit for bit, by construction: the lora-grid PNG against the same merge, batch, sampling and 8-bit rounding
done directly (the read-back /255 is rounded back to the stored bytes). A merged vs an adapted forward is
other arithmetic (W + sBA vs Wx + sB(Ax)): a float32 tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

from lit_sdo.io import read_tensors
from lit_sdo.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    inject_lora,
    load_lora,
    lora_deltas,
    lora_parameters,
    matching_modules,
    merge_loras,
    save_lora,
)


def make_attention_unet(seed: int = 0) -> UNet2DModel:
    """Tiny class-conditional pixel UNet with attention at 4×4 (LoRA's default targets exist)."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, num_class_embeds=3)


def trained_lora(unet: UNet2DModel, seed: int, rank: int = 4, alpha: float | None = None) -> UNet2DModel:
    """Inject a LoRA and give it random weights (a fresh LoRA is a no-op: B = 0)."""
    inject_lora(unet, rank=rank, alpha=alpha)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lora_parameters(unet):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return unet


def run(unet: UNet2DModel) -> torch.Tensor:
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return unet(x, torch.tensor([10, 50]), class_labels=torch.tensor([0, 1])).sample


def test_default_targets_are_the_attention_projections_and_only_lora_trains() -> None:
    unet = inject_lora(make_attention_unet())
    names = matching_modules(unet, ["to_q", "to_k", "to_v", "to_out.0"])
    assert len(names) == 4 * 4  # 4 attention blocks (down, 2 up, mid) × 4 projections
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 16  # A and B per adapted projection
    assert all(p.dtype == torch.float32 for p in lora_parameters(unet))


def test_a_target_that_matches_nothing_names_the_existing_layers() -> None:
    with pytest.raises(ValueError) as err:
        inject_lora(make_attention_unet(), targets=["to_q", "qkv"])
    message = str(err.value)
    assert "\n" not in message and "['qkv']" in message
    assert "to_q" in message and "conv1" in message and "time_emb_proj" in message


def test_saved_lora_is_in_diffusers_format_and_merging_it_equals_peft(tmp_path: Path) -> None:
    adapted = trained_lora(make_attention_unet(), seed=2, rank=2, alpha=4.0)  # scale α / r = 2
    save_lora(adapted, tmp_path / "a")
    tensors = read_tensors(tmp_path / "a" / WEIGHTS_NAME)
    assert all(key.startswith("unet.") and ".lora_" in key for key in tensors)
    assert len(tensors) == 32
    assert json.loads((tmp_path / "a" / CONFIG_NAME).read_text())["r"] == 2
    merged = merge_loras(make_attention_unet(), [(tmp_path / "a", 1.0)])
    assert not any("lora_" in n for n, _ in merged.named_parameters())  # a plain network again
    torch.testing.assert_close(run(merged), run(adapted), rtol=1e-5, atol=1e-6)
    assert (run(merged) - run(make_attention_unet())).abs().max() > 1e-3  # the LoRA does change the output


def test_mixing_two_loras_is_theta_old_plus_alpha_a_plus_beta_b(tmp_path: Path) -> None:
    save_lora(trained_lora(make_attention_unet(), seed=3), tmp_path / "a")
    save_lora(trained_lora(make_attention_unet(), seed=4), tmp_path / "b")
    base = make_attention_unet()
    mixed = merge_loras(base, [(tmp_path / "a", 0.5), (tmp_path / "b", -2.0)])
    name = "mid_block.attentions.0.to_q"
    delta_a = lora_deltas(*load_lora(tmp_path / "a"))[name]
    delta_b = lora_deltas(*load_lora(tmp_path / "b"))[name]
    old = dict(base.named_modules())[name].weight
    expected = old + 0.5 * delta_a - 2.0 * delta_b
    torch.testing.assert_close(dict(mixed.named_modules())[name].weight, expected)
    untouched = merge_loras(base, [(tmp_path / "a", 0.0)])
    torch.testing.assert_close(run(untouched), run(base))


def test_a_lora_of_another_model_is_refused(tmp_path: Path) -> None:
    save_lora(trained_lora(make_attention_unet(), seed=5), tmp_path / "a")
    other = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 16), layers_per_block=1,
                        norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    with pytest.raises(ValueError, match="trained on another model"):
        merge_loras(other, [(tmp_path / "a", 1.0)])
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights"):
        load_lora(tmp_path / "missing")


def test_lora_command_samples_a_grid_with_mixed_loras(tmp_path: Path) -> None:
    from diffusers import DDPMScheduler

    import cli
    from lit_sdo.tasks.train_diffusion import export_diffusion

    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    folder = export_diffusion(make_attention_unet(), scheduler, tmp_path / "ddpm", num_classes=2)
    save_lora(trained_lora(make_attention_unet(), seed=6), tmp_path / "a")
    save_lora(trained_lora(make_attention_unet(), seed=7), tmp_path / "b")
    cli.main(["lora-grid", "--model", str(folder), f"--lora+={tmp_path / 'a'}:0.5", f"--lora+={tmp_path / 'b'}:1",
              "--seeds=[0, 1]", "--num_steps=2", f"--out={tmp_path / 'grid.png'}"])
    path = tmp_path / "grid.png"
    assert path.is_file()
    from lit_sdo.datamodules import read_image_file
    from lit_sdo.images import image_grid, to_unit_range
    from lit_sdo.models import build_sampler, load_diffusion
    from lit_sdo.sampling import noise_for_seeds, sample

    def reference_grid(loras: list[tuple[Path, float]]) -> torch.Tensor:
        """θ_old + 0.5·θ_A + 1·θ_B sampled directly: classes 0, 1 (rows) × seeds 0, 1, 2 DDIM steps."""
        model = load_diffusion(str(folder))
        model.denoiser.network = merge_loras(model.denoiser.network, loras)
        denoiser, sampler = build_sampler(model, "ddim", 2)
        with torch.no_grad():
            out = sample(denoiser, sampler, noise_for_seeds([0, 1, 0, 1], denoiser.sample_shape),
                         torch.tensor([0, 0, 1, 1]), policy="none")
        grid = image_grid(to_unit_range(out.sample), nrow=2)  # (3, 19, 19): 8×8 cells, 1 px padding
        return (grid * 255).round().repeat_interleave(4, 1).repeat_interleave(4, 2)  # the PNG's ×4 nearest

    written = (read_image_file(path, channels=3) * 255).round()  # the stored bytes
    assert written.shape == (3, 76, 76)
    torch.testing.assert_close(written, reference_grid([(tmp_path / "a", 0.5), (tmp_path / "b", 1.0)]), rtol=0,
                               atol=0)  # the command's arithmetic is the reference's
    assert (written - reference_grid([])).abs().max() > 8  # the mixed LoRAs show in the grid


def test_default_targets_exist_in_a_dit_transformer() -> None:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=3)
    inject_lora(dit)
    assert matching_modules(dit, ["to_q", "to_k", "to_v", "to_out.0"])
    assert all("lora_" in n for n, p in dit.named_parameters() if p.requires_grad)
