"""Differentiable rewards for fine-tuning (paper Sec. 5.3, Eq. 27): images in [0, 1] (+ condition) -> (B,).

Every reward has the objectives' call shape, ``reward(images, batch) -> (B,)``: the batch holds class
labels (``label``, B) for class-conditional generators or prompt texts (``prompt``) for text models; a
reward uses what it needs. Rewards are maximised (the reward task minimises −r). The embedded ones can
be checked by eye on the digits: ``ClassLogProbReward`` makes every sample look more like one digit;
``InkReward`` makes strokes
bolder (or thinner with ``sign=-1``). ``EmbeddingMLPReward`` is the LAION-aesthetic shape (an MLP on
normalised image embeddings, weights from a user file); for Stable Diffusion it runs on CLIP ViT-L/14.
``PreferenceReward`` is HPSv2-style: the image–prompt score of a preference-tuned open_clip model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from lit_sdo.models import Classifier, load_classifier
from lit_sdo.models.aesthetic import LAION_HIDDEN, load_aesthetic_mlp, load_image_embedder
from lit_sdo.models.hub import as_module
from lit_sdo.models.preference import load_preference_clip
from lit_sdo.objectives.base import Batch


class Reward(nn.Module):
    """Base class: per-sample reward (B,) of images in [0, 1] given their batch; higher is better."""

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        raise NotImplementedError


class ClassLogProbReward(Reward):
    """log p(c | x) from a frozen classifier: c is ``target_class``, or the sample's own label when None.

    Args:
        classifier: a name for :func:`lit_sdo.models.load_classifier` (``embedded:digits-resnet``) or a built
            :class:`~lit_sdo.models.Classifier`.
        target_class: the class every sample is pushed towards (None: the class it was generated for).
    """

    def __init__(self, classifier: str | Classifier = "embedded:digits-resnet", target_class: int | None = None
                 ) -> None:
        super().__init__()
        self.classifier = as_module(classifier, load_classifier, Classifier)
        if target_class is not None and not 0 <= target_class < self.classifier.num_classes:
            raise ValueError(f"target_class={target_class} is out of range for {self.classifier.name} with "
                             f"{self.classifier.num_classes} classes")
        self.target_class = target_class

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        log_probs = F.log_softmax(self.classifier(images), dim=1)  # (B, classes)
        if self.target_class is not None:
            return log_probs[:, self.target_class]
        labels = batch.get("label")
        if labels is None:
            raise ValueError("ClassLogProbReward without target_class needs the samples' labels")
        return log_probs.gather(1, labels.long()[:, None]).squeeze(1)


class InkReward(Reward):
    """Mean ink per image (stroke thickness): the mean of ``images`` in [0, 1] where ink is bright.

    Args:
        sign: +1 rewards bolder strokes, −1 thinner ones.
        dark_ink: set for dark-on-light images (ink = 1 − brightness).
    """

    def __init__(self, sign: float = 1.0, dark_ink: bool = False) -> None:
        super().__init__()
        if sign not in (1.0, -1.0):
            raise ValueError(f"sign={sign} must be 1 (bolder) or -1 (thinner)")
        self.sign, self.dark_ink = sign, dark_ink

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        ink = 1 - images if self.dark_ink else images
        return self.sign * ink.flatten(1).mean(1)  # (B,)


class EmbeddingMLPReward(Reward):
    """An MLP on L2-normalised image embeddings (LAION aesthetic predictor style), weights from a file.

    Args:
        weights: ``.safetensors`` or ``.pt`` state dict of :class:`lit_sdo.models.aesthetic.AestheticMLP`'s
            layout (LAION's file loads as is), or a built head embeddings (B, D) -> scores (B,).
        embedder: image encoder: ``clip:<name or folder>`` (CLIP image features via
            :func:`lit_sdo.models.load_clip`), ``classifier:<name>`` (penultimate classifier features), or a
            built module images in [0, 1] -> (B, D).
        embed_dim: embedding size the MLP expects (768 for CLIP ViT-L/14); read with a weights file only.
        hidden: hidden sizes of the MLP (LAION: 1024, 128, 64, 16); the last layer outputs one score; read
            with a weights file only.
    """

    def __init__(self, weights: str | nn.Module, embedder: str | nn.Module = "clip:openai/clip-vit-large-patch14",
                 embed_dim: int = 768, hidden: Sequence[int] = LAION_HIDDEN) -> None:
        super().__init__()
        self.mlp = as_module(weights, lambda path: load_aesthetic_mlp(path, embed_dim, hidden))
        self.embed = as_module(embedder, load_image_embedder)

    def score(self, embeddings: Tensor) -> Tensor:
        """(B, D) embeddings -> (B,) scores."""
        return self.mlp(embeddings)

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        return self.score(self.embed(images))


class PreferenceReward(Reward):
    """HPSv2-style preference score of (image, prompt): the cosine of a preference-tuned open_clip model's
    embeddings (HPS v2.1: ViT-H-14), weights from a user file; text models only (it needs the prompts).

    Args:
        weights: the checkpoint (``HPS_v2.1_compressed.pt``) or a state dict / ``.safetensors`` file, or a built
            scorer (images in [0, 1], prompts) -> (B,) such as :class:`lit_sdo.models.preference.PreferenceClip`.
        architecture: open_clip model config the weights belong to; read with a weights file only.
    """

    def __init__(self, weights: str | nn.Module, architecture: str = "ViT-H-14") -> None:
        super().__init__()
        self.scorer = as_module(weights, lambda path: load_preference_clip(path, architecture))

    def forward(self, images: Tensor, batch: Batch) -> Tensor:
        prompts = batch.get("prompt")
        if prompts is None:
            raise ValueError("PreferenceReward scores an image against its prompt: use it with a text model and "
                             "data.init_args.prompts")
        return self.scorer(images, prompts)

