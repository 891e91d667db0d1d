"""LoRA on a denoiser's network (paper Sec. 5.3, reward fine-tuning; Hu et al. 2021).

Injection goes through ``peft`` (``inject_adapter_in_model``), so the trained weights are peft's own
``lora_A`` / ``lora_B`` modules. Files are written the way diffusers writes a UNet LoRA
(``pytorch_lora_weights.safetensors`` with ``unet.``-prefixed peft keys, plus peft's
``adapter_config.json``), so ``pipeline.load_lora_weights(folder)`` reads them for Stable Diffusion.

Applying LoRAs does not need peft: each LoRA is a weight delta ΔW = (α / r)·B·A per target layer, and
the paper's interpolation θ_old + α·θ_A + β·θ_B (Sec. 5.3, Fig. 13) is ``merge_loras(net, [(A, α), (B, β)])``.

    lit-sdo lora-grid --model embedded:digits-ddpm --lora+=runs/a/lora:1.0 --lora+=runs/b/lora:0.5 \
        --out runs/grid.png
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from lit_sdo.io import atomic_path, read_tensors, write_tensors

DEFAULT_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections (UNet, DiT, PixArt)
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name for LoRA weights
CONFIG_NAME = "adapter_config.json"  # peft's file name for the adapter config
KEY_PREFIX = "unet."  # diffusers prefixes the denoiser's LoRA keys with its pipeline component name
ADAPTER = "default"  # peft adapter name used here (one adapter per network)


def _matches(name: str, target: str) -> bool:
    """peft's rule for a string target: the module name equals it or ends with ``.target``."""
    return name == target or name.endswith("." + target)


def matching_modules(network: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the modules of ``network`` that LoRA targets ``targets`` would adapt."""
    return [name for name, _ in network.named_modules() if any(_matches(name, t) for t in targets)]


def layer_names(network: nn.Module) -> list[str]:
    """Distinct short names (last one or two name parts) of the Linear/Conv layers: what a user can target."""
    names: dict[str, None] = {}
    for name, module in network.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            parts = name.split(".")
            short = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
            names[short] = None
    return list(names)


def inject_lora(network: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS, rank: int = 4,
                alpha: float | None = None) -> nn.Module:
    """Add trainable fp32 LoRA layers to ``network`` in place and freeze everything else.

    Args:
        network: the denoiser's network (a diffusers UNet or transformer).
        targets: module names (or name suffixes) to adapt; default: attention projections.
        rank: LoRA rank r.
        alpha: LoRA α (scale α / r); default ``rank`` (scale 1).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank={rank} must be >= 1")
    targets = list(targets)
    missing = [t for t in targets if not matching_modules(network, [t])]
    if missing:
        raise ValueError(f"LoRA target(s) {missing} match no module of {type(network).__name__}; its Linear/Conv "
                         f"layers are named: {', '.join(layer_names(network))}")
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=targets,
                        init_lora_weights=True)
    network.requires_grad_(False)
    inject_adapter_in_model(config, network, adapter_name=ADAPTER)
    for name, param in network.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()  # fp32 LoRA even on a bf16 base (paper Sec. 5.3)
            param.requires_grad_(True)
    network.lora_config = config  # type: ignore[assignment] - remembered for save_lora
    return network


def lora_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA parameters (what the optimiser sees)."""
    return [p for n, p in network.named_parameters() if "lora_" in n]


def lora_state_dict(network: nn.Module) -> dict[str, Tensor]:
    """LoRA weights in peft's key format (``<module>.lora_A.weight``), without the adapter name."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(network, adapter_name=ADAPTER)


