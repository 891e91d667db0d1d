"""Classifier-bypass attack (paper Sec. 5.1.4, Table 5) as a plain callable, torchattacks style.

The CLI job is :class:`~lit_sdo.tasks.latent.LatentOptimizationModule` with a
:class:`~lit_sdo.objectives.ClassifierObjective` and an L∞ bound (``configs/attack/digits.yaml``);
``SDOAttack`` runs the same :class:`~lit_sdo.tasks.engine.LatentEngine` for library use:

    attack = SDOAttack(load_diffusion("embedded:digits-ddpm"), "embedded:digits-resnet", eps=0.1)
    result = attack([3, 7], [0, 1])     # labels, seeds (lists or tensors)
    result.images, result.delta, result.success, result.clean_pred
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lit_sdo.metrics import attack_successes
from lit_sdo.models import Classifier, DiffusionModel
from lit_sdo.models.sampler import Sampler, SamplerSpec
from lit_sdo.objectives import ClassifierObjective
from lit_sdo.optim import OptimizerName
from lit_sdo.sampling import GradientPolicy
from lit_sdo.tasks.engine import LatentEngine


@dataclass
class AttackResult:
    """What one attack call found, per sample.

    Attributes:
        images: adversarial images in [0, 1] (best δ: the first that fools the classifier, else the lowest loss).
        clean: the unperturbed generations in [0, 1].
        delta: the best δ on x_T (B, C, H, W).
        success: the adversarial image reaches the goal (fooled; targeted: labelled as the target) and the clean
            image was labelled correctly (:func:`lit_sdo.metrics.attack_successes`).
        clean_pred: the classifier's prediction on the clean image.
        adv_pred: its prediction on the adversarial image.
    """

    images: Tensor
    clean: Tensor
    delta: Tensor
    success: Tensor
    clean_pred: Tensor
    adv_pred: Tensor


class SDOAttack:
    """The attack as a plain callable: ``SDOAttack(generator, classifier, eps=0.1)(labels, seeds)``.

    Names follow torchattacks (eps, steps, lr, targeted). ``classifier`` is a built
    :class:`~lit_sdo.models.Classifier` or a name for :func:`lit_sdo.models.load_classifier`; a targeted attack
    takes ``targets`` per call (or draws one per sample from its seed when none are given). ``policy`` is part
    of the sampler it builds, so a policy the run cannot take is refused here, before any step.
    ``stop_at_success`` steps only the samples not fooled yet (see :mod:`lit_sdo.tasks.engine`).
    """

    def __init__(self, generator: DiffusionModel, classifier: Classifier | str, eps: float = 0.1, steps: int = 30,
                 lr: float = 0.1, num_sampling_steps: int = 30, scheduler: str = "ddim",
                 policy: GradientPolicy | str = "sdo", optimizer: OptimizerName = "sgd",
                 loss: Literal["margin", "ce"] = "margin", targeted: bool = False, resize: bool = False,
                 stop_at_success: bool = True) -> None:
        if eps <= 0:
            raise ValueError(f"eps={eps} must be > 0")
        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1")
        self.eps, self.steps, self.lr, self.optimizer = eps, steps, lr, optimizer
        self.stop_at_success = stop_at_success
        spec = SamplerSpec(model=generator.name, scheduler=scheduler, num_steps=num_sampling_steps, policy=policy,
                           guidance_scale=getattr(generator.denoiser, "guidance_scale", 1.0))  # as it was loaded
        self.sampler = Sampler(spec, model=generator)  # refuses a policy this run cannot take, before any work
        self.objective = ClassifierObjective(classifier, loss=loss, targeted=targeted, resize_for_classifier=resize)
        self.objective.prepare(generator.image_size, generator.channels, generator.num_classes)
        self.objective.to(self.sampler.device).eval()

    def _batch(self, labels: Sequence[int] | Tensor, seeds: Sequence[int] | Tensor,
               targets: Sequence[int] | Tensor | None) -> dict[str, Tensor]:
        device = self.sampler.device
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).to(device)
        seeds = torch.as_tensor(seeds, dtype=torch.long).reshape(-1).to(device)
        if len(labels) != len(seeds):
            raise ValueError(f"got {len(labels)} labels and {len(seeds)} seeds; pass one seed per label")
        n = self.sampler.model.num_classes
        if n is not None and len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < n:
            raise ValueError(f"labels must be in 0..{n - 1} for generator {self.sampler.model.name}, got "
                             f"{labels.tolist()}")
        batch = {"index": torch.arange(len(labels), device=device), "label": labels, "seed": seeds}
        if targets is not None:
            if not self.objective.targeted:
                raise ValueError("targets were given to an untargeted attack: build it with targeted=True")
            batch["target"] = torch.as_tensor(targets, dtype=torch.long).reshape(-1).to(device)
        return batch

    def __call__(self, labels: Sequence[int] | Tensor, seeds: Sequence[int] | Tensor,
                 targets: Sequence[int] | Tensor | None = None) -> AttackResult:
        batch = self._batch(labels, seeds, targets)
        cond = self.sampler.condition(batch["label"])
        x_t = self.sampler.start_latent(cond, seeds=batch["seed"])
        engine = LatentEngine(self.sampler, self.objective, len(x_t), eps=self.eps, optimizer=self.optimizer,
                              lr=self.lr, stop_at_success=self.stop_at_success)
        for step in range(self.steps):
            engine.step(batch, x_t, cond, policy_key=step)
            if engine.finished():  # every sample fooled: no later step can change a result
                break
        engine.offer_current(batch, x_t, cond)  # the last update, not scored by any step (none if all fooled)
        records = engine.records(batch, x_t, cond)
        clean_pred, adv_pred = records.before["pred"], records.after["pred"]
        success = attack_successes(clean_pred, adv_pred, batch["label"], self.objective.targets(batch))
        return AttackResult(records.optimized, records.original, engine.tracker.best.clone(), success, clean_pred,
                            adv_pred)
