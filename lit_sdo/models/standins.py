"""Full-size stand-ins of the paper's checkpoints: the released architectures with random weights, saved in the
released on-disk layout (diffusers pipeline folders, transformers folders, torchvision / guided-diffusion ``.pt``
state dicts, safetensors), so every paper config loads them through its own loader and runs at real size with
nothing downloaded. The shapes are those of the released configs (cited per builder).

Each component is one folder of a :class:`StandinCache`, marked complete by ``.complete`` last, so a killed build
is rebuilt and a finished one reused. Building SD1.5 holds GBs: run it in a process of its own
(``python benchmarks/real_scale_models.py CACHE NAME ...``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel
from torch import nn

from lit_sdo.io import write_tensors
from lit_sdo.models.clip_tokenizer import CLIP_VOCAB, save_clip_tokenizer

MARKER = ".complete"

# The DDPM β schedule of most pixel models and DiT, and Stable Diffusion's "scaled_linear" one.
LINEAR_BETAS: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "linear",
                                "beta_start": 1e-4, "beta_end": 0.02}
SD_BETAS: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                            "beta_end": 0.012, "set_alpha_to_one": False, "steps_offset": 1}


# ----- the networks at the released shapes
def ddpm_256_unet() -> UNet2DModel:
    """The UNet2DModel shape of google/ddpm-celebahq-256 (113.7M parameters, 3×256×256, unconditional)."""
    return UNet2DModel(
        sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),  # attention at 16×16
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        act_fn="silu", attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, time_embedding_type="positional",
    )


def sd15_unet() -> UNet2DConditionModel:
    """UNet2DConditionModel at Stable Diffusion 1.5's shape (859.5M parameters) on 4×64×64 latents."""
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    )


def sd_vae() -> AutoencoderKL:
    """AutoencoderKL at SD's shape (83.7M): stabilityai/sd-vae-ft-mse, SD1.5's vae/, DiT's sd-vae-ft-ema."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                         block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215)


def dit_xl_2() -> DiTTransformer2DModel:
    """DiTTransformer2DModel XL/2 (28 layers × 16 heads × 72) on 4×32×32 latents, learned sigma: 749.8M parameters
    in diffusers' layout, which repeats the timestep/class embedding in each block (the original has 675M)."""
    return DiTTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
        activation_fn="gelu-approximate", norm_elementwise_affine=False, attention_bias=True,
    )


def randomize_zero_weights(module: nn.Module, std: float = 0.02, seed: int = 0) -> nn.Module:
    """Give every all-zero weight matrix (zero-initialised output layers: ADM, DiT's adaLN-zero) small random
    values, so the random network is not the identity and every layer carries a gradient, like a trained one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return module


def write_index(folder: Path, class_name: str, components: dict[str, tuple[str | None, str | None]]) -> None:
    """model_index.json: which library/class each pipeline sub-folder holds (None: a component left out)."""
    index = {"_class_name": class_name, "_diffusers_version": "0.27.0"}
    index |= {key: list(value) for key, value in components.items()}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


# ----- the builders: one per released checkpoint
def build_sd_vae(folder: Path, cache: StandinCache) -> None:
    sd_vae().save_pretrained(folder)


def sd15_text_encoder() -> nn.Module:
    """CLIPTextModel of CLIP ViT-L/14 (123M): SD1.5's text_encoder/."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))


def build_sd15(folder: Path, cache: StandinCache) -> None:
    """stable-diffusion-v1-5: UNet 320/640/1280/1280 + cross-attention 768, VAE, CLIP-L text encoder, tokenizer,
    PNDM scheduler (the released scheduler_config.json); the safety checker is left out (null in the index)."""
    from diffusers import PNDMScheduler

    sd15_unet().save_pretrained(folder / "unet")
    sd_vae().save_pretrained(folder / "vae")
    sd15_text_encoder().save_pretrained(folder / "text_encoder")
    cache.copy_tokenizer(folder / "tokenizer")
    PNDMScheduler(**SD_BETAS, skip_prk_steps=True).save_pretrained(folder / "scheduler")
    write_index(folder, "StableDiffusionPipeline", {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
        "scheduler": ("diffusers", "PNDMScheduler"), "safety_checker": (None, None), "feature_extractor": (None, None)})