def save_lora(network: nn.Module, folder: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Write ``network``'s LoRA as diffusers does (safetensors, ``unet.`` keys) plus peft's adapter config."""
    config = getattr(network, "lora_config", None)
    if config is None:
        raise ValueError("this network has no LoRA to save: call inject_lora(network, ...) first")
    folder = Path(folder)
    tensors = {KEY_PREFIX + key: value.float() for key, value in lora_state_dict(network).items()}
    write_tensors(folder / WEIGHTS_NAME, tensors, metadata={"format": "pt", "lora_rank": str(config.r),
                                                             "lora_alpha": str(config.lora_alpha), **(metadata or {})})
    data = config.to_dict()
    data["target_modules"] = sorted(data["target_modules"])  # peft stores a set
    with atomic_path(folder / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return folder


def load_lora(folder: str | os.PathLike[str]) -> tuple[dict[str, Tensor], float]:
    """A saved LoRA's weights (keys without the ``unet.`` prefix) and its scale α / r."""
    folder = Path(folder)
    path = folder / WEIGHTS_NAME if folder.is_dir() else folder
    if not path.is_file():
        raise FileNotFoundError(f"LoRA {folder} not found: pass a folder holding {WEIGHTS_NAME} (written by fit)")
    tensors = {key.removeprefix(KEY_PREFIX): value for key, value in read_tensors(path).items()}
    config_path = path.parent / CONFIG_NAME
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        scale = float(config["lora_alpha"]) / float(config["r"])
    else:
        scale = 1.0
    return tensors, scale


def lora_deltas(tensors: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """Per adapted module: ΔW = scale·B·A reshaped to the module's weight (Linear or Conv2d)."""
    deltas = {}
    for key in tensors:
        match = re.fullmatch(r"(.+)\.lora_A\.weight", key)
        if match is None:
            continue
        module = match.group(1)
        a, b = tensors[key].float(), tensors[f"{module}.lora_B.weight"].float()  # A (r, in, *k), B (out, r, 1, 1)
        delta = b.flatten(1) @ a.flatten(1)  # (out, in·k·k)
        deltas[module] = scale * delta.view(b.shape[0], *a.shape[1:])
    return deltas


def merge_loras(network: nn.Module, loras: Sequence[tuple[str | os.PathLike[str], float]]) -> nn.Module:
    """A copy of a plain (LoRA-free) network with θ_old + Σ αᵢ·ΔWᵢ merged in (the paper's LoRA mixing)."""
    merged = copy.deepcopy(network)
    modules = dict(merged.named_modules())
    for folder, weight in loras:
        tensors, scale = load_lora(folder)
        for name, delta in lora_deltas(tensors, scale).items():
            module = modules.get(name)
            if module is None or not hasattr(module, "weight"):
                raise ValueError(f"LoRA {folder} adapts {name!r}, which this network does not have: it was trained "
                                 "on another model")
            if module.weight.shape != delta.shape:
                raise ValueError(f"LoRA {folder} has a {tuple(delta.shape)} update for {name!r} whose weight is "
                                 f"{tuple(module.weight.shape)}: it was trained on another model")
            with torch.no_grad():
                module.weight += weight * delta.to(module.weight)
    return merged


def parse_lora_argument(text: str) -> tuple[str, float]:
    """``FOLDER[:SCALE]`` -> (folder, scale); scale 1 when omitted."""
    folder, sep, scale = text.rpartition(":")
    if not sep or not folder:
        return text, 1.0
    try:
        return folder, float(scale)
    except ValueError:
        return text, 1.0


def sample_lora_grid(model: str = "embedded:digits-ddpm", lora: Sequence[str] = (), *,
                     classes: Sequence[int] | None = None, prompts: Sequence[str] = ("a painting of a cat",),
                     guidance_scale: float = 1.0, seeds: Sequence[int] = tuple(range(8)), num_steps: int = 50,
                     scheduler: str = "ddim", out: str = "runs/lora_grid.png") -> Path:
    """Sample a grid of fixed seeds with LoRAs merged at chosen scales: θ_old + α·θ_A + β·θ_B (paper Fig. 13).

    Args:
        model: the diffusion model the LoRAs were trained on (``embedded:<name>``, a folder or a hub id).
        lora: LoRA folders written by fit, each ``FOLDER[:SCALE]`` (scale 1 when omitted); several are mixed.
        classes: class labels, one row each (class-conditional models; default: every class).
        prompts: prompts, one row each (text models).
        guidance_scale: classifier-free guidance scale (7.5 for Stable Diffusion).
        seeds: the noise seeds, one column each.
        num_steps: sampling steps.
        scheduler: ddim, dpm, euler, ... (shortcut for shortcut models).
        out: the PNG to write.
    """
    from lit_sdo.images import image_grid, save_png, to_unit_range
    from lit_sdo.models import build_sampler, load_diffusion
    from lit_sdo.sampling import noise_for_seeds, sample

    diffusion = load_diffusion(model, guidance_scale=guidance_scale)
    diffusion.denoiser.network = merge_loras(diffusion.denoiser.network, [parse_lora_argument(t) for t in lora])
    if diffusion.encode_prompt is not None:  # text model: one row per prompt
        rows: list = list(prompts)
        cond = diffusion.encode_prompt([p for p in rows for _ in seeds])  # (B, L, D)
    else:
        rows = list(classes) if classes is not None else list(range(diffusion.num_classes or 1))
        cond = torch.tensor([c for c in rows for _ in seeds]) if diffusion.num_classes else None
    row_seeds = [s for _ in rows for s in seeds]
    denoiser, noise_scheduler = build_sampler(diffusion, scheduler, num_steps)
    with torch.no_grad():
        x = noise_for_seeds(row_seeds, denoiser.sample_shape)
        sampled = sample(denoiser, noise_scheduler, x, cond, policy="none")
        images = to_unit_range(denoiser.decode(sampled.sample))
    path = save_png(out, image_grid(images, nrow=len(seeds)), scale=4)
    print(f"[lit_sdo] wrote {path} ({len(rows)} rows × {len(seeds)} seeds; LoRAs: {list(lora) or 'none'})")  # noqa: T201
    return path
