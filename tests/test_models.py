"""The one loader: tiny random diffusers / timm / torchvision / transformers models saved to tmp_path and
loaded back; hub ids offline give one clear line; the shipped zoo matches its MANIFEST.

Bit for bit: exported parameters read back (copies). Outputs of loaded models use float32 tolerances."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiTTransformer2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)
from timm.models import save_for_hf

from lit_sdo.models import EMBEDDED_ROOT, Classifier, load_classifier, load_clip, load_diffusion
from lit_sdo.models.networks import build_network
from lit_sdo.tasks.train_classifier import export_classifier

MAX_ZOO_BYTES = 40 * 2**20  # the whole shipped zoo; the 6.1 M-parameter photo DDPM alone is 24 MiB


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and err.value.__suppress_context__ or err.value.__context__ is None
    return message


# ---------------------------------------------------------------- diffusion


def test_pixel_unet_folder_loads_with_guidance_and_frozen_weights(tiny_ddpm_folder: Path, tiny_unet) -> None:
    model = load_diffusion(str(tiny_ddpm_folder), guidance_scale=3.0)
    assert (model.num_classes, model.image_size, model.channels) == (2, 8, 1)
    assert model.scheduler_config["beta_schedule"] == "squaredcos_cap_v2" and not model.is_shortcut
    assert not model.denoiser.training and not any(p.requires_grad for p in model.denoiser.parameters())
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor(50), torch.tensor([0, 1])
    with torch.no_grad():
        cond = tiny_unet(x, t, class_labels=y).sample
        uncond = tiny_unet(x, t, class_labels=torch.tensor([2, 2])).sample  # 2 = the null label
        torch.testing.assert_close(model.denoiser(x, t, y), uncond + 3.0 * (cond - uncond))


def test_exported_folder_loads_with_diffusers_own_from_pretrained(tiny_ddpm_folder: Path, tiny_unet) -> None:
    unet = UNet2DModel.from_pretrained(tiny_ddpm_folder)
    scheduler = DDPMScheduler.from_pretrained(tiny_ddpm_folder)
    assert (tiny_ddpm_folder / "diffusion_pytorch_model.safetensors").is_file()
    assert scheduler.config.num_train_timesteps == 100
    for a, b in zip(unet.parameters(), tiny_unet.parameters(), strict=True):
        assert torch.equal(a, b)


def test_guidance_without_a_null_label_is_refused(tmp_path: Path, tiny_unet) -> None:
    tiny_unet.save_pretrained(tmp_path / "plain")
    DDPMScheduler().save_pretrained(tmp_path / "plain")
    assert load_diffusion(str(tmp_path / "plain")).num_classes == 3  # a plain diffusers folder loads
    with pytest.raises(ValueError, match="guidance_scale=1.0") as err:
        load_diffusion(str(tmp_path / "plain"), guidance_scale=2.0)
    one_line(err)


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8), latent_channels=4,
                         norm_num_groups=4, sample_size=16)


def save_pipeline(folder: Path, components: dict[str, object]) -> Path:
    index = {"_class_name": "TinyPipeline"}
    for key, component in components.items():
        component.save_pretrained(folder / key)
        index[key] = ["diffusers", type(component).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def tiny_text_unet() -> UNet2DConditionModel:
    """A seeded 2-level UNet2DConditionModel (SD1.5's classes) on 4×8×8 latents, cross-attention width 8."""
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=4)


def test_latent_unet_pipeline_folder_gets_the_latent_adapter(tmp_path: Path) -> None:
    unet = tiny_text_unet()
    folder = save_pipeline(tmp_path / "sd", {"unet": unet, "vae": tiny_vae(), "scheduler": DDIMScheduler()})
    model = load_diffusion(str(folder))
    assert (model.num_classes, model.image_size, model.channels) == (None, 16, 3)  # 8×8 latents, VAE factor 2
    x, text = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.denoiser(x, torch.tensor(10), text),
                                   unet(x, torch.tensor([10]), encoder_hidden_states=text).sample)
        assert model.denoiser.decode(x).shape == (1, 3, 16, 16)


