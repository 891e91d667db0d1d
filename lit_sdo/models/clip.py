"""CLIP by transformers id or folder (local cache only), with its image conventions recorded."""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_sdo.models.hub import resolve_folder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's defaults, used when no preprocessor config
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipModel(nn.Module):
    """A frozen ``transformers.CLIPModel`` with its tokenizer (None if the folder has none) and image conventions.

    An ``nn.Module`` with the CLIP network registered, so Lightning moves it with the task that holds it.
    """

    def __init__(self, name: str, model: nn.Module, tokenizer: Any, image_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        super().__init__()
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)

    def prepare_images(self, images: Tensor) -> Tensor:
        """Images in [0, 1] (B, 3, H, W) -> CLIP's normalised input, differentiably."""
        images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                               align_corners=False, antialias=True)
        mean = images.new_tensor(self.mean).view(1, -1, 1, 1)
        std = images.new_tensor(self.std).view(1, -1, 1, 1)
        return (images - mean) / std

    def image_embeddings(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> unit-norm image embeddings (B, D)."""
        out = self.model.get_image_features(pixel_values=self.prepare_images(images))
        out = getattr(out, "pooler_output", out)
        return F.normalize(out, dim=-1)

    def block_features(self, images: Tensor, layer: int) -> Tensor:
        """The vision encoder's hidden state after layer ``layer`` (paper: 3rd), tokens as positions (B, D, L)."""
        hidden = self.model.vision_model(pixel_values=self.prepare_images(images), output_hidden_states=True)
        states = hidden.hidden_states
        if not 1 <= layer < len(states):
            raise ValueError(f"layer={layer} is outside 1..{len(states) - 1} for CLIP {self.name!r}")
        return states[layer].transpose(1, 2)

    def text_embeddings(self, prompts: list[str]) -> Tensor:
        """Prompts -> unit-norm text embeddings (B, D)."""
        if self.tokenizer is None:
            raise ValueError(f"CLIP {self.name!r} was loaded without a tokenizer; pass a folder that has one")
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        out = self.model.get_text_features(input_ids=tokens.input_ids.to(device),
                                           attention_mask=tokens.attention_mask.to(device))
        out = getattr(out, "pooler_output", out)
        return F.normalize(out, dim=-1)


def load_clip(name: str, *, device: str | torch.device = "cpu") -> ClipModel:
    """A frozen CLIP from a transformers id (local cache only) or folder."""
    from transformers import AutoTokenizer, CLIPModel

    folder = resolve_folder(name, "CLIP model")
    model = CLIPModel.from_pretrained(folder).to(device).eval().requires_grad_(False)
    # A weights-only folder (no tokenizer files) still gives the image side.
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(folder) if has_tokenizer else None
    processor_path = folder / "preprocessor_config.json"
    processor = json.loads(processor_path.read_text()) if processor_path.is_file() else {}
    crop = processor.get("crop_size", model.config.vision_config.image_size)
    size = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
    return ClipModel(name, model, tokenizer, int(size), tuple(processor.get("image_mean", CLIP_MEAN)),
                     tuple(processor.get("image_std", CLIP_STD)))
