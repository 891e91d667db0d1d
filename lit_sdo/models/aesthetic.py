"""Aesthetic predictors by name: LAION's MLP on CLIP embeddings, or the embedded stroke-thickness stand-in.

``embedded:digits-thickness`` is NOT an aesthetic model: it is a small CNN that predicts a measured
property of a digit — its stroke width (:func:`lit_sdo.metrics.stroke_thickness`) on a 0–10 scale —
so that aesthetic guidance (|a(x₀) − 10|, paper Table 4) has a differentiable score to push on the
digits and a ground truth to check against. A LAION weights file with a CLIP gives the real thing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_sdo.io import read_tensors, read_weights, write_json, write_tensors
from lit_sdo.models.hub import EMBEDDED_PREFIX, resolve_folder

KIND = "lit_sdo_thickness_predictor"
LAION_WEIGHTS = "sac+logos+ava1-l14-linearMSE.pth"
LAION_SOURCE = "https://github.com/christophschuhmann/improved-aesthetic-predictor"


LAION_HIDDEN: tuple[int, ...] = (1024, 128, 64, 16)  # the LAION aesthetic predictor v2 MLP on CLIP ViT-L/14


class AestheticMLP(nn.Module):
    """LAION's improved aesthetic predictor head: an MLP on unit-norm image embeddings -> score (~1..10).

    The layer layout (Linear, Dropout, ..., Linear, Linear: ``layers.0`` ... ``layers.7`` for LAION's sizes)
    matches the published weights file, so its state dict loads directly; the weights are the user's.
    Embeddings are L2-normalised first, as LAION trained it. Reward models of the same shape with other
    hidden sizes use the same class.
    """

    def __init__(self, embedding_dim: int = 768, hidden: Sequence[int] = LAION_HIDDEN) -> None:
        super().__init__()
        sizes = [embedding_dim, *hidden, 1]
        modules: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            modules.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 3:
                modules.append(nn.Dropout(0.1))  # index keeper: LAION's file has dropouts between these
        self.layers = nn.Sequential(*modules)

    def forward(self, embeddings: Tensor) -> Tensor:
        return self.layers(F.normalize(embeddings, dim=-1)).squeeze(-1)  # (B,)


def load_aesthetic_mlp(path: str | Path, embedding_dim: int | None = None,
                       hidden: Sequence[int] = LAION_HIDDEN) -> AestheticMLP:
    """An :class:`AestheticMLP` from a weights file (``.pth``/``.pt`` state dict or ``.safetensors``), frozen.

    ``embedding_dim`` defaults to the file's (768 for ViT-L/14). A missing file or one whose shapes do
    not fit is a one-line error.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"MLP weights {str(path)!r} are not available locally: download {LAION_WEIGHTS} "
                                f"from {LAION_SOURCE} (or your reward MLP) on a machine with internet access and "
                                "pass its path")
    state = {key.removeprefix("layers."): value for key, value in read_weights(path).items()}
    if embedding_dim is None:
        if "0.weight" not in state:
            raise ValueError(f"{path} is not an MLP state dict (no layers.0.weight)")
        embedding_dim = state["0.weight"].shape[1]
    model = AestheticMLP(embedding_dim, hidden)
    expected = {key: tuple(value.shape) for key, value in model.layers.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    if found != expected:
        raise ValueError(f"MLP weights {path} have shapes {found}, but this MLP expects {expected}: set "
                         "embed_dim/hidden to match the file")
    model.layers.load_state_dict(state)
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

    def measure(self, images: Tensor) -> dict[str, Tensor]:
        """The ground truth this stand-in predicts: the measured stroke width of each image (B,)."""
        from lit_sdo.metrics import stroke_thickness

        return {"measured_stroke_width": stroke_thickness(images).to(images.device)}


class ClipAestheticScore(nn.Module):
    """LAION's aesthetic MLP on a CLIP's image embeddings: images in [0, 1] -> score (B,)."""

    def __init__(self, clip: nn.Module, mlp: AestheticMLP) -> None:
        super().__init__()
        self.clip, self.mlp = clip, mlp

    def forward(self, images: Tensor) -> Tensor:
        return self.mlp(self.clip.image_embeddings(images))


class ClipImageEmbedder(nn.Module):
    """A CLIP's unit-norm image embeddings: images in [0, 1] -> (B, D)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip.requires_grad_(False)  # a registered module: it moves with its owner

    def forward(self, images: Tensor) -> Tensor:
        return self.clip.image_embeddings(images)  # type: ignore[operator]


class ClassifierFeatures(nn.Module):
    """A classifier's penultimate features: images in [0, 1] -> (B, F)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images)  # type: ignore[operator]


def load_image_embedder(spec: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """``clip:<name>`` (CLIP image embeddings) or ``classifier:<name>`` (penultimate classifier features) -> a
    frozen module images in [0, 1] -> (B, D), the input of an embedding MLP."""
    kind, _, name = spec.partition(":")
    if kind == "clip":
        from lit_sdo.models.clip import load_clip

        return ClipImageEmbedder(load_clip(name, device=device))
    if kind == "classifier":
        from lit_sdo.models.classifiers import load_classifier

        return ClassifierFeatures(load_classifier(name, device=device))
    raise ValueError(f"embedder={spec!r} is unknown; use clip:<name> or classifier:<name>")


def export_thickness_predictor(model: StrokeThicknessPredictor, folder: str | Path, image_size: int,
                               extra: dict | None = None) -> Path:
    folder = Path(folder)
    write_tensors(folder / "model.safetensors", model.state_dict())
    write_json(folder / "config.json", {"kind": KIND, "width_min": model.width_min, "width_max": model.width_max,
                                        "channels": model.network[0].out_channels, "image_size": image_size}
               | (extra or {}))
    return folder


def load_aesthetic(name: str, clip: str | None = None, *, device: str | torch.device = "cpu") -> nn.Module:
    """A frozen score module ``images in [0, 1] -> (B,)``.

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
    return ClipAestheticScore(load_clip(clip, device=device), mlp).to(device).eval().requires_grad_(False)
