"""Full-size stand-ins of the paper's checkpoints: the real architectures with random weights, saved in the
real on-disk layout (diffusers pipeline folders, transformers folders, torchvision / guided-diffusion ``.pt``
state dicts, safetensors), so every paper config loads them through its own loader and runs at real size.

Each component is one folder under the cache (``<cache>/<name>``), written by a fresh process
(``python -m benchmarks.real_scale_models <cache> <name> ...``: building SD1.5 holds GBs that a parent should
not keep) and marked complete by ``.complete`` last, so a killed build is rebuilt and a finished one reused.
The shapes are those of the released configs (cited per builder); nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import LINEAR_BETAS, SD_BETAS, ddpm_256_unet, dit_xl_2, sd15_unet, sd_vae  # noqa: E402
from lit_sdo.io import write_tensors  # noqa: E402

MARKER = ".complete"
CLIP_VOCAB = 49408  # OpenAI CLIP's BPE vocabulary (SD1.5's text encoder, CLIP ViT-B/16 and L/14)
# The text of the shipped prompt lists and configs: the corpus the generated BPE merges are learned from.
CORPUS_FILES = ("data/prompts/animals45.txt", "README.md", "docs")


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


# ----- the CLIP tokenizer, built offline ----------------------------------------------------------------------
def bpe_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    """``count`` byte-pair merges learned greedily from ``words`` (each word ends in ``</w>``), most frequent first."""
    from collections import Counter

    vocab = Counter(tuple(word[:-1]) + (word[-1] + "</w>",) for word in words if word)
    merges: list[tuple[str, str]] = []
    while len(merges) < count:
        pairs: Counter = Counter()
        for symbols, freq in vocab.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: Counter = Counter()
        for symbols, freq in vocab.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += freq
        vocab = merged
    return merges


def bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE's symbol for each byte: printable Latin-1 bytes stand for themselves, the other 68 are
    moved to code points 256.. so that every symbol is a visible character (GPT-2 / CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(moved)}


def save_clip_tokenizer(folder: Path, num_merges: int = 2000) -> None:
    """A CLIPTokenizer with CLIP's vocabulary size and special-token ids (start 49406, end 49407): the 512
    byte-level symbols, BPE merges learned from the repository's own text, unreachable filler tokens; written
    as vocab.json + merges.txt + tokenizer configs, the files of the released tokenizers."""
    import re

    from transformers import CLIPTokenizer

    text = []
    for name in CORPUS_FILES:
        path = ROOT / name
        files = sorted(path.rglob("*.md")) if path.is_dir() else [path]
        text += [f.read_text(errors="ignore").lower() for f in files if f.is_file()]
    byte_map = bytes_to_unicode()
    words = ["".join(byte_map[b] for b in w.encode()) for w in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", " ".join(text))]
    symbols = list(byte_map.values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = bpe_merges(words, num_merges)
    tokens += ["".join(pair) for pair in merges]
    tokens = list(dict.fromkeys(tokens))
    tokens += [f"<|unused{i}|>" for i in range(CLIP_VOCAB - 2 - len(tokens))]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77).save_pretrained(folder)


def copy_clip_tokenizer(cache: Path, folder: Path) -> None:
    """The tokenizer files into ``folder``, learned once per cache (``<cache>/clip-tokenizer``)."""
    import shutil

    source = cache / "clip-tokenizer"
    if not (source / MARKER).is_file():
        save_clip_tokenizer(source)
        (source / MARKER).write_text("")
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name != MARKER:
            shutil.copy2(path, folder / path.name)


# ----- the builders: one per released checkpoint ----------------------------------------------------------------
def build_sd_vae(folder: Path, cache: Path) -> None:
    sd_vae().save_pretrained(folder)


def sd15_text_encoder() -> nn.Module:
    """CLIPTextModel of CLIP ViT-L/14 (123M): SD1.5's text_encoder/."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))


