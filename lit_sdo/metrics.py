"""Metrics shared by every task: attack success, image distances (SSIM, L2, L∞, LPIPS), FID on custom features.

One function per metric; tasks call these, never their own copies.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

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


# ----- FID ------------------------------------------------------------------------------------------


def frechet_distance(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray) -> float:
    """FID between two feature sets (N, F), via clean-fid's Fréchet distance of the fitted Gaussians."""
    from cleanfid.fid import fid_from_feats

    as_np = [f.detach().double().cpu().numpy() if isinstance(f, Tensor) else np.asarray(f, dtype=np.float64)
             for f in (features_a, features_b)]
    return float(fid_from_feats(*as_np))


# ----- attacks --------------------------------------------------------------------------------------


def attack_success(clean_pred: Tensor, adv_pred: Tensor, labels: Tensor, targets: Tensor | None = None
                   ) -> dict[str, Any]:
    """Success rate as the README defines it.

    success_rate: among samples whose CLEAN generation the classifier labels y, the fraction whose
    adversarial generation it no longer labels y (targeted: labels as the target).
    raw_success_rate: the same fraction over all samples, whatever the clean prediction.
    """
    clean_correct = clean_pred == labels
    fooled = adv_pred == targets if targets is not None else adv_pred != labels
    n_correct = int(clean_correct.sum())
    n_success = int((fooled & clean_correct).sum())
    return {"num_samples": len(labels), "num_clean_correct": n_correct, "num_success": n_success,
            "success_rate": n_success / n_correct if n_correct else float("nan"),
            "raw_success_rate": float(fooled.float().mean())}


def attack_report(records: dict[str, Tensor], classifier: nn.Module, targeted: bool, transfer: bool
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Aggregate and per-sample attack metrics from gathered records (see ``AttackModule.evaluate_batch``)."""
    labels, clean, adversarial = records["label"], records["clean"], records["adversarial"]
    targets = records["target"] if targeted else None
    summary = attack_success(records["clean_pred"], records["adv_pred"], labels, targets)
    fooled = (records["adv_pred"] == targets) if targeted else (records["adv_pred"] != labels)
    if transfer:
        success = fooled & (records["clean_pred"] == labels)
        transferred = records["transfer_adv_pred"] != labels if not targeted else records["transfer_adv_pred"] == targets
        summary["transfer_rate"] = float(transferred[success].float().mean()) if success.any() else float("nan")
    l2, linf = lp_distances(adversarial, clean)
    structural = ssim(adversarial, clean)
    perceptual = lpips_distance(adversarial, clean)
    summary |= {
        "ssim_mean": float(structural.mean()), "l2_mean": float(l2.mean()), "linf_image_mean": float(linf.mean()),
        "delta_linf_max": float(records["delta_linf"].max()),
        "lpips_mean": None if perceptual is None else float(perceptual.mean()),
        "fid_adv_vs_clean": frechet_distance(records["adv_features"], records["clean_features"]),
        "fid_features": f"penultimate layer of {getattr(classifier, 'name', 'the classifier')}",
    }
    per_sample = [
        {"index": i, "label": int(labels[i]), "seed": int(records["seed"][i]), "target": int(records["target"][i]),
         "clean_pred": int(records["clean_pred"][i]), "adv_pred": int(records["adv_pred"][i]),
         "success": bool(fooled[i] and records["clean_pred"][i] == labels[i]),
         "delta_linf": float(records["delta_linf"][i]), "ssim": float(structural[i]), "l2": float(l2[i])}
        | ({"transfer_adv_pred": int(records["transfer_adv_pred"][i])} if transfer else {})
        for i in range(len(labels))
    ]
    return summary, per_sample
