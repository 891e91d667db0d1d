"""Metrics shared by every task: flat functions, images in [0, 1] unless stated.

Zoo quality: classification accuracy (overall and per conditioning label) and a "digits-FID" — the
Fréchet distance between penultimate-layer features of a shipped classifier (the same idea as FID on
MNIST with a LeNet; Inception features mean nothing on 16×16 grey digits). The Fréchet distance itself is
clean-fid's ``fid_from_feats``, so nothing is downloaded. Attacks: success rate as the README defines it,
SSIM, L2/L∞, and LPIPS only when its backbone weights exist locally.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# ----- classification and FID ------------------------------------------------------------------


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of rows whose arg-max is the label."""
    return float((logits.argmax(1) == labels).float().mean())


def per_class_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> list[float]:
    """Accuracy restricted to each label 0..num_classes-1 (NaN for a label that does not occur)."""
    hits = (logits.argmax(1) == labels).float()
    return [float(hits[labels == c].mean()) if (labels == c).any() else float("nan") for c in range(num_classes)]


@torch.no_grad()
def batched_outputs(fn: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """``fn`` over ``images`` in batches without a graph, concatenated on the CPU."""
    return torch.cat([fn(images[i:i + batch_size]).cpu() for i in range(0, len(images), batch_size)])


def host_float64(values: np.ndarray | Tensor) -> np.ndarray:
    """A float64 NumPy copy of ``values``, from whichever device a tensor is on."""
    return values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, np.float64)


def frechet_distance(features_a: np.ndarray | Tensor, features_b: np.ndarray | Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F) (clean-fid)."""
    from cleanfid.fid import fid_from_feats

    a, b = host_float64(features_a), host_float64(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"feature arrays {a.shape} and {b.shape} must be (N, F) and (M, F) with N, M >= 2")
    return float(fid_from_feats(a, b))


def feature_fid(classifier: nn.Module, images_a: Tensor, images_b: Tensor, batch_size: int = 500) -> float:
    """FID with ``classifier.features`` as the feature extractor (digits-FID with the shipped ResNet).

    Args:
        classifier: anything with ``features(images in [0, 1]) -> (B, F)`` (a lit_sdo ``Classifier``).
        images_a, images_b: image sets in [0, 1], (N, C, H, W).
    """
    features = classifier.features  # type: ignore[attr-defined]
    return frechet_distance(batched_outputs(features, images_a, batch_size),
                            batched_outputs(features, images_b, batch_size))


# ----- image distances -------------------------------------------------------------------------------


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample SSIM (B,) of images in [0, 1] (Gaussian window 11, σ 1.5; smaller for tiny images)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    kernel = 11 if min(a.shape[-2:]) >= 16 else 7
    return structural_similarity_index_measure(a.float(), b.float(), data_range=1.0, kernel_size=kernel,
                                               reduction="none")


def lp_distances(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample L2 (root mean square) and L∞ distance (B,) between images in [0, 1]."""
    diff = (a - b).flatten(1).float()
    return diff.pow(2).mean(1).sqrt(), diff.abs().amax(1)


ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"


@cache
def lpips_model() -> nn.Module | None:
    """LPIPS(alex) when torchvision's AlexNet weights are in the local cache, else None (said once).

    The lpips package ships only its linear heads; its backbone comes from torchvision's weight cache.
    LPIPS with a random backbone would be a meaningless number, so none is reported then.
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS
    if not cached.is_file():
        warnings.warn(f"LPIPS not reported: AlexNet weights are not in the local torch cache ({cached}); "
                      "SSIM and L2/L∞ are reported instead", stacklevel=2)
        return None
    import lpips

    return lpips.LPIPS(net="alex", verbose=False).eval()


def lpips_distance(a: Tensor, b: Tensor) -> Tensor | None:
    """Per-sample LPIPS (B,) of images in [0, 1], or None when its backbone weights are missing."""
    model = lpips_model()
    if model is None:
        return None
    to_rgb = (lambda x: x.expand(-1, 3, -1, -1)) if a.shape[1] == 1 else (lambda x: x)
    with torch.no_grad():
        return model.to(a.device)(to_rgb(a) * 2 - 1, to_rgb(b) * 2 - 1).flatten()


# ----- attacks --------------------------------------------------------------------------------------


def reaches_goal(pred: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Bool (B,): a prediction reaches the attack's goal (untargeted: not y; targeted: the target)."""
    return pred == targets if targets is not None else pred != labels


