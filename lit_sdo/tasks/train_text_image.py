"""Train the embedded guidance models on the digits' training split (plain loops: each takes seconds).

- ``digits-lit``: the image tower of the LiT-style text–image model, contrastively against the locked
  MiniLM text tower, on captions derived from the data: "a wide thick right-slanted digit seven"
  (each attribute word kept with probability 1/2, so short prompts such as "a thick digit seven" are
  in the training distribution). Thickness, slant and width are measured
  (:mod:`lit_sdo.metrics`) and cut at the training split's terciles.
- ``digits-thickness``: the aesthetic stand-in, a CNN regressing the measured stroke width (0–10 score).

    lit-sdo train-text-image --out data/models
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_sdo import metrics
from lit_sdo.datamodules import DIGIT_NAMES, DigitsDataModule
from lit_sdo.images import to_unit_range
from lit_sdo.models.aesthetic import StrokeThicknessPredictor, export_thickness_predictor
from lit_sdo.models.manifest import write_manifest
from lit_sdo.models.text_image import DigitImageTower, LitTextImageModel, export_text_image, shared_text_tower

ATTRIBUTE_WORDS = {  # low / middle / high tercile of the measurement
    "thickness": ("thin", "regular", "thick"),
    "slant": ("left-slanted", "upright", "right-slanted"),
    "width": ("narrow", "medium-width", "wide"),
}


def measure(images01: Tensor) -> dict[str, Tensor]:
    """Thickness (stroke width), slant and width (of the ink's bounding box) per image."""
    return {"thickness": metrics.stroke_thickness(images01), "slant": metrics.stroke_slant(images01),
            "width": metrics.ink_width(images01)}


def tercile_bins(values: dict[str, Tensor], cuts: dict[str, list[float]]) -> dict[str, Tensor]:
    """Each measurement -> 0/1/2 by the two cut points."""
    return {k: torch.bucketize(v, torch.tensor(cuts[k], dtype=v.dtype)) for k, v in values.items()}


def caption(label: int, bins: dict[str, int], keep: tuple[bool, bool, bool] = (True, True, True)) -> str:
    """'a [width] [thickness] [slant] digit <name>' with the attributes whose ``keep`` flag is set."""
    words = [ATTRIBUTE_WORDS[k][bins[k]] for k, kept in zip(("width", "thickness", "slant"), keep, strict=True) if kept]
    return " ".join(["a", *words, "digit", DIGIT_NAMES[label]])


def all_captions() -> list[str]:
    """Every caption the training can draw (10 digits × 4³ attribute choices incl. 'absent')."""
    out = []
    for label in range(10):
        for width, thick, slant in itertools.product(range(4), repeat=3):
            bins = {"width": max(width - 1, 0), "thickness": max(thick - 1, 0), "slant": max(slant - 1, 0)}
            out.append(caption(label, bins, (width > 0, thick > 0, slant > 0)))
    return sorted(set(out))


def train_lit(images01: Tensor, labels: Tensor, cuts: dict[str, list[float]], epochs: int, seed: int) -> tuple[
        LitTextImageModel, float]:
    """Contrastive training of the image tower (InfoNCE both ways, learned temperature); returns model, seconds."""
    started = time.perf_counter()
    bins = tercile_bins(measure(images01), cuts)
    captions = all_captions()
    index = {c: i for i, c in enumerate(captions)}
    text = torch.cat([shared_text_tower()(captions[i:i + 128]) for i in range(0, len(captions), 128)])  # (T, 384)
    torch.manual_seed(seed)
    tower = DigitImageTower()
    log_scale = torch.nn.Parameter(torch.tensor(2.66))  # CLIP's initial temperature 1/0.07
    optimizer = torch.optim.AdamW([*tower.parameters(), log_scale], lr=2e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    batch = 256
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            keep = torch.rand(len(rows), 3, generator=generator) < 0.5
            ids = [index[caption(int(labels[r]), {k: int(v[r]) for k, v in bins.items()}, tuple(keep[j].tolist()))]
                   for j, r in enumerate(rows.tolist())]
            image_emb = tower(images01[rows])  # (b, 384)
            text_emb = text[ids]  # (b, 384), locked
            logits = log_scale.exp().clamp(max=100) * image_emb @ text_emb.T
            same = torch.tensor(ids)[:, None] == torch.tensor(ids)[None, :]  # duplicates are positives too
            targets = same.float() / same.sum(1, keepdim=True)
            loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return LitTextImageModel(tower.eval()), time.perf_counter() - started


@torch.no_grad()
def evaluate_lit(model: LitTextImageModel, images01: Tensor, labels: Tensor, cuts: dict[str, list[float]]
                 ) -> dict[str, float]:
    """Zero-shot accuracy on held-out digits: the digit ('a digit seven' among ten) and each attribute."""
    image_emb = model.image_embeddings(images01)
    digit_text = model.text_embeddings([f"a digit {n}" for n in DIGIT_NAMES])
    out = {"zero_shot_digit_accuracy": metrics.accuracy(image_emb @ digit_text.T, labels)}
    bins = tercile_bins(measure(images01), cuts)
    for key, words in ATTRIBUTE_WORDS.items():
        # the attribute with the true digit name: "a thick digit seven" vs "a thin digit seven" ...
        prompts = [f"a {w} digit {DIGIT_NAMES[int(y)]}" for y in labels for w in words]
        text = model.text_embeddings(prompts).view(len(labels), len(words), -1)
        scores = (text * image_emb[:, None]).sum(-1)  # (B, 3)
        out[f"zero_shot_{key}_accuracy"] = metrics.accuracy(scores, bins[key])
    return out


def train_thickness(images01: Tensor, epochs: int, seed: int) -> tuple[StrokeThicknessPredictor, float]:
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = StrokeThicknessPredictor(width_min=2.0, width_max=4.5)  # digits: 2.2..4.2 px
    targets = model.score_of_width(metrics.stroke_thickness(images01))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(targets), generator=generator)
        for start in range(0, len(order), 128):
            rows = order[start:start + 128]
            loss = F.mse_loss(model(images01[rows]), targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False), time.perf_counter() - started


def train_guidance_models(out: str = "runs/models", epochs: int = 60, seed: int = 0) -> None:
    """Train digits-lit and digits-thickness on the digits' training split and export them with a MANIFEST.

    Args:
        out: the folder that receives ``digits-lit/`` and ``digits-thickness/``; ``data/models`` replaces the
            shipped ones (the default writes under runs/ and leaves them alone).
        epochs: training epochs of each model.
        seed: seed of the initialisation and of the batch order.
    """
    command = f"lit-sdo train-text-image --out {out} --epochs {epochs} --seed {seed}"
    torch.set_num_threads(1)
    data = DigitsDataModule(image_size=16, seed=0)
    train_images, train_labels = data.split_tensors("train")
    test_images, test_labels = data.split_tensors("test")
    train01, test01 = to_unit_range(train_images), to_unit_range(test_images)
    values = measure(train01)
    cuts = {k: [float(v.quantile(1 / 3)), float(v.quantile(2 / 3))] for k, v in values.items()}

    lit, seconds = train_lit(train01, train_labels, cuts, epochs, seed)
    results = evaluate_lit(lit, test01, test_labels, cuts)
    print(json.dumps({"digits-lit": results, "seconds": round(seconds, 1)}))
    folder = export_text_image(lit, Path(out) / "digits-lit", {"attribute_cuts": cuts})
    write_manifest(folder, {"training_command": command, "test_split": results, "train_seconds": round(seconds, 1),
                            "data": "sklearn digits, 16×16, DigitsDataModule(seed=0) train split"})

    thickness, seconds = train_thickness(train01, epochs, seed)
    with torch.no_grad():
        predicted = thickness(test01)
    truth = thickness.score_of_width(metrics.stroke_thickness(test01))
    mae = float((predicted - truth).abs().mean())
    corr = float(torch.corrcoef(torch.stack([predicted, truth]))[0, 1])
    print(json.dumps({"digits-thickness": {"test_mae_score": mae, "test_pearson": corr}, "seconds": round(seconds, 1)}))
    folder = export_thickness_predictor(thickness, Path(out) / "digits-thickness", 16,
                                        {"what": "stroke-width regressor (an aesthetic stand-in, not an aesthetic "
                                                 "model): score = 10·(width − 2 px)/(4.5 px − 2 px)"})
    write_manifest(folder, {"training_command": command, "test_split": {"mae_score": mae, "pearson": corr},
                            "train_seconds": round(seconds, 1)})

