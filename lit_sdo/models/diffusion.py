"""Diffusion models by name, each turned into a :class:`DiffusionModel` with the right denoiser adapter.

Sources: ``embedded:<name>`` (lit_sdo's digits DDPM, shortcut and flow models);
``guided-diffusion:<arch>[?classifier_scale=S]`` (the released ADM checkpoints with their noise-aware
classifier, :mod:`lit_sdo.models.guided_diffusion`); a diffusers folder or a hub id in the local cache: a
bare ``UNet2DModel`` folder (config.json + scheduler_config.json, what lit_sdo exports), a pipeline
folder (model_index.json) with a ``UNet2DModel`` (pixel), a
``UNet2DConditionModel`` + VAE + text encoder (latent, text), or a DiT / PixArt transformer + VAE; or a
shortcut-model folder (config.json of kind ``shortcut_dit``, lit_sdo's format).

:func:`build_sampler` pairs a loaded model with an N-step scheduler: a diffusers scheduler by name, or the
shortcut model's own (``scheduler="shortcut"``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from lit_sdo.models.diffusion_model import DiffusionModel
from lit_sdo.models.guided_diffusion import GUIDED_DIFFUSION_PREFIX, load_guided_diffusion
from lit_sdo.models.hub import resolve_folder
from lit_sdo.models.shortcut import SHORTCUT_KIND, load_shortcut
from lit_sdo.sampling.denoisers import DenoiserAdapter, LatentUNetDenoiser, PixelUNetDenoiser, TransformerDenoiser
from lit_sdo.sampling.schedulers import build_scheduler
from lit_sdo.sampling.shortcut import build_shortcut_sampler

LIT_SDO_CONFIG = "lit_sdo.json"  # beside diffusers' config: the null label of lit_sdo's class-conditional models
PROMPT_MAX_LENGTH = 120  # cap for tokenizers that report no practical maximum (T5)


def load_diffusion(name: str, *, guidance_scale: float = 1.0, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load ``name`` (``embedded:<name>``, a diffusers folder, a cached hub id or ``guided-diffusion:<arch>``)."""
    if name.startswith(GUIDED_DIFFUSION_PREFIX):
        model = load_guided_diffusion(name, guidance_scale)
        model.denoiser.to(device).eval().requires_grad_(False)
        return model
    folder = resolve_folder(name, "diffusion model")
    config_path = folder / "config.json"
    if (folder / "model_index.json").is_file():
        model = _load_pipeline_folder(name, folder, guidance_scale)
    elif not config_path.is_file():
        raise FileNotFoundError(f"diffusion model folder {folder} has neither model_index.json nor config.json; "
                                "pass a diffusers pipeline or UNet2DModel folder")
    elif _read_json(config_path).get("kind") == SHORTCUT_KIND:
        model = _load_shortcut(name, folder, guidance_scale)
    else:
        model = _load_pixel_unet(name, folder, folder / "scheduler_config.json", guidance_scale)
    model.denoiser.to(device).eval().requires_grad_(False)
    if model.encode_prompt is not None:
        model.encode_prompt.text_encoder.to(device)  # type: ignore[attr-defined]
    return model


def build_sampler(model: DiffusionModel, scheduler: str, num_steps: int) -> tuple[DenoiserAdapter, SchedulerMixin]:
    """(denoiser, scheduler) for N-step sampling of ``model``: a diffusers scheduler by name on the model's
    own adapter, or, for a shortcut model, its few-step scheduler (``scheduler="shortcut"``) with an adapter
    paired to it (timesteps σ·1000, so t = 600 means σ = 0.6) and the loaded adapter's guidance scale."""
    is_shortcut = model.is_shortcut
    if is_shortcut != (scheduler == "shortcut"):
        raise ValueError(f"generator {model.name} is {'a' if is_shortcut else 'not a'} shortcut model: use "
                         f"scheduler: {'shortcut' if is_shortcut else 'ddim (or dpm, euler, lcm, ...)'}")
    if not is_shortcut:
        return model.denoiser, build_scheduler(scheduler, num_steps, base_config=model.scheduler_config)
    network = model.denoiser.network
    denoiser, shortcut_scheduler = build_shortcut_sampler(network, num_steps,
                                                          guidance_scale=model.denoiser.guidance_scale,
                                                          flow_only=model.denoiser.flow_only)
    return denoiser.eval().requires_grad_(False), shortcut_scheduler


