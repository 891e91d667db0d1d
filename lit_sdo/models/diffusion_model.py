"""What a loaded diffusion model is: :class:`DiffusionModel`, the one record every loader returns.

A leaf module (it imports no loader), so :mod:`lit_sdo.models.diffusion` and the loaders it dispatches to
(:mod:`lit_sdo.models.guided_diffusion`, ...) can all build one without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from lit_sdo.sampling.denoisers import DenoiserAdapter


@dataclass
class DiffusionModel:
    """A loaded diffusion model: the denoiser adapter and what a sampler needs to drive it.

    Attributes:
        name: the name it was loaded by.
        denoiser: adapter with the ``denoiser(x, t, cond)`` contract; eval mode, frozen weights.
        scheduler_config: the model's scheduler config, for ``build_scheduler(name, N, base_config=...)``.
        num_classes: labels 0..num_classes-1 for class-conditional models, else None.
        image_size: side of the decoded image.
        channels: channels of the decoded image.
        encode_prompt: prompts -> text embeddings (B, L, D) for text-conditioned models, else None.
        is_shortcut: a shortcut or flow-matching network, sampled by its own scheduler (``scheduler="shortcut"``);
            its ``scheduler_config`` is empty.
    """

    name: str
    denoiser: DenoiserAdapter
    scheduler_config: dict
    num_classes: int | None
    image_size: int
    channels: int
    encode_prompt: Callable[[list[str]], Tensor] | None = None
    is_shortcut: bool = False
