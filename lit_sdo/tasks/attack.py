"""Classifier-bypass attack (paper Sec. 5.1.4, Table 5): a small δ on x_T, ‖δ‖∞ ≤ τ, such that the
generated image still shows class y but the classifier no longer predicts y.

``AttackModule`` is the LightningCLI job (``lit-sdo fit --config configs/attack/digits.yaml``);
``SDOAttack`` is the same attack as a plain callable for library use, torchattacks style.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lit_sdo import metrics
from lit_sdo.images import image_grid, to_unit_range
from lit_sdo.models import Classifier, DiffusionModel, build_sampler, load_classifier
from lit_sdo.objectives import ClassifierObjective
from lit_sdo.optim import BestTracker, OptimizerName, PerSampleOptimizer, project_linf
from lit_sdo.sampling import GradientPolicy, noise_for_seeds, sample
from lit_sdo.tasks.latent import LatentOptimizationModule


def check_compatible(generator: DiffusionModel, classifier: Classifier, resize: bool = False) -> None:
    """One-line error when the classifier's input size differs from the generator's images.

    Classifiers resize their input themselves, but a silent 16 -> 224 resize is rarely what a user
    meant: a mismatch must be asked for (``resize=True``, e.g. DiT-256 images into a 224 ResNet50).
    """
    if classifier.input_size != generator.image_size and not resize:
        raise ValueError(
            f"classifier {classifier.name} takes {classifier.input_size}×{classifier.input_size} images but generator "
            f"{generator.name} makes {generator.image_size}×{generator.image_size}; pick a matching classifier or set "
            "resize_for_classifier: true")


class AttackModule(LatentOptimizationModule):
    """δ per sample on x_T, SDO gradient at the first step, L∞ projection after each step.

    Args (beyond :class:`LatentOptimizationModule`'s):
        classifier: the attacked classifier (``embedded:digits-resnet``, ``timm/<id>``, ``torchvision:<name>``).
        transfer_classifier: a second classifier to measure transfer (None to skip).
        loss: ``margin`` (default) or ``ce``.
        targeted: attack towards a target class instead of away from the label.
        target: the target class (targeted only; None draws one per sample from its seed).
        kappa: margin confidence κ.
        grid_samples: samples shown in the clean | adversarial | difference grid.
        resize_for_classifier: allow generated images of another size than the classifier's input.
    """

    def __init__(self, generator: str = "embedded:digits-ddpm", classifier: str = "embedded:digits-resnet",
                 transfer_classifier: str | None = "embedded:digits-convnext", loss: Literal["margin", "ce"] = "margin",
                 targeted: bool = False, target: int | None = None, kappa: float = 0.0, scheduler: str = "ddim",
                 num_steps: int = 30, guidance_scale: float = 1.0, policy: str = "sdo", k: int | Literal["random"] = 0,
                 last_k: int = 1, eps: float = 0.1, optimizer: OptimizerName = "sgd", lr: float = 0.1,
                 output_dir: str | None = None, grid_samples: int = 8, resize_for_classifier: bool = False) -> None:
        super().__init__(generator=generator, scheduler=scheduler, num_steps=num_steps, guidance_scale=guidance_scale,
                         policy=policy, k=k, last_k=last_k, eps=eps, optimizer=optimizer, lr=lr, output_dir=output_dir)
        self.save_hyperparameters()
        self.classifier = load_classifier(classifier).requires_grad_(False)
        check_compatible(self.generator, self.classifier, resize_for_classifier)
        self.transfer = None
        if transfer_classifier is not None:
            self.transfer = load_classifier(transfer_classifier).requires_grad_(False)
            check_compatible(self.generator, self.transfer, resize_for_classifier)
        self.objective = ClassifierObjective(loss=loss, targeted=targeted, kappa=kappa)

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.denoiser, self.classifier, self.transfer) if m is not None]

    def check_data(self, datamodule: Any) -> None:
        labels = [int(label) for label in getattr(datamodule.dataset, "labels", [])]
        n = self.generator.num_classes
        if n is not None and labels and not 0 <= min(labels) <= max(labels) < n:
            raise ValueError(f"class labels {min(labels)}..{max(labels)} are out of range for generator "
                             f"{self.generator.name} with {n} classes (0..{n - 1})")
        if self.hparams.target is not None and not 0 <= self.hparams.target < self.classifier.num_classes:
            raise ValueError(f"target={self.hparams.target} is out of range for a {self.classifier.num_classes}-class "
                             "classifier")

    def targets(self, batch: dict[str, Tensor]) -> Tensor | None:
        if not self.hparams.targeted:
            return None
        if self.hparams.target is not None:
            return torch.full_like(batch["label"], self.hparams.target)
        return ClassifierObjective.draw_targets(batch["label"], self.classifier.num_classes, batch["seed"])

    def loss_and_success(self, images: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self.classifier(images)
        targets = self.targets(batch)
        return self.objective(logits, batch["label"], targets), self.objective.success(logits, batch["label"], targets)

    # ----- evaluation and results -----------------------------------------------------------------
    integer_record_keys = ("label", "seed", "target", "clean_pred", "adv_pred", "transfer_clean_pred",
                           "transfer_adv_pred")

    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, Tensor], offer_current: bool) -> None:
        """Clean and adversarial (best δ) images of a batch, with everything the metrics need."""
        x_start, cond, best = self.final_delta(batch, offer_current)
        rows = batch["index"]
        clean = self.generate(x_start, cond, "none")
        adversarial = self.generate(x_start + best, cond, "none")
        targets = self.targets(batch)
        record = {
            "index": rows, "label": batch["label"], "seed": batch["seed"],
            "target": targets if targets is not None else torch.full_like(rows, -1),
            "clean_pred": self.classifier(clean).argmax(1), "adv_pred": self.classifier(adversarial).argmax(1),
            "delta_linf": best.flatten(1).abs().amax(1), "clean": clean, "adversarial": adversarial,
            "clean_features": self.classifier.features(clean), "adv_features": self.classifier.features(adversarial),
        }
        if self.transfer is not None:
            record["transfer_clean_pred"] = self.transfer(clean).argmax(1)
            record["transfer_adv_pred"] = self.transfer(adversarial).argmax(1)
        self._records.append(record)

    def write_results(self) -> None:
        records = self.gather_records()
        if not self.trainer.is_global_zero:
            return
        summary, per_sample = metrics.attack_report(
            records, classifier=self.classifier, targeted=self.hparams.targeted,
            transfer=self.transfer is not None)
        out_dir = self.publish({"config": dict(self.hparams), "aggregate": summary, "samples": per_sample},
                               {"delta": self.tracker.best, "succeeded": self.tracker.succeeded},
                               {"generator": self.hparams.generator, "eps": str(self.hparams.eps)},
                               self.comparison_grid(records), "attack/clean|adversarial|difference×5")
        print(f"[lit_sdo] attack success rate {summary['success_rate']:.2%} "
              f"({summary['num_success']}/{summary['num_clean_correct']} clean-correct samples); "
              f"results in {out_dir / 'results.json'}; TensorBoard: tensorboard --logdir {out_dir.parent}")

    def comparison_grid(self, records: dict[str, Tensor]) -> Tensor:
        """Rows of clean | adversarial | amplified (×5) difference, for the first ``grid_samples`` samples."""
        n = self.hparams.grid_samples
        clean, adversarial = records["clean"][:n], records["adversarial"][:n]
        difference = ((adversarial - clean) * 5 + 0.5).clamp(0, 1)
        triples = torch.stack([clean, adversarial, difference], dim=1).flatten(0, 1)  # (3n, C, H, W)
        return image_grid(triples, nrow=3)


class SDOAttack:
    """The attack as a plain callable: ``SDOAttack(generator, classifier, eps=0.1)(labels, seeds)``.

    Returns adversarial images in [0, 1] (the best δ per sample: the first that fools the classifier,
    else the lowest loss). Names follow torchattacks (eps, steps, lr/alpha, targeted).
    """

    def __init__(self, generator: DiffusionModel, classifier: Classifier, eps: float = 0.1, steps: int = 30,
                 lr: float = 0.1, num_sampling_steps: int = 30, scheduler: str = "ddim",
                 policy: GradientPolicy | str = "sdo", optimizer: OptimizerName = "sgd",
                 loss: Literal["margin", "ce"] = "margin", targeted: bool = False, resize: bool = False) -> None:
        if eps <= 0:
            raise ValueError(f"eps={eps} must be > 0")
        check_compatible(generator, classifier, resize)
        self.generator, self.classifier = generator, classifier.eval()
        self.eps, self.steps, self.lr, self.optimizer, self.policy = eps, steps, lr, optimizer, policy
        self.denoiser, self.scheduler = build_sampler(generator, scheduler, num_sampling_steps)
        self.objective = ClassifierObjective(loss=loss, targeted=targeted)

    def generate(self, x: Tensor, labels: Tensor, policy: GradientPolicy | str) -> Tensor:
        out = sample(self.denoiser, self.scheduler, x, labels, policy=policy)
        return to_unit_range(self.denoiser.decode(out.sample))

    def __call__(self, labels: Tensor, seeds: Tensor, targets: Tensor | None = None) -> Tensor:
        device = next(self.denoiser.parameters()).device
        labels = labels.to(device)
        x_t = noise_for_seeds(seeds.tolist(), self.denoiser.sample_shape, device=device)
        rows = torch.arange(len(labels), device=device)
        delta = torch.zeros_like(x_t)
        optim = PerSampleOptimizer(tuple(delta.shape), self.optimizer, self.lr).to(device)
        tracker = BestTracker(tuple(delta.shape)).to(device)
        for step in range(self.steps + 1):  # the last pass only scores the final δ
            leaf = delta.clone().requires_grad_(True)
            logits = self.classifier(self.generate(x_t + leaf, labels, self.policy))
            loss = self.objective(logits, labels, targets)
            tracker.update(rows, delta, loss.detach(), self.objective.success(logits, labels, targets))
            if step == self.steps or tracker.succeeded.all():
                break
            (grad,) = torch.autograd.grad(loss.sum(), leaf)
            optim.step(delta, grad, rows)
            delta = project_linf(delta, self.eps)
        with torch.no_grad():
            return self.generate(x_t + tracker.best, labels, "none")