def _load_shortcut(name: str, folder: Path, guidance_scale: float) -> DiffusionModel:
    """A shortcut (or flow-matching) DiT, at its finest step count; :func:`build_sampler` sets N."""
    network = load_shortcut(folder)
    denoiser, _ = build_shortcut_sampler(network, network.max_steps, guidance_scale=guidance_scale,
                                         flow_only=not network.step_conditioned)
    size = network.config["sample_size"]
    return DiffusionModel(name, denoiser, {}, network.num_classes, size, network.config["in_channels"],
                          is_shortcut=True)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the model folder is incomplete")
    return json.loads(path.read_text())


def _load_pixel_unet(name: str, unet_folder: Path, scheduler_path: Path, guidance_scale: float) -> DiffusionModel:
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(unet_folder)
    extra_path = unet_folder / LIT_SDO_CONFIG
    extra = _read_json(extra_path) if extra_path.is_file() else {}
    num_embeds = unet.config.num_class_embeds
    null_class = extra.get("null_class")
    num_classes = extra.get("num_classes", num_embeds)
    if guidance_scale != 1.0 and null_class is None:
        raise ValueError(f"{name!r} was not trained with a null label; classifier-free guidance needs "
                         "guidance_scale=1.0")
    denoiser = PixelUNetDenoiser(unet, guidance_scale=guidance_scale, null_class=null_class)
    return DiffusionModel(name, denoiser, _read_json(scheduler_path), num_classes, denoiser.sample_shape[-1],
                          unet.config.out_channels)


def _load_pipeline_folder(name: str, folder: Path, guidance_scale: float) -> DiffusionModel:
    index = _read_json(folder / "model_index.json")
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    if "unet" in index and index["unet"][1] == "UNet2DModel":
        return _load_pixel_unet(name, folder / "unet", scheduler_path, guidance_scale)
    vae = _load_component(folder, index, "vae")
    if vae is None:
        raise FileNotFoundError(f"pipeline {name!r} has no vae/ folder; latent models need their VAE")
    encode = _prompt_encoder(folder, index)
    scheduler_config = _read_json(scheduler_path)
    if "unet" in index:
        network = _load_component(folder, index, "unet")
        # The null prompt is encoded per batch as StableDiffusionPipeline encodes its negative prompt ([""] * B in
        # one call), so guidance equals the pipeline's by construction on a CPU whose GEMM depends on the batch.
        denoiser: DenoiserAdapter = LatentUNetDenoiser(network, vae, guidance_scale, encode_prompt=encode)
        num_classes = None
    elif "transformer" in index:
        null_embedding = encode([""]) if encode is not None and guidance_scale != 1.0 else None
        network = _load_component(folder, index, "transformer")
        text = getattr(network.config, "caption_channels", None) is not None
        num_classes = None if text else network.config.num_embeds_ada_norm
        # DiT's label table has num_classes + 1 rows; the last one is the null label of its training.
        denoiser = TransformerDenoiser(network, vae, guidance_scale, null_class=None if text else num_classes,
                                       null_embedding=null_embedding)
    else:
        raise ValueError(f"pipeline {name!r} has neither a unet nor a transformer component")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # VAE downsampling factor
    return DiffusionModel(name, denoiser, scheduler_config, num_classes, denoiser.sample_shape[-1] * factor,
                          vae.config.out_channels, encode_prompt=encode)


def _load_component(folder: Path, index: dict[str, Any], key: str) -> Any:
    """Load one pipeline component by the library/class names model_index.json gives it."""
    if key not in index or index[key][0] is None or not (folder / key).is_dir():
        return None
    library, class_name = index[key]
    module = __import__(library)
    return getattr(module, class_name).from_pretrained(folder / key)


def _prompt_encoder(folder: Path, index: dict[str, Any]) -> Callable[[list[str]], Tensor] | None:
    """prompts -> last hidden states of the pipeline's text encoder (None when it ships none)."""
    text_encoder = _load_component(folder, index, "text_encoder")
    tokenizer = _load_component(folder, index, "tokenizer")
    if text_encoder is None or tokenizer is None:
        return None
    text_encoder.eval().requires_grad_(False)
    max_length = min(tokenizer.model_max_length, PROMPT_MAX_LENGTH)

    @torch.no_grad()
    def encode(prompts: list[str]) -> Tensor:
        tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                           return_tensors="pt")
        device = next(text_encoder.parameters()).device
        return text_encoder(tokens.input_ids.to(device))[0]  # (B, L, D)

    encode.text_encoder = text_encoder  # type: ignore[attr-defined] - so callers can move it to a device
    return encode