def build_lcm(folder: Path, cache: StandinCache) -> None:
    """SimianLuo/LCM_Dreamshaper_v7: SD1.5's UNet plus the guidance embedding (time_cond_proj_dim 256) and the
    LCM scheduler; VAE, text encoder and tokenizer are SD1.5's shapes (linked to the sd15 folder: no second copy)."""
    from diffusers import LCMScheduler, UNet2DConditionModel

    config = dict(sd15_unet().config) | {"time_cond_proj_dim": 256}
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    for key in ("vae", "text_encoder", "tokenizer"):
        (folder / key).symlink_to((cache.root / "sd15" / key).resolve(), target_is_directory=True)
    LCMScheduler(**SD_BETAS, original_inference_steps=50, timestep_spacing="leading").save_pretrained(
        folder / "scheduler")
    write_index(folder, "LatentConsistencyModelPipeline", {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
        "scheduler": ("diffusers", "LCMScheduler"), "safety_checker": (None, None), "feature_extractor": (None, None)})


def save_clip(folder: Path, cache: StandinCache, text: dict, vision: dict, projection_dim: int) -> None:
    """A transformers CLIPModel folder with tokenizer and image processor (crop 224, CLIP mean/std)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = {"vocab_size": CLIP_VOCAB, "max_position_embeddings": 77, "hidden_act": "quick_gelu"} | text
    vision = {"image_size": 224, "hidden_act": "quick_gelu"} | vision
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).save_pretrained(folder)
    cache.copy_tokenizer(folder)
    CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}).save_pretrained(folder)


def build_clip_l14(folder: Path, cache: StandinCache) -> None:
    """openai/clip-vit-large-patch14 (428M): text 768×12, vision 1024×24 patch 14, projection 768."""
    save_clip(folder, cache, {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12},
              {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "patch_size": 14}, projection_dim=768)


def build_clip_b16(folder: Path, cache: StandinCache) -> None:
    """openai/clip-vit-base-patch16 (150M): text 512×12, vision 768×12 patch 16, projection 512."""
    save_clip(folder, cache, {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                       "num_attention_heads": 8},
              {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "patch_size": 16}, projection_dim=512)


def build_laion(folder: Path, cache: StandinCache) -> None:
    """LAION's aesthetic MLP 768 -> 1: the released .pth (torch state dict) and the same as safetensors."""
    from lit_sdo.models.aesthetic import LAION_WEIGHTS, AestheticMLP

    torch.manual_seed(0)
    state = AestheticMLP(768).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / LAION_WEIGHTS)
    write_tensors(folder / "laion_aesthetic_l14.safetensors", state)


def build_hps(folder: Path, cache: StandinCache) -> None:
    """HPS v2.1: an open_clip ViT-H-14 (986M) checkpoint {"state_dict": {"module.<name>": fp16 tensor}}, as the
    released HPS_v2.1_compressed.pt (fp16 halves the file; the loader casts to the model's fp32)."""
    import open_clip

    model = open_clip.create_model("ViT-H-14", pretrained=None)
    state = {f"module.{k}": v.half() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": state}, folder / "HPS_v2.1_compressed.pt")


def build_celebahq(folder: Path, cache: StandinCache) -> None:
    """google/ddpm-ema-celebahq-256: UNet2DModel (113.7M) + DDPM scheduler (linear betas), a pipeline folder."""
    from diffusers import DDPMScheduler

    ddpm_256_unet().save_pretrained(folder / "unet")
    DDPMScheduler(**LINEAR_BETAS).save_pretrained(folder / "scheduler")
    write_index(folder, "DDPMPipeline", {"unet": ("diffusers", "UNet2DModel"), "scheduler": ("diffusers",
                                                                                             "DDPMScheduler")})


def build_dit(folder: Path, cache: StandinCache) -> None:
    """facebook/DiT-XL-2-256: the transformer saved as the hub repo's Transformer2DModel, sd-vae-ft-ema's shape
    (linked to the sd-vae-ft-mse folder), a DDIM scheduler on linear betas."""
    from diffusers import DDIMScheduler

    transformer = randomize_zero_weights(dit_xl_2())
    transformer.save_pretrained(folder / "transformer")
    config = json.loads((folder / "transformer" / "config.json").read_text()) | {"_class_name": "Transformer2DModel"}
    (folder / "transformer" / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "vae").symlink_to((cache.root / "sd-vae-ft-mse").resolve(), target_is_directory=True)
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                  clip_sample=False).save_pretrained(folder / "scheduler")
    write_index(folder, "DiTPipeline", {"transformer": ("diffusers", "Transformer2DModel"),
                                        "vae": ("diffusers", "AutoencoderKL"), "scheduler": ("diffusers",
                                                                                             "DDIMScheduler")})


