"""Classifiers with their conventions: callers pass images in [0, 1] and never think about mean/std.

Sources: ``embedded:<name>`` (lit_sdo's digit classifiers), ``timm/<id>`` or a timm folder
(``config.json`` with ``architecture`` + weights, as timm's ``save_for_hf`` writes), and
``torchvision:<name>`` (weights file in torch hub's cache). Each becomes a :class:`Classifier`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_sdo.io import read_tensors
from lit_sdo.models.hub import EMBEDDED_PREFIX, resolve_folder
from lit_sdo.models.networks import build_network

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_PREFIX = "torchvision:"
_LUMA = (0.299, 0.587, 0.114)  # RGB -> grey for 1-channel networks


class Classifier(nn.Module):
    """A frozen network plus its input conventions.

    ``forward`` and ``features`` take images in [0, 1], (B, C, H, W) with C = 1 or 3 and any size; they
    convert channels, resize (bilinear, antialiased) to ``input_size`` and normalise with ``mean``/``std``,
    all differentiably (attacks backpropagate through them).
    """

    def __init__(self, network: nn.Module, name: str, num_classes: int, input_size: int, channels: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.name, self.num_classes, self.input_size, self.channels = name, num_classes, input_size, channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def prepare(self, images: Tensor) -> Tensor:
        """[0, 1] images of any size/channels -> the network's normalised input (B, channels, S, S)."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images have shape {tuple(images.shape)}; expected (B, 1 or 3, H, W) in [0, 1]")
        if images.shape[1] != self.channels:
            if self.channels == 3:
                images = images.expand(-1, 3, -1, -1)
            else:
                luma = images.new_tensor(_LUMA).view(1, 3, 1, 1)
                images = (images * luma).sum(1, keepdim=True)
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> logits (B, num_classes)."""
        return self.network(self.prepare(images))

    def features(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> penultimate features (B, F) (digits-FID, transfer studies)."""
        x = self.prepare(images)
        if hasattr(self.network, "forward_head") and hasattr(self.network, "forward_features"):  # timm
            return self.network.forward_head(self.network.forward_features(x), pre_logits=True)
        return _input_of_last_linear(self.network, x)


def _input_of_last_linear(network: nn.Module, x: Tensor) -> Tensor:
    """Features of a network without timm's API: the input of its last ``nn.Linear`` (torchvision)."""
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(network).__name__} has no nn.Linear head to take features from")
    captured: list[Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    try:
        network(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1)


def load_classifier(name: str, *, device: str | torch.device = "cpu") -> Classifier:
    """A ready :class:`Classifier` (eval mode, frozen) from ``embedded:<name>``, ``timm/<id>``, a timm
    folder, or ``torchvision:<name>``."""
    if name.startswith(TORCHVISION_PREFIX):
        classifier = _load_torchvision(name)
    else:
        folder = resolve_folder(name, "classifier")
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"classifier folder {folder} has no config.json; pass a lit_sdo or timm "
                                    "classifier folder")
        config = json.loads(config_path.read_text())
        if config.get("kind") == "lit_sdo_classifier":
            classifier = _load_embedded(name, folder, config)
        elif "architecture" in config:
            classifier = _load_timm(name, folder)
        else:
            raise ValueError(f"classifier folder {folder}: config.json is neither a lit_sdo nor a timm config")
    return classifier.to(device)


def _load_embedded(name: str, folder: Path, config: dict) -> Classifier:
    network = build_network(config["architecture"], num_classes=config["num_classes"], **config["network"])
    network.load_state_dict(read_tensors(folder / "model.safetensors"))
    short = name[len(EMBEDDED_PREFIX):] if name.startswith(EMBEDDED_PREFIX) else name
    return Classifier(network, short, config["num_classes"], config["input_size"], config["channels"],
                      config["mean"], config["std"])


def _load_timm(name: str, folder: Path) -> Classifier:
    import timm

    network = timm.create_model(f"local-dir:{folder}", pretrained=True)
    cfg = network.pretrained_cfg
    input_size = cfg.get("input_size", (3, 224, 224))
    return Classifier(network, name, network.num_classes, int(input_size[-1]), int(input_size[0]),
                      cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))


def _load_torchvision(name: str) -> Classifier:
    import torchvision

    short = name[len(TORCHVISION_PREFIX):]
    try:
        weights = torchvision.models.get_model_weights(short).DEFAULT
    except (ValueError, KeyError):
        raise ValueError(f"{name!r} is not a torchvision classification model name (e.g. torchvision:resnet50)") \
            from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise FileNotFoundError(f"classifier {name!r} is not available locally: its weights {path.name} are not in "
                                f"{path.parent}; download {weights.url} on a machine with internet and copy it there")
    network = torchvision.models.get_model(short, weights=None, num_classes=len(weights.meta["categories"]))
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    transform = weights.transforms()
    return Classifier(network, name, len(weights.meta["categories"]), int(transform.crop_size[0]), 3,
                      transform.mean, transform.std)
