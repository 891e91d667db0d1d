"""HPSv2-style human-preference scorers: an open_clip CLIP fine-tuned on preferences, weights from a file.

HPS v2 / v2.1 (Wu et al., 2023) is an open_clip ViT-H-14 whose image–text cosine similarity is the
score; its weights (``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt``) are a checkpoint with a
``state_dict``. lit_sdo never downloads them: the user passes the file. The score is differentiable in
the image, so it serves as a reward (paper Sec. 5.3) or as a guidance objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_sdo.io import read_weights

HPS_ARCHITECTURE = "ViT-H-14"
HPS_SOURCE = "https://huggingface.co/xswu/HPSv2 (HPS_v2.1_compressed.pt or HPS_v2_compressed.pt)"


class PreferenceClip(nn.Module):
    """Images in [0, 1] and their prompts -> (B,) preference scores (cosine of the CLIP embeddings).

    Preprocessing follows open_clip's evaluation transform for the model (resize of the short side,
    centre crop, mean/std normalisation), written with differentiable tensor ops.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, preprocess: dict[str, Any]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        size = preprocess["size"]
        self.image_size = size if isinstance(size, int) else int(size[0])
        self.register_buffer("mean", torch.tensor(preprocess["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess["std"]).view(1, 3, 1, 1), persistent=False)

    def prepare(self, images: Tensor) -> Tensor:
        """(B, 1|3, H, W) in [0, 1] -> the model's normalised input (B, 3, S, S)."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        height, width = images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        if size != (height, width):
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        images = images[..., top:top + self.image_size, left:left + self.image_size]
        return (images - self.mean) / self.std

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images: a preference score needs one each")
        tokens = self.tokenizer(list(prompts)).to(images.device)
        image_features = F.normalize(self.model.encode_image(self.prepare(images)), dim=-1)
        text_features = F.normalize(self.model.encode_text(tokens), dim=-1)
        return (image_features * text_features).sum(-1)


def load_preference_clip(weights: str | Path, architecture: str = HPS_ARCHITECTURE) -> PreferenceClip:
    """A frozen :class:`PreferenceClip` from a weights file (``.pt`` checkpoint with ``state_dict``, a bare
    state dict, or ``.safetensors``) and an open_clip architecture name. One-line errors for a missing
    file, a missing ``open_clip`` package, an unknown architecture or weights of another shape."""
    try:
        import open_clip
    except ImportError:
        raise ModuleNotFoundError("a preference reward needs open_clip: pip install 'lit_sdo[hps]'") from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"preference weights {str(path)!r} are not available locally: download them from "
                                f"{HPS_SOURCE} on a machine with internet access and pass the file's path")
    if architecture not in open_clip.list_models():
        raise ValueError(f"architecture={architecture!r} is not an open_clip model config (HPS v2 uses "
                         f"{HPS_ARCHITECTURE}); register other configs with open_clip.add_model_config")
    state = read_weights(path)
    state = state.get("state_dict", state)
    state = {key.removeprefix("module."): value for key, value in state.items()}  # saved from DDP
    model = open_clip.create_model(architecture, pretrained=None)
    check_state_fits(model, state, path, architecture)
    model.load_state_dict(state)
    return PreferenceClip(model, open_clip.get_tokenizer(architecture), open_clip.get_model_preprocess_cfg(model))


def check_state_fits(model: nn.Module, state: dict[str, Tensor], path: Path, architecture: str) -> None:
    """One line naming how the file's tensors differ from the architecture's."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    reshaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if missing or unexpected or reshaped:
        first = (missing or unexpected or reshaped)[0]
        raise ValueError(f"preference weights {path} do not fit open_clip {architecture}: {len(missing)} missing, "
                         f"{len(unexpected)} unexpected and {len(reshaped)} reshaped tensors (first: {first}); pass "
                         "the architecture the file was trained with")