def build_adm(folder: Path, cache: StandinCache) -> None:
    """guided-diffusion 128x128_diffusion.pt (ADM UNet, 422M) + 128x128_classifier.pt, the README's flags."""
    from lit_sdo.models.adm import ADMClassifier, ADMUNet
    from lit_sdo.models.guided_diffusion import ARCHITECTURES

    target = cache.hub_checkpoints()
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for cls, key in ((ADMUNet, "unet"), (ADMClassifier, "classifier")):
        network = randomize_zero_weights(cls(**ARCHITECTURES["128x128"][key]))
        name = "diffusion" if key == "unet" else "classifier"
        torch.save(network.state_dict(), target / f"128x128_{name}.pt")
    folder.mkdir(parents=True, exist_ok=True)


def build_resnet50(folder: Path, cache: StandinCache) -> None:
    """torchvision's resnet50 state dict under the file name of its DEFAULT weights (resnet50-11ad3fa6.pth)."""
    import torchvision

    weights = torchvision.models.ResNet50_Weights.DEFAULT
    target = cache.hub_checkpoints()
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), target / Path(weights.url).name)
    folder.mkdir(parents=True, exist_ok=True)


def build_images(folder: Path, cache: StandinCache) -> None:
    """A style image (600×400: resized to 512² with the config's warning) and two ImageFolder trees of 256²
    images for the shortcut configs (one class for CelebA-HQ, two for ImageNet)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)

    def save(path: Path, height: int, width: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(height, width, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels).save(path)

    save(folder / "style.png", 400, 600)
    for i in range(2):
        save(folder / "celebahq256" / "faces" / f"{i}.png", 256, 256)
        save(folder / "imagenet256" / f"n0{i}" / "0.png", 256, 256)


BUILDERS: dict[str, Callable[[Path, StandinCache], None]] = {
    "sd-vae-ft-mse": build_sd_vae, "sd15": build_sd15, "lcm": build_lcm, "clip-l14": build_clip_l14,
    "clip-b16": build_clip_b16, "laion": build_laion, "hps": build_hps, "celebahq": build_celebahq,
    "dit-xl-2": build_dit, "adm": build_adm, "resnet50": build_resnet50, "images": build_images,
}
# Components another one links to (built first).
REQUIRES = {"lcm": ("sd15",), "dit-xl-2": ("sd-vae-ft-mse",)}


@dataclass(frozen=True)
class StandinCache:
    """The folder the stand-ins are built into, and the texts the stand-in CLIP tokenizer learns its merges from
    (built once per cache, copied into every folder that needs one)."""

    root: Path
    corpus: tuple[str, ...] = ()

    def build(self, name: str) -> Path:
        """Build ``name`` (and what it links to) unless complete already; returns its folder."""
        if name not in BUILDERS:
            raise ValueError(f"stand-in {name!r} is unknown; allowed: {', '.join(BUILDERS)}")
        for dependency in REQUIRES.get(name, ()):
            self.build(dependency)
        folder = self.root / name
        if (folder / MARKER).is_file():
            return folder
        if folder.exists():  # an interrupted build: start over
            shutil.rmtree(folder)
        torch.manual_seed(0)
        BUILDERS[name](folder, self)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text("")
        return folder

    def copy_tokenizer(self, folder: Path) -> None:
        """The tokenizer files into ``folder``, learned once per cache (``<root>/clip-tokenizer``)."""
        source = self.root / "clip-tokenizer"
        if not (source / MARKER).is_file():
            save_clip_tokenizer(source, self.corpus)
            (source / MARKER).write_text("")
        folder.mkdir(parents=True, exist_ok=True)
        for path in source.iterdir():
            if path.name != MARKER:
                shutil.copy2(path, folder / path.name)

    def hub_checkpoints(self) -> Path:
        """Where TORCH_HOME=<root>/torch puts torch hub's checkpoints (torchvision and guided-diffusion files)."""
        return self.root / "torch" / "hub" / "checkpoints"