def build_sd15(folder: Path, cache: Path) -> None:
    """stable-diffusion-v1-5: UNet 320/640/1280/1280 + cross-attention 768, VAE, CLIP-L text encoder, tokenizer,
    PNDM scheduler (the released scheduler_config.json); the safety checker is left out (null in the index)."""
    from diffusers import PNDMScheduler

    sd15_unet().save_pretrained(folder / "unet")
    sd_vae().save_pretrained(folder / "vae")
    sd15_text_encoder().save_pretrained(folder / "text_encoder")
    copy_clip_tokenizer(cache, folder / "tokenizer")
    PNDMScheduler(**SD_BETAS, skip_prk_steps=True).save_pretrained(folder / "scheduler")
    write_index(folder, "StableDiffusionPipeline", {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
        "scheduler": ("diffusers", "PNDMScheduler"), "safety_checker": (None, None), "feature_extractor": (None, None)})


def build_lcm(folder: Path, cache: Path) -> None:
    """SimianLuo/LCM_Dreamshaper_v7: SD1.5's UNet plus the guidance embedding (time_cond_proj_dim 256) and the
    LCM scheduler; VAE, text encoder and tokenizer are SD1.5's shapes (linked to the sd15 folder: no second copy)."""
    from diffusers import LCMScheduler, UNet2DConditionModel

    config = dict(sd15_unet().config) | {"time_cond_proj_dim": 256}
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    for key in ("vae", "text_encoder", "tokenizer"):
        (folder / key).symlink_to((cache / "sd15" / key).resolve(), target_is_directory=True)
    LCMScheduler(**SD_BETAS, original_inference_steps=50, timestep_spacing="leading").save_pretrained(
        folder / "scheduler")
    write_index(folder, "LatentConsistencyModelPipeline", {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
        "scheduler": ("diffusers", "LCMScheduler"), "safety_checker": (None, None), "feature_extractor": (None, None)})


def save_clip(folder: Path, cache: Path, text: dict, vision: dict, projection_dim: int) -> None:
    """A transformers CLIPModel folder with tokenizer and image processor (crop 224, CLIP mean/std)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text = {"vocab_size": CLIP_VOCAB, "max_position_embeddings": 77, "hidden_act": "quick_gelu"} | text
    vision = {"image_size": 224, "hidden_act": "quick_gelu"} | vision
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).save_pretrained(folder)
    copy_clip_tokenizer(cache, folder)
    CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}).save_pretrained(folder)


def build_clip_l14(folder: Path, cache: Path) -> None:
    """openai/clip-vit-large-patch14 (428M): text 768×12, vision 1024×24 patch 14, projection 768."""
    save_clip(folder, cache, {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12},
              {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "patch_size": 14}, projection_dim=768)


def build_clip_b16(folder: Path, cache: Path) -> None:
    """openai/clip-vit-base-patch16 (150M): text 512×12, vision 768×12 patch 16, projection 512."""
    save_clip(folder, cache, {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                       "num_attention_heads": 8},
              {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "patch_size": 16}, projection_dim=512)


def build_laion(folder: Path, cache: Path) -> None:
    """LAION's aesthetic MLP 768 -> 1: the released .pth (torch state dict) and the same as safetensors."""
    from lit_sdo.models.aesthetic import LAION_WEIGHTS, AestheticMLP

    torch.manual_seed(0)
    state = AestheticMLP(768).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / LAION_WEIGHTS)
    write_tensors(folder / "laion_aesthetic_l14.safetensors", state)


def build_hps(folder: Path, cache: Path) -> None:
    """HPS v2.1: an open_clip ViT-H-14 (986M) checkpoint {"state_dict": {"module.<name>": fp16 tensor}}, as the
    released HPS_v2.1_compressed.pt (fp16 halves the file; the loader casts to the model's fp32)."""
    import open_clip

    model = open_clip.create_model("ViT-H-14", pretrained=None)
    state = {f"module.{k}": v.half() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "state_dict": state}, folder / "HPS_v2.1_compressed.pt")


def build_celebahq(folder: Path, cache: Path) -> None:
    """google/ddpm-ema-celebahq-256: UNet2DModel (113.7M) + DDPM scheduler (linear betas), a pipeline folder."""
    from diffusers import DDPMScheduler

    ddpm_256_unet().save_pretrained(folder / "unet")
    DDPMScheduler(**LINEAR_BETAS).save_pretrained(folder / "scheduler")
    write_index(folder, "DDPMPipeline", {"unet": ("diffusers", "UNet2DModel"), "scheduler": ("diffusers",
                                                                                             "DDPMScheduler")})


