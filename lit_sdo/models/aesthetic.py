"""Aesthetic predictors by name: LAION's MLP on CLIP embeddings, or the embedded stroke-thickness stand-in.

``embedded:digits-thickness`` is NOT an aesthetic model: it is a small CNN that predicts a measured
property of a digit — its stroke width (:func:`lit_sdo.metrics.stroke_thickness`) on a 0–10 scale —
so that aesthetic guidance (|a(x₀) − 10|, paper Table 4) has a differentiable score to push on the
digits and a ground truth to check against. A LAION weights file with a CLIP gives the real thing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from lit_sdo.io import read_tensors, write_json, write_tensors
from lit_sdo.models.hub import EMBEDDED_PREFIX, resolve_folder

KIND = "lit_sdo_thickness_predictor"
LAION_WEIGHTS = "sac+logos+ava1-l14-linearMSE.pth"
LAION_SOURCE = "https://github.com/christophschuhmann/improved-aesthetic-predictor"


class AestheticMLP(nn.Module):
    """LAION's improved aesthetic predictor head: an MLP on unit-norm CLIP image embeddings -> score (~1..10).

    The layer layout (``layers.0`` ... ``layers.7``) matches the published weights file, so
    ``load_state_dict`` reads it directly; the weights are the user's (nothing ships here).
    """

    def __init__(self, embedding_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embedding_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.layers(embeddings).squeeze(-1)  # (B,)


def load_aesthetic_mlp(path: str | Path) -> AestheticMLP:
    """The LAION MLP from its weights file (``.pth`` state dict or ``.safetensors``), frozen; the embedding
    width (768 for ViT-L/14) is read from the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic predictor weights {str(path)!r} not found: download {LAION_WEIGHTS} from "
                                f"{LAION_SOURCE} on a machine with internet access and pass its path")
    if path.suffix == ".safetensors":
        state = read_tensors(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if "layers.0.weight" not in state:
        raise ValueError(f"{path} is not a LAION aesthetic MLP state dict (no layers.0.weight)")
    model = AestheticMLP(state["layers.0.weight"].shape[1])
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)




class StrokeThicknessPredictor(nn.Module):
    """[0, 1] digits (B, 1, S, S) -> stroke-width score (B,): 0 at ``width_min`` pixels, 10 at ``width_max``."""

    def __init__(self, width_min: float = 1.0, width_max: float = 4.0, channels: int = 16) -> None:
        super().__init__()
        self.width_min, self.width_max = width_min, width_max
        self.network = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.GELU(), nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.GELU(), nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(channels, 1))

    def score_of_width(self, widths: Tensor) -> Tensor:
        """Measured widths in pixels -> the 0–10 score the network is trained to predict."""
        return 10 * (widths - self.width_min) / (self.width_max - self.width_min)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 3:
            images = images.mean(1, keepdim=True)
        return self.network(images * 2 - 1).squeeze(-1)


def export_thickness_predictor(model: StrokeThicknessPredictor, folder: str | Path, image_size: int,
                               extra: dict | None = None) -> Path:
    folder = Path(folder)
    write_tensors(folder / "model.safetensors", model.state_dict())
    write_json(folder / "config.json", {"kind": KIND, "width_min": model.width_min, "width_max": model.width_max,
                                        "channels": model.network[0].out_channels, "image_size": image_size}
               | (extra or {}))
    return folder


def load_aesthetic(name: str, clip: str | None = None, *, device: str | torch.device = "cpu"
                   ) -> Callable[[Tensor], Tensor]:
    """A score function ``images in [0, 1] -> (B,)``.

    Args:
        name: ``embedded:digits-thickness`` (the stand-in), a folder holding its config, or the path of
            LAION's ``sac+logos+ava1-l14-linearMSE.pth`` (then ``clip`` is required).
        clip: the CLIP whose image embeddings the LAION MLP reads (ViT-L/14 for the published weights).
    """
    path = Path(name).expanduser()
    if name.startswith(EMBEDDED_PREFIX) or path.is_dir():
        folder = resolve_folder(name, "aesthetic predictor")
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        if config.get("kind") != KIND:
            raise ValueError(f"{folder} is not a lit_sdo stroke-thickness predictor folder; pass it or a LAION "
                             "aesthetic .pth file with clip=<CLIP id or folder>")
        model = StrokeThicknessPredictor(config["width_min"], config["width_max"], config["channels"])
        model.load_state_dict(read_tensors(folder / "model.safetensors"))
        return model.to(device).eval().requires_grad_(False)
    from lit_sdo.models.clip import load_clip

    mlp = load_aesthetic_mlp(path)  # one-line FileNotFoundError when the file is missing
    if clip is None:
        raise ValueError("a LAION aesthetic MLP reads CLIP image embeddings: pass clip=<CLIP id or folder> "
                         "(openai/clip-vit-large-patch14 for the published weights)")
    clip_model = load_clip(clip, device=device)
    mlp = mlp.to(device)
    return lambda images: mlp(clip_model.image_embeddings(images))