def save_tiny_text_encoder(folder: Path) -> None:
    """A 6-token CLIP tokenizer and a 1-layer CLIP text encoder (width 8) in pipeline sub-folders."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=6).save_pretrained(
        folder / "tokenizer")
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=6, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=6, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder")
    index = json.loads((folder / "model_index.json").read_text())
    index |= {"tokenizer": ["transformers", "CLIPTokenizer"], "text_encoder": ["transformers", "CLIPTextModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))


def test_text_pipeline_encodes_prompts_and_guides_with_the_empty_prompt(tmp_path: Path) -> None:
    unet = tiny_text_unet()
    folder = save_pipeline(tmp_path / "sd", {"unet": unet, "vae": tiny_vae(), "scheduler": DDIMScheduler()})
    save_tiny_text_encoder(folder)
    model = load_diffusion(str(folder), guidance_scale=2.0)
    text = model.encode_prompt(["a b"])
    empty = model.encode_prompt([""])
    assert text.shape == (1, 6, 8)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor(10)
    with torch.no_grad():
        cond = unet(x, t, encoder_hidden_states=text).sample
        uncond = unet(x, t, encoder_hidden_states=empty).sample
        torch.testing.assert_close(model.denoiser(x, t, text), uncond + 2.0 * (cond - uncond))


def test_dit_pipeline_folder_is_class_conditional_with_its_null_label(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=5)
    folder = save_pipeline(tmp_path / "dit", {"transformer": dit, "vae": tiny_vae(), "scheduler": DDIMScheduler()})
    model = load_diffusion(str(folder), guidance_scale=1.5)
    assert (model.num_classes, model.denoiser.null_class, model.image_size) == (5, 5, 16)
    out = model.denoiser(torch.randn(2, 4, 8, 8), torch.tensor(10), torch.tensor([0, 4]))
    assert out.shape == (2, 4, 8, 8)  # learned-sigma half dropped


def test_hub_ids_offline_give_one_clear_line(empty_hub_cache: Path) -> None:
    for load, name in [(load_diffusion, "google/ddpm-cifar10-32"), (load_classifier, "timm/resnet50.a1_in1k"),
                       (load_clip, "openai/clip-vit-base-patch32")]:
        with pytest.raises(FileNotFoundError, match="not available locally") as err:
            load(name)
        message = one_line(err)
        assert name in message and "pass the folder" in message


def test_missing_folder_and_unknown_embedded_name_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_diffusion(str(tmp_path / "nowhere"))
    one_line(err)
    with pytest.raises(FileNotFoundError, match="is not shipped; embedded models are") as err:
        load_diffusion("embedded:no-such-model")
    one_line(err)


# ---------------------------------------------------------------- classifiers


def test_embedded_style_classifier_applies_its_conventions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = build_network("resnet", in_chans=1, channels=(4, 8, 8, 8)).eval()
    export_classifier(network, tmp_path / "clf", "resnet", {"in_chans": 1, "channels": [4, 8, 8, 8]},
                      num_classes=10, input_size=16)
    classifier = load_classifier(str(tmp_path / "clf"))
    images = torch.rand(3, 1, 16, 16)  # [0, 1]
    with torch.no_grad():
        torch.testing.assert_close(classifier(images), network((images - 0.5) / 0.5))
        features = classifier.features(images)
        torch.testing.assert_close(network.fc(features), network((images - 0.5) / 0.5))
        rgb_big = torch.nn.functional.interpolate(images, size=32, mode="nearest").expand(-1, 3, -1, -1)
        assert classifier(rgb_big).shape == (3, 10)  # RGB 32×32 is converted and resized inside
    assert features.shape == (3, 8)


@pytest.mark.parametrize("norm_layer", [None, "batchnorm2d"])
def test_a_regularised_convnext_reloads_as_the_same_deterministic_network(tmp_path: Path,
                                                                          norm_layer: str | None) -> None:
    """Dropout and stochastic depth are training-time only: the reloaded classifier must apply neither (two calls
    agree) and compute what the exported network computes in eval mode (same ops and order: bit-for-bit). With
    BatchNorm the training-mode calls move the running statistics, which the export must carry."""
    torch.manual_seed(0)
    kwargs = {"in_chans": 3, "depths": [1, 1, 1, 1], "dims": [4, 8, 8, 8], "drop_rate": 0.5, "drop_path_rate": 0.5,
              "norm_layer": norm_layer}
    network = build_network("convnext", num_classes=3, **kwargs)
    batchnorms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bool(batchnorms) == (norm_layer is not None)
    assert not torch.equal(*(network(torch.rand(2, 3, 8, 8) * 2 - 1) for _ in range(2)))  # training mode: random
    assert all(bn.num_batches_tracked.item() == 2 for bn in batchnorms)
    export_classifier(network, tmp_path / "convnext", "convnext", kwargs, num_classes=3, input_size=8, channels=3)
    classifier = load_classifier(str(tmp_path / "convnext"))
    images = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        first = classifier(images)
        assert torch.equal(first, classifier(images))
        assert torch.equal(first, network.eval()((images - 0.5) / 0.5))


def test_an_unknown_convnext_norm_layer_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="norm_layer='batchnorm3'"):
        build_network("convnext", num_classes=3, in_chans=3, norm_layer="batchnorm3")


def test_timm_folder_loads_with_its_pretrained_cfg(tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = timm.create_model("test_resnet", pretrained=False, num_classes=7).eval()
    save_for_hf(network, tmp_path / "timm-tiny", model_config={"num_classes": 7})
    classifier = load_classifier(str(tmp_path / "timm-tiny"))
    cfg = network.pretrained_cfg
    assert (classifier.num_classes, classifier.input_size, classifier.channels) == (7, cfg["input_size"][-1], 3)
    images = torch.rand(2, 3, classifier.input_size, classifier.input_size)
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(classifier(images), network((images - mean) / std))


def test_torchvision_name_reads_torch_hub_cache_or_says_where_to_put_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not available locally") as err:
        load_classifier("torchvision:mobilenet_v3_small")
    assert "torchvision:mobilenet_v3_small" in one_line(err)
    torch.manual_seed(0)
    network = torchvision.models.mobilenet_v3_small().eval()
    weights = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT
    (tmp_path / "checkpoints").mkdir()
    torch.save(network.state_dict(), tmp_path / "checkpoints" / Path(weights.url).name)
    classifier = load_classifier("torchvision:mobilenet_v3_small")
    images = torch.rand(1, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet, recorded by the loader
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(classifier(images), network((images - mean) / std))
        assert classifier.features(images).shape == (1, 1024)


def test_clip_folder_loads(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "vocab_size": 50},
                        vision_config={"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=6)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    clip = load_clip(str(tmp_path / "clip"))
    assert clip.image_size == 32 and clip.tokenizer is None
    embeddings = clip.image_embeddings(torch.rand(2, 3, 20, 20))
    assert embeddings.shape == (2, 6)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))


# ---------------------------------------------------------------- the shipped zoo

SHIPPED = ["digits-ddpm", "digits-resnet", "digits-convnext"]


def shipped(name: str) -> Path:
    folder = EMBEDDED_ROOT / name
    if not (folder / "MANIFEST.json").is_file():
        pytest.skip(f"{name} is not shipped in this checkout")
    return folder


@pytest.mark.parametrize("name", sorted(p.name for p in EMBEDDED_ROOT.iterdir() if p.is_dir())
                         if EMBEDDED_ROOT.is_dir() else [])
def test_every_shipped_folder_has_one_manifest_that_matches_its_files(name: str) -> None:
    folder = shipped(name)
    assert not (folder / "MANIFEST").exists()  # one format only
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    files = {p.name for p in folder.iterdir() if p.is_file() and p.name != "MANIFEST.json"}
    assert set(manifest["sha256"]) == files
    for file, digest in manifest["sha256"].items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, file
    assert "training_command" in manifest
    if name in SHIPPED:
        assert "cli.py fit --config configs/train/" in manifest["training_command"]


def test_a_changed_file_or_an_earlier_manifest_stops_the_loader_in_one_line(tmp_path: Path) -> None:
    from lit_sdo.models.manifest import convert, write_manifest

    torch.manual_seed(0)
    kwargs = {"in_chans": 1, "layers": [1, 1, 1, 1], "channels": [4, 4, 4, 4]}
    folder = export_classifier(build_network("resnet", num_classes=2, **kwargs), tmp_path / "resnet", "resnet", kwargs,
                               num_classes=2, input_size=8)
    written = json.loads(write_manifest(folder, {"seed": 0}).read_text())
    assert written["seed"] == 0 and set(written["sha256"]) == {"config.json", "model.safetensors"}
    load_classifier(str(folder))  # matches: loads
    earlier = {"files": written.pop("sha256"), **written}  # the earlier format, as its writers wrote it
    (folder / "MANIFEST.json").unlink()
    (folder / "MANIFEST").write_text(json.dumps(earlier))
    with pytest.raises(ValueError, match=rf"^{folder} has a MANIFEST in the earlier format; convert it to "
                                         rf"MANIFEST.json with: python -m lit_sdo.models.manifest {folder}$"):
        load_classifier(str(folder))
    assert json.loads(convert(folder).read_text()) == {"sha256": earlier["files"], "seed": 0}
    assert not (folder / "MANIFEST").exists()
    load_classifier(str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config, indent=1))  # same model, other bytes
    with pytest.raises(ValueError, match=r"config.json does not match its sha256 in .*MANIFEST.json \(changed or "):
        load_classifier(str(folder))
    (folder / "MANIFEST").write_text(json.dumps(earlier))
    with pytest.raises(ValueError, match=r"config.json differ from the sha256 in its MANIFEST; re-export"):
        convert(folder)  # refuses to bless changed files


def test_shipped_zoo_is_small() -> None:
    total = sum(p.stat().st_size for p in EMBEDDED_ROOT.rglob("*") if p.is_file()) if EMBEDDED_ROOT.is_dir() else 0
    assert total <= MAX_ZOO_BYTES


@pytest.mark.parametrize("name", ["digits-resnet", "digits-convnext"])
def test_shipped_classifiers_recognise_test_digits(name: str) -> None:
    from lit_sdo.datamodules import DigitsDataModule
    from lit_sdo.images import to_unit_range

    shipped(name)
    classifier = load_classifier(f"embedded:{name}")
    assert isinstance(classifier, Classifier) and classifier.input_size == 16
    images, labels = DigitsDataModule(seed=0).split_tensors("test")
    with torch.no_grad():
        accuracy = (classifier(to_unit_range(images)).argmax(1) == labels).float().mean()
    assert accuracy >= 0.97


def test_shipped_ddpm_samples_are_recognised_by_the_shipped_resnet() -> None:
    from lit_sdo.images import to_unit_range
    from lit_sdo.sampling import build_scheduler, sample

    shipped("digits-ddpm")
    shipped("digits-resnet")
    model = load_diffusion("embedded:digits-ddpm")
    classifier = load_classifier("embedded:digits-resnet")
    labels = torch.arange(20) % 10
    x_T = torch.randn(20, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = sample(model.denoiser, build_scheduler("ddim", 10, base_config=model.scheduler_config), x_T, labels,
                    policy="none").sample
        accuracy = (classifier(to_unit_range(x0)).argmax(1) == labels).float().mean()
    assert accuracy >= 0.8  # DDIM-10 on 20 samples; the MANIFEST has DDIM-50 on 2,000