def attack_successes(clean_pred: Tensor, adv_pred: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """An attack's success per sample (B,), as the README defines it: the adversarial image reaches the goal
    (untargeted: not labelled y; targeted: labelled the target) and the clean image is labelled y, so a sample
    the classifier already misreads is no success of the attack, whatever its δ does.

    The one meaning of success: the optimisation reads it as the objective's goal
    (:meth:`~lit_sdo.objectives.ClassifierObjective.reached`) kept by the best-δ tracker for the samples that
    count (:attr:`lit_sdo.optim.BestTracker.success`); reports, the results grid and the library attack read it
    here, from the predictions of the published images.
    """
    return reaches_goal(adv_pred, labels, targets) & (clean_pred == labels)


def attack_success(clean_pred: Tensor, adv_pred: Tensor, labels: Tensor, targets: Tensor | None = None
                   ) -> dict[str, Any]:
    """Success rate as the README defines it.

    success_rate: among samples whose CLEAN generation the classifier labels y, the fraction that are a success
    (:func:`attack_successes`). raw_success_rate: the fraction of all samples whose adversarial generation
    reaches the goal, whatever the clean prediction.
    """
    n_correct = int((clean_pred == labels).sum())
    n_success = int(attack_successes(clean_pred, adv_pred, labels, targets).sum())
    return {"num_samples": len(labels), "num_clean_correct": n_correct, "num_success": n_success,
            "success_rate": n_success / n_correct if n_correct else float("nan"),
            "raw_success_rate": float(reaches_goal(adv_pred, labels, targets).float().mean())}


def fid_if_defined(features_a: Tensor, features_b: Tensor) -> float | None:
    """:func:`frechet_distance`, or None with a warning when a set has fewer than 2 samples (no covariance):
    a small run still reports its other metrics instead of failing after the work is done."""
    if min(len(features_a), len(features_b)) < 2:
        warnings.warn(f"FID not reported: it needs >= 2 samples per set, got {len(features_a)} and "
                      f"{len(features_b)}", stacklevel=2)
        return None
    return frechet_distance(features_a, features_b)


def attack_report(records: Mapping[str, Tensor], targeted: bool, features_from: str
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Aggregate and per-sample attack metrics from every sample's record columns.

    ``records`` are :meth:`lit_sdo.records.SampleRecords.columns`: per sample, the images and the classifier's
    measurements before and after the attack: ``original`` / ``optimized`` images, ``pred_*``, ``features_*``,
    ``target_*`` and, with a second classifier, ``transfer_pred_*``; plus ``label``, ``seed`` and ``delta_linf``.
    """
    labels, clean, adversarial = records["label"], records["original"], records["optimized"]
    clean_pred, adv_pred = records["pred_original"], records["pred_optimized"]
    targets = records["target_original"] if targeted else None
    summary = attack_success(clean_pred, adv_pred, labels, targets)
    success = attack_successes(clean_pred, adv_pred, labels, targets)
    transfer = "transfer_pred_optimized" in records
    if transfer:
        transfer_pred = records["transfer_pred_optimized"]
        transferred = reaches_goal(transfer_pred, labels, targets)
        summary["transfer_rate"] = float(transferred[success].float().mean()) if success.any() else float("nan")
        kept = transfer_pred[success] == labels[success]
        summary["success_still_labelled_y_by_transfer"] = float(kept.float().mean()) if success.any() else float("nan")
    l2, linf = lp_distances(adversarial, clean)
    structural = ssim(adversarial, clean)
    perceptual = lpips_distance(adversarial, clean)
    summary |= {
        "ssim_mean": float(structural.mean()), "l2_mean": float(l2.mean()), "linf_image_mean": float(linf.mean()),
        "delta_linf_max": float(records["delta_linf"].max()),
        "lpips_mean": None if perceptual is None else float(perceptual.mean()),
        "fid_adv_vs_clean": fid_if_defined(records["features_optimized"], records["features_original"]),
        "fid_features": f"penultimate layer of {features_from}",
    }
    per_sample = [
        {"index": i, "label": int(labels[i]), "seed": int(records["seed"][i]),
         "target": int(records["target_original"][i]), "clean_pred": int(clean_pred[i]), "adv_pred": int(adv_pred[i]),
         "success": bool(success[i]), "delta_linf": float(records["delta_linf"][i]), "ssim": float(structural[i]),
         "l2": float(l2[i])}
        | ({"transfer_adv_pred": int(records["transfer_pred_optimized"][i])} if transfer else {})
        for i in range(len(labels))
    ]
    return summary, per_sample


# ----- digit shape measurements (captions of the embedded text–image model, the aesthetic stand-in) ---------


def _ink(images: Tensor, threshold: float = 0.5) -> np.ndarray:
    """Boolean ink masks (B, H, W) of grey images in [0, 1] (white strokes on black, as in the digits)."""
    grey = images.detach().float().mean(1) if images.dim() == 4 else images.detach().float()
    return (grey > threshold).cpu().numpy()


def stroke_thickness(images: Tensor) -> Tensor:
    """Mean stroke width in pixels (B,): twice the mean distance of ink pixels to the background (EDT).

    A measured property, not a judgement: the embedded "aesthetic" stand-in predicts it
    differentiably. 0 for an image without ink.
    """
    from scipy.ndimage import distance_transform_edt

    widths = [2 * float(distance_transform_edt(mask)[mask].mean()) if mask.any() else 0.0 for mask in _ink(images)]
    return torch.tensor(widths)


def stroke_slant(images: Tensor) -> Tensor:
    """Horizontal shear of the ink (B,): x-shift per pixel upwards (> 0 leans right), from second moments."""
    values = []
    for mask in _ink(images):
        ys, xs = np.nonzero(mask)
        if len(ys) < 2:
            values.append(0.0)
            continue
        dy, dx = -(ys - ys.mean()), xs - xs.mean()  # y up
        values.append(float((dx * dy).sum() / max((dy * dy).sum(), 1e-6)))
    return torch.tensor(values)


def ink_width(images: Tensor) -> Tensor:
    """Width of the ink's bounding box as a fraction of the image width (B,) (the digits all fill the height)."""
    masks = _ink(images)
    cols = [np.nonzero(m.any(0))[0] for m in masks]
    return torch.tensor([(c[-1] - c[0] + 1) / m.shape[1] if len(c) else 0.0 for c, m in zip(cols, masks, strict=True)])


# ----- guided generation ----------------------------------------------------------------------------------


def clip_score(image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
    """CLIP score per sample (B,): 100 · max(cos(image, text), 0) (Hessel et al. 2021, w = 1)."""
    return 100 * (image_embeddings * text_embeddings).sum(-1).clamp(min=0)