def build_dit(folder: Path, cache: Path) -> None:
    """facebook/DiT-XL-2-256: the transformer saved as the hub repo's Transformer2DModel, sd-vae-ft-ema's shape
    (linked to the sd-vae-ft-mse folder), a DDIM scheduler on linear betas."""
    from diffusers import DDIMScheduler

    transformer = randomize_zero_weights(dit_xl_2())
    transformer.save_pretrained(folder / "transformer")
    config = json.loads((folder / "transformer" / "config.json").read_text()) | {"_class_name": "Transformer2DModel"}
    (folder / "transformer" / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "vae").symlink_to((cache / "sd-vae-ft-mse").resolve(), target_is_directory=True)
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                  clip_sample=False).save_pretrained(folder / "scheduler")
    write_index(folder, "DiTPipeline", {"transformer": ("diffusers", "Transformer2DModel"),
                                        "vae": ("diffusers", "AutoencoderKL"), "scheduler": ("diffusers",
                                                                                             "DDIMScheduler")})


def torch_hub_checkpoints(cache: Path) -> Path:
    """Where TORCH_HOME=<cache>/torch puts torch hub's checkpoints (torchvision and guided-diffusion files)."""
    return cache / "torch" / "hub" / "checkpoints"


def build_adm(folder: Path, cache: Path) -> None:
    """guided-diffusion 128x128_diffusion.pt (ADM UNet, 422M) + 128x128_classifier.pt, the README's flags."""
    from lit_sdo.models.adm import ADMClassifier, ADMUNet
    from lit_sdo.models.guided_diffusion import ARCHITECTURES

    target = torch_hub_checkpoints(cache)
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for cls, key in ((ADMUNet, "unet"), (ADMClassifier, "classifier")):
        network = randomize_zero_weights(cls(**ARCHITECTURES["128x128"][key]))
        name = "diffusion" if key == "unet" else "classifier"
        torch.save(network.state_dict(), target / f"128x128_{name}.pt")
    folder.mkdir(parents=True, exist_ok=True)


def build_resnet50(folder: Path, cache: Path) -> None:
    """torchvision's resnet50 state dict under the file name of its DEFAULT weights (resnet50-11ad3fa6.pth)."""
    import torchvision

    weights = torchvision.models.ResNet50_Weights.DEFAULT
    target = torch_hub_checkpoints(cache)
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), target / Path(weights.url).name)
    folder.mkdir(parents=True, exist_ok=True)


def build_images(folder: Path, cache: Path) -> None:
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


BUILDERS: dict[str, Callable[[Path, Path], None]] = {
    "sd-vae-ft-mse": build_sd_vae, "sd15": build_sd15, "lcm": build_lcm, "clip-l14": build_clip_l14,
    "clip-b16": build_clip_b16, "laion": build_laion, "hps": build_hps, "celebahq": build_celebahq,
    "dit-xl-2": build_dit, "adm": build_adm, "resnet50": build_resnet50, "images": build_images,
}
# Components another one links to (built first).
REQUIRES = {"lcm": ("sd15",), "dit-xl-2": ("sd-vae-ft-mse",)}


def build(cache: Path, name: str) -> Path:
    """Build ``name`` into ``cache/name`` unless it is complete already; returns the folder."""
    if name not in BUILDERS:
        raise ValueError(f"component {name!r} is unknown; allowed: {', '.join(BUILDERS)}")
    folder = cache / name
    if (folder / MARKER).is_file():
        return folder
    if folder.exists():  # an interrupted build: start over
        import shutil

        shutil.rmtree(folder)
    torch.manual_seed(0)
    BUILDERS[name](folder, cache)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("")
    return folder


def main(argv: list[str] | None = None) -> None:
    """``CACHE NAME ...``: build each named component into the cache (one thread)."""
    cache, *names = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    for name in names:
        print(f"built {build(Path(cache), name)}", flush=True)


if __name__ == "__main__":
    main()
