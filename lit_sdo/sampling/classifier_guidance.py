"""Classifier guidance for ε-prediction models (Dhariwal & Nichol 2021, Alg. 2, arXiv 2105.05233).

A noise-aware classifier p_φ(y | x_t, t) steers a deterministic sampler (DDIM) by shifting the noise
prediction along the gradient of its log-probability:

    ε̂(x_t, t, y) = ε_θ(x_t, t, y) - s · √(1 - ᾱ_t) · ∇_{x_t} log p_φ(y | x_t, t)

(s = ``classifier_scale``). :class:`ClassifierGuidedDenoiser` returns ε̂ under the ``denoiser(x, t, cond)``
contract, so every diffusers scheduler and every gradient policy of :func:`lit_sdo.sampling.sample`
drives it unchanged.

The classifier gradient is part of the model OUTPUT, not of the graph SDO keeps: it is taken under
``torch.enable_grad`` on a detached copy of x_t (so it exists even at steps the policy runs without a
graph) and returned detached. At the step whose graph SDO keeps, ∂ε̂/∂x_t is therefore ∂ε_θ/∂x_t only:
the classifier's Hessian term s·√(1 - ᾱ_t)·∇²log p_φ is left out, as in guided-diffusion's own sampler,
which computes the same gradient with ``torch.autograd.grad`` and no higher-order graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_sdo.sampling.denoisers import DenoiserAdapter


def classifier_log_prob_gradient(classifier: nn.Module, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """∇_x log p_φ(y | x, t) for each row, detached: x (B, C, H, W), t (B,), labels (B,) -> (B, C, H, W)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x_in, t).float(), dim=-1)  # (B, K)
        selected = log_probs.gather(1, labels.reshape(-1, 1).long()).sum()  # rows are independent
        (grad,) = torch.autograd.grad(selected, x_in)
    return grad.detach().to(x.dtype)


class ClassifierGuidedDenoiser(DenoiserAdapter):
    """Pixel ε-model ``network(x, timesteps, y)`` (e.g. ADM) with optional classifier guidance.

    Args:
        network: ε-prediction UNet with ``in_channels``, ``image_size`` and ``num_classes`` (None:
            unconditional); a learned-variance output (2C channels) is cut to ε by the base class.
        alphas_cumprod: ᾱ_t for t = 0..T-1 of the model's training schedule (T,).
        classifier: noise-aware classifier ``classifier(x_t, timesteps) -> logits`` (None: no guidance).
        classifier_scale: s of Alg. 2 (0: no guidance).
    """

    def __init__(self, network: nn.Module, alphas_cumprod: Tensor, classifier: nn.Module | None = None,
                 classifier_scale: float = 0.0) -> None:
        if classifier_scale != 0 and classifier is None:
            raise ValueError(f"classifier_scale={classifier_scale} needs a noise-aware classifier; load one, or set "
                             "classifier_scale=0")
        if classifier_scale < 0:
            raise ValueError(f"classifier_scale={classifier_scale} must be >= 0 (0 = no guidance)")
        size = network.image_size
        super().__init__(network, (network.in_channels, size, size))
        self.classifier = classifier
        self.classifier_scale = classifier_scale
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().double(), persistent=False)  # (T,)

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        return self.network(x, t, cond if self.network.num_classes is not None else None)

    def null_condition(self, cond: Tensor) -> Tensor:
        raise ValueError("this model has no null label, so classifier-free guidance is not available "
                         "(guidance_scale must be 1); use classifier_scale for classifier guidance")

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        eps = super().forward(x, t, cond)  # (B, C, H, W), ε_θ
        if self.classifier is None or self.classifier_scale == 0:
            return eps
        if cond is None:
            raise ValueError("classifier guidance needs class labels cond (B,)")
        t_batch = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # (B,)
        grad = classifier_log_prob_gradient(self.classifier, x, t_batch, cond)  # detached
        sigma = (1 - self.alphas_cumprod[t_batch.long()]).sqrt().to(eps.dtype).reshape(-1, 1, 1, 1)  # √(1 - ᾱ_t)
        return eps - self.classifier_scale * sigma * grad
