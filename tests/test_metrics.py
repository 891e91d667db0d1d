"""Metrics against their definitions: attack success (README), image distances, SSIM, Fréchet distance,
CLIP score, accuracies, and the attack report built from generic record names."""

from __future__ import annotations

import math

import pytest
import torch

from lit_sdo import metrics


def test_attack_success_counts_only_clean_correct_samples() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    clean = torch.tensor([0, 1, 0, 3])  # sample 2 is already misclassified before the attack
    adv = torch.tensor([1, 1, 1, 0])  # fooled: samples 0, 2, 3; sample 2 is no success of the attack
    result = metrics.attack_success(clean, adv, labels)
    assert result == {"num_samples": 4, "num_clean_correct": 3, "num_success": 2, "success_rate": 2 / 3,
                      "raw_success_rate": 0.75}
    targeted = metrics.attack_success(clean, adv, labels, targets=torch.tensor([1, 2, 1, 0]))
    assert targeted["num_success"] == 2 and targeted["raw_success_rate"] == 0.75  # hits: samples 0, 2, 3
    none_correct = metrics.attack_success(torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))
    assert math.isnan(none_correct["success_rate"])


def test_lp_distances_are_rms_and_max() -> None:
    a = torch.zeros(2, 1, 2, 2)
    b = torch.tensor([[0.0, 0.5, 0.0, 0.5], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    l2, linf = metrics.lp_distances(a, b)
    torch.testing.assert_close(l2, torch.tensor([math.sqrt(0.125), 1.0]))
    torch.testing.assert_close(linf, torch.tensor([0.5, 1.0]))


def test_ssim_is_one_for_identical_images_and_lower_otherwise() -> None:
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(metrics.ssim(images, images), torch.ones(3))
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert (metrics.ssim(noisy, images) < 0.95).all()
    small = torch.rand(2, 3, 8, 8)  # tiny images use a smaller window
    torch.testing.assert_close(metrics.ssim(small, small), torch.ones(2))


def test_frechet_distance_of_identical_features_is_zero_and_of_a_shift_its_square() -> None:
    features = torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)  # same covariance: FD = ‖Δμ‖²
    assert metrics.frechet_distance(features + shift, features) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)
    with pytest.raises(ValueError, match=r"feature arrays \(200, 4\) and \(200, 3\) must be"):
        metrics.frechet_distance(features, features[:, :3])
    with pytest.raises(ValueError, match="N, M >= 2"):
        metrics.frechet_distance(features[:1], features)


def test_clip_score_is_100_times_the_clamped_cosine() -> None:
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]]), dim=-1)
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.6, 0.8]]), dim=-1)
    torch.testing.assert_close(metrics.clip_score(image, text), torch.tensor([100 / math.sqrt(2), 0.0, 100.0]))


def test_accuracy_and_per_class_accuracy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    assert metrics.accuracy(logits, labels) == pytest.approx(2 / 3)
    per_class = metrics.per_class_accuracy(logits, labels, 2)
    assert per_class[0] == pytest.approx(2 / 3) and math.isnan(per_class[1])


def test_attack_report_reads_generic_record_names() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 1, 16, 16, generator=generator)
    records = {"label": torch.tensor([0, 1, 2, 0]), "seed": torch.arange(4), "original": clean,
               "optimized": (clean + 0.05).clamp(0, 1), "pred_original": torch.tensor([0, 1, 0, 0]),
               "pred_optimized": torch.tensor([1, 1, 1, 2]), "target_original": torch.full((4,), -1),
               "features_original": torch.randn(4, 3, generator=generator),
               "features_optimized": torch.randn(4, 3, generator=generator),
               "transfer_pred_optimized": torch.tensor([0, 1, 1, 1]), "delta_linf": torch.tensor([0.1, 0.0, 0.1, 0.05])}
    summary, samples = metrics.attack_report(records, targeted=False, features_from="tiny")
    assert [s["success"] for s in samples] == [True, False, False, True]  # sample 2: clean already wrong
    assert summary["num_success"] == 2 and summary["success_rate"] == pytest.approx(2 / 3)
    assert summary["transfer_rate"] == pytest.approx(0.5)  # of the successes, the transfer model is fooled on 3
    assert summary["success_still_labelled_y_by_transfer"] == pytest.approx(0.5)
    assert summary["delta_linf_max"] == pytest.approx(0.1) and summary["fid_features"] == "penultimate layer of tiny"
    l2, _ = metrics.lp_distances(records["optimized"], clean)
    assert [s["l2"] for s in samples] == pytest.approx(l2.tolist())
    assert [s["transfer_adv_pred"] for s in samples] == [0, 1, 1, 1]


def test_attack_report_of_one_sample_has_no_fid_but_every_other_metric() -> None:
    """One attacked sample (a batch-1 run) has no covariance to fit a FID to: its FID is None, not a crash
    after the whole attack has run."""
    clean = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    records = {"label": torch.tensor([2]), "seed": torch.tensor([7]), "original": clean, "optimized": clean * 0.9,
               "pred_original": torch.tensor([2]), "pred_optimized": torch.tensor([1]),
               "target_original": torch.tensor([-1]), "features_original": torch.randn(1, 5),
               "features_optimized": torch.randn(1, 5), "delta_linf": torch.tensor([0.1])}
    with pytest.warns(UserWarning, match="FID"):
        summary, samples = metrics.attack_report(records, targeted=False, features_from="tiny")
    assert summary["fid_adv_vs_clean"] is None and summary["success_rate"] == 1.0 and samples[0]["success"]
    records |= {k: torch.cat([v, v]) for k, v in records.items()}  # two samples: a FID again
    assert metrics.attack_report(records, targeted=False, features_from="tiny")[0]["fid_adv_vs_clean"] >= 0
