"""openai/guided-diffusion checkpoints (Dhariwal & Nichol 2021) as a :class:`DiffusionModel` with classifier guidance.

Name: ``guided-diffusion:<architecture>[?classifier_scale=S&dir=FOLDER&classifier=none]``, e.g.
``guided-diffusion:128x128?classifier_scale=1.0``. The files keep their published names
(``128x128_diffusion.pt``, ``128x128_classifier.pt``) and are read from ``FOLDER`` or, by default, from
torch hub's checkpoint folder (where ``torch.hub.load_state_dict_from_url`` would put them). Nothing is
downloaded: a missing file is one line saying where to get it (the openai/guided-diffusion README).

State dicts are read with ``torch.load(..., weights_only=True)`` into networks built on the ``meta``
device and loaded with ``strict=True, assign=True`` (no second copy of 422 M parameters); a file of
another architecture is one line naming what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn

from lit_sdo.models.adm import ADMClassifier, ADMUNet
from lit_sdo.models.diffusion_model import DiffusionModel
from lit_sdo.sampling.classifier_guidance import ClassifierGuidedDenoiser

GUIDED_DIFFUSION_PREFIX = "guided-diffusion:"
RELEASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"

# The README's MODEL_FLAGS / CLASSIFIER_FLAGS for each released resolution, as constructor arguments
# (attention_resolutions as downsampling factors: 128 // 32, 128 // 16, 128 // 8).
ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    "128x128": {
        "unet": dict(image_size=128, in_channels=3, model_channels=256, out_channels=6, num_res_blocks=2,
                     attention_resolutions=(4, 8, 16), channel_mult=(1, 1, 2, 3, 4), num_classes=1000,
                     num_heads=4, num_head_channels=-1, scale_shift=True, resblock_updown=True,
                     split_heads_first=True),
        "classifier": dict(image_size=128, in_channels=3, model_channels=128, out_channels=1000, num_res_blocks=2,
                           attention_resolutions=(4, 8, 16), channel_mult=(1, 1, 2, 3, 4), num_head_channels=64,
                           scale_shift=True, resblock_updown=True, split_heads_first=True, pool="attention"),
    },
}
# Training schedule of the released ImageNet models: 1000 linear betas 1e-4 .. 0.02 (--noise_schedule linear),
# ε-prediction. DDIM with clipping of x̂₀ to [-1, 1] (guided-diffusion's clip_denoised default) and ᾱ_prev = 1
# at the last step.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "prediction_type": "epsilon", "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0,
}


def default_folder() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def alphas_cumprod(config: dict[str, Any] = SCHEDULER_CONFIG) -> torch.Tensor:
    """ᾱ_t, t = 0..T-1, of a linear beta schedule, in float64 (T,)."""
    betas = torch.linspace(config["beta_start"], config["beta_end"], config["num_train_timesteps"],
                           dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a released ``.pt`` file (weights only: no code in the pickle is run)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"guided-diffusion {what} {path.name} is not available locally (looked in {path.parent}; nothing is "
            f"downloaded here): get it from {RELEASE_URL}{path.name} (openai/guided-diffusion README) and put it in "
            "that folder, or name another with ?dir=FOLDER")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors (a guided-diffusion .pt file holds one)")
    return state


def check_layout(network: nn.Module, state: dict[str, torch.Tensor], path: Path | str, what: str) -> None:
    """One-line ValueError when ``state`` does not have exactly the names and shapes of ``network``."""
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {found[k]} != {expected[k]}" for k in expected if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
        raise ValueError(f"{path} is not a {what}: " + ", ".join(p for p in parts if p)
                         + " tensors; pass the matching file of the openai/guided-diffusion release")


def build_on_meta(cls: type[nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    """The network without allocating or initialising its parameters."""
    with torch.device("meta"):
        return cls(**kwargs)


def load_network(path: str | Path, cls: type[nn.Module], kwargs: dict[str, Any], what: str) -> nn.Module:
    """Read ``path`` and load it strictly into ``cls(**kwargs)``; float32, eval mode, frozen."""
    path = Path(path).expanduser()
    state = read_state_dict(path, what)
    network = build_on_meta(cls, kwargs)
    check_layout(network, state, path, what)
    network.load_state_dict(state, strict=True, assign=True)
    return network.float().eval().requires_grad_(False)


def architecture(name: str) -> dict[str, dict[str, Any]]:
    if name not in ARCHITECTURES:
        raise ValueError(f"guided-diffusion architecture {name!r} is not one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def load_adm_unet(path: str | Path, arch: str = "128x128") -> ADMUNet:
    """The class-conditional ADM UNet of ``arch`` from a released ``<arch>_diffusion.pt``."""
    return load_network(path, ADMUNet, architecture(arch)["unet"], f"{arch} ADM diffusion UNet")  # type: ignore


def load_adm_classifier(path: str | Path, arch: str = "128x128") -> ADMClassifier:
    """The noise-aware classifier of ``arch`` from a released ``<arch>_classifier.pt``."""
    return load_network(path, ADMClassifier, architecture(arch)["classifier"],  # type: ignore[return-value]
                        f"{arch} noise-aware classifier")


def parse_name(name: str) -> tuple[str, dict[str, str]]:
    """``guided-diffusion:128x128?classifier_scale=1`` -> ("128x128", {"classifier_scale": "1"})."""
    spec = name[len(GUIDED_DIFFUSION_PREFIX):]
    arch, _, query = spec.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - {"classifier_scale", "dir", "classifier"}
    if unknown:
        raise ValueError(f"{name!r}: unknown option(s) {', '.join(sorted(unknown))}; allowed: classifier_scale, "
                         "dir, classifier=none")
    architecture(arch)
    return arch, options


def load_guided_diffusion(name: str, guidance_scale: float = 1.0) -> DiffusionModel:
    """A :class:`~lit_sdo.models.diffusion_model.DiffusionModel` for ``guided-diffusion:<arch>[?options]``.

    ``classifier_scale`` defaults to 0 (no guidance); ``classifier=none`` loads no classifier (then a
    non-zero scale is refused). ADM has no null label, so ``guidance_scale`` (classifier-free) must be 1.
    """
    arch, options = parse_name(name)
    if guidance_scale != 1.0:
        raise ValueError(f"{name!r} has no null label, so classifier-free guidance needs guidance_scale=1.0 (got "
                         f"{guidance_scale}); use ?classifier_scale=S for classifier guidance")
    try:
        scale = float(options.get("classifier_scale", "0"))
    except ValueError:
        raise ValueError(f"{name!r}: classifier_scale={options['classifier_scale']!r} is not a number") from None
    with_classifier = options.get("classifier", "") != "none"
    if scale != 0 and not with_classifier:
        raise ValueError(f"{name!r}: classifier_scale={scale} needs the noise-aware classifier; drop classifier=none "
                         "or set classifier_scale=0")
    folder = Path(options["dir"]).expanduser() if "dir" in options else default_folder()
    unet = load_adm_unet(folder / f"{arch}_diffusion.pt", arch)
    classifier = load_adm_classifier(folder / f"{arch}_classifier.pt", arch) if with_classifier else None
    denoiser = ClassifierGuidedDenoiser(unet, alphas_cumprod(), classifier, classifier_scale=scale)
    return DiffusionModel(name, denoiser, dict(SCHEDULER_CONFIG), unet.num_classes, unet.image_size,
                          unet.in_channels)
