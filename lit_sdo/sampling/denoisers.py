"""Denoiser adapters: one contract for every model family.

Contract (k-diffusion style, adapted to diffusers schedulers): ``denoiser(x, t, cond) -> model_output``
where ``model_output`` is what the scheduler's ``prediction_type`` expects (ε, v, x₀ or flow
velocity), ``t`` is one scheduler timestep (0-d tensor) and ``cond`` a tensor of class labels (B,)
or text embeddings (B, L, D), or None. ``decode(x0)`` maps the sampler's output to an image in
[-1, 1] (the VAE for latent models, identity for pixel models) with gradient.

Classifier-free guidance lives here, once for all families: one network call on the doubled batch
``[null; cond]`` (diffusers' pipelines' order) and ``uncond + s * (cond - uncond)`` is returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn


class DenoiserAdapter(nn.Module):
    """Base adapter: guidance, timestep broadcasting, learned-sigma split and decoding.

    Subclasses implement :meth:`predict` (one network call) and :meth:`null_condition`.
    """

    def __init__(self, network: nn.Module, sample_shape: tuple[int, int, int], guidance_scale: float = 1.0,
                 vae: nn.Module | None = None) -> None:
        super().__init__()
        self.network = network
        self.vae = vae
        self.sample_shape = tuple(sample_shape)
        self.guidance_scale = guidance_scale

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        raise NotImplementedError

    def null_condition(self, cond: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is None or self.guidance_scale == 1.0:
            return self._call_network(x, t, cond)
        both = self._call_network(torch.cat([x, x]), t, torch.cat([self.null_condition(cond), cond]))
        uncond, conditioned = both.chunk(2)  # (B, C, H, W) each
        return uncond + self.guidance_scale * (conditioned - uncond)

    def _call_network(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        t_batch = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])  # (B,)
        out = self.predict(x, t_batch, cond)
        if out.shape[1] == 2 * x.shape[1]:
            # Learned-sigma models (IDDPM, DiT) output [ε, variance]; the samplers here use ε only.
            out = out[:, : x.shape[1]]
        return out

    def decode(self, x0: Tensor) -> Tensor:
        """Latent -> image in [-1, 1] (keeps the graph); identity for pixel models."""
        if self.vae is None:
            return x0
        scale = getattr(self.vae.config, "scaling_factor", 1.0)
        return self.vae.decode(x0 / scale).sample

    def encode(self, images: Tensor) -> Tensor:
        """Image in [-1, 1] -> the sampler's space, the inverse of :meth:`decode`: the VAE posterior's mean,
        scaled (latent models; the mean, not a draw, so a reference always maps to the same latent); identity
        for pixel models."""
        if self.vae is None:
            return images
        scale = getattr(self.vae.config, "scaling_factor", 1.0)
        return self.vae.encode(images).latent_dist.mean * scale

    def check_latent(self, x: Tensor) -> None:
        """One-line error for a latent that does not fit the network."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.sample_shape:
            expected = ", ".join(map(str, self.sample_shape))
            raise ValueError(f"latent x has shape {tuple(x.shape)}; this denoiser expects (B, {expected})")


class ClassConditionalMixin:
    """Null condition for class-label models: the label reserved for 'no class'."""

    null_class: int | None

    def null_condition(self, cond: Tensor) -> Tensor:
        if self.null_class is None:
            raise ValueError("guidance_scale != 1 needs null_class (the label the model was trained with for no class)")
        return torch.full_like(cond, self.null_class)


class PixelUNetDenoiser(ClassConditionalMixin, DenoiserAdapter):
    """diffusers ``UNet2DModel`` in pixel space, optionally class-conditional (``num_class_embeds``)."""

    def __init__(self, unet: nn.Module, guidance_scale: float = 1.0, null_class: int | None = None) -> None:
        cfg = unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        super().__init__(unet, (cfg.in_channels, size, size), guidance_scale)
        self.null_class = null_class

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        return self.network(x, t, class_labels=cond).sample


GuidanceMode = Literal["auto", "cfg", "embedding"]
GUIDANCE_MODES: tuple[str, ...] = ("auto", "cfg", "embedding")


def guidance_embedding(w: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (B, dim) of the guidance weights w (B,), for guidance-distilled UNets (LCM).

    LCM distillation (Luo et al. 2023, arXiv 2310.04378) conditions the UNet on w through the sinusoidal
    timestep embedding of VDM / "Attention is all you need" applied to 1000·w: half the channels are
    sin(1000·w·f_j), half cos(1000·w·f_j), with frequencies f_j = 10000^(−j/(half−1)), j = 0..half−1;
    an odd ``dim`` gets one zero channel. Computed in float32 (the caller casts).
    """
    half = dim // 2
    log_rate = torch.log(torch.tensor(10000.0)) / max(half - 1, 1)
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -log_rate)  # (half,)
    angles = (w.float() * 1000.0)[:, None] * frequencies[None, :]  # (B, half)
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (B, 2·half)
    return torch.nn.functional.pad(embedding, (0, dim - 2 * half))


class LatentUNetDenoiser(DenoiserAdapter):
    """diffusers ``UNet2DConditionModel`` on VAE latents, conditioned on text embeddings (B, L, D).

    Classifier-free guidance needs the empty prompt's embedding: ``encode_prompt`` (prompts -> (B, L, D)) encodes
    it as StableDiffusionPipeline encodes its negative prompt, ``[""] * B`` in one call per batch size B (cached),
    so every GEMM of the text encoder sees the pipeline's shapes and the result equals the pipeline's bit for
    bit on any CPU (a batch-1 encoding expanded to B differs in the last bits where the BLAS kernel depends on
    the batch, e.g. MKL on AVX-512). Or a fixed ``null_embedding`` (1, L, D), expanded to B; not both.
    A guidance-distilled UNet (LCM: ``config.time_cond_proj_dim`` set) is instead told the guidance scale
    through ``timestep_cond`` = :func:`guidance_embedding` of w = ``guidance_scale`` − 1, in one call per
    step and without a null prompt, as diffusers' LCM and Stable Diffusion pipelines do for such UNets.
    ``guidance``: ``"auto"`` picks the embedding exactly when the UNet has ``time_cond_proj_dim``;
    ``"cfg"`` / ``"embedding"`` force one.
    """

    def __init__(self, unet: nn.Module, vae: nn.Module, guidance_scale: float = 1.0,
                 null_embedding: Tensor | None = None, latent_size: int | None = None,
                 guidance: GuidanceMode = "auto", encode_prompt: Callable[[list[str]], Tensor] | None = None) -> None:
        cfg = unet.config
        size = latent_size or (cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
        super().__init__(unet, (cfg.in_channels, size, size), guidance_scale, vae=vae)
        if null_embedding is not None and encode_prompt is not None:
            raise ValueError("pass null_embedding or encode_prompt (it encodes the empty prompt), not both")
        self.register_buffer("null_embedding", null_embedding, persistent=False)
        self.encode_prompt = encode_prompt
        self._null_by_batch: dict[int, Tensor] = {}  # B -> encode_prompt([""] * B), (B, L, D)
        self.embedding_dim: int | None = getattr(cfg, "time_cond_proj_dim", None)
        if guidance not in GUIDANCE_MODES:
            raise ValueError(f"guidance={guidance!r} is unknown; allowed values: {', '.join(GUIDANCE_MODES)}")
        if guidance == "embedding" and self.embedding_dim is None:
            raise ValueError("guidance='embedding' needs a guidance-distilled UNet (config.time_cond_proj_dim set, "
                             "e.g. LCM); this UNet has time_cond_proj_dim=None: use guidance='cfg'")
        self.embedded_guidance = guidance == "embedding" or (guidance == "auto" and self.embedding_dim is not None)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.embedded_guidance:  # w reaches the UNet through timestep_cond: no null-prompt half
            return self._call_network(x, t, cond)
        return super().forward(x, t, cond)

    def null_condition(self, cond: Tensor) -> Tensor:
        if self.encode_prompt is not None:
            return self._encoded_null(cond.shape[0], cond.device.type).to(cond)
        if self.null_embedding is None:
            raise ValueError("guidance_scale != 1 needs null_embedding or encode_prompt (the empty prompt's "
                             "text embedding)")
        return self.null_embedding.to(cond).expand(cond.shape[0], -1, -1)

    def _encoded_null(self, batch: int, device_type: str) -> Tensor:
        """``encode_prompt([""] * batch)`` once per batch size, in float32 even under a bf16 autocast."""
        if batch not in self._null_by_batch:
            with torch.no_grad(), torch.autocast(device_type, enabled=False):
                self._null_by_batch[batch] = self.encode_prompt([""] * batch)  # (B, L, D)
        return self._null_by_batch[batch]

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if cond is None:
            raise ValueError("a text-conditioned UNet needs cond = text embeddings (B, L, D)")
        timestep_cond = None
        if self.embedded_guidance:
            w = torch.full((x.shape[0],), self.guidance_scale - 1.0)  # (B,)
            timestep_cond = guidance_embedding(w, self.embedding_dim).to(device=x.device, dtype=x.dtype)
        return self.network(x, t, encoder_hidden_states=cond, timestep_cond=timestep_cond).sample


class TransformerDenoiser(ClassConditionalMixin, DenoiserAdapter):
    """diffusers DiT (class labels, ``DiTTransformer2DModel``) or PixArt (text, ``PixArtTransformer2DModel``).

    Both are latent models; ``vae`` decodes. DiT's learned-sigma output is split in the base class.
    """

    def __init__(self, transformer: nn.Module, vae: nn.Module | None = None, guidance_scale: float = 1.0,
                 null_class: int | None = None, null_embedding: Tensor | None = None) -> None:
        cfg = transformer.config
        super().__init__(transformer, (cfg.in_channels, cfg.sample_size, cfg.sample_size), guidance_scale, vae=vae)
        self.null_class = null_class
        self.text_conditioned = getattr(cfg, "caption_channels", None) is not None
        self.register_buffer("null_embedding", null_embedding, persistent=False)

    def null_condition(self, cond: Tensor) -> Tensor:
        if not self.text_conditioned:
            return ClassConditionalMixin.null_condition(self, cond)
        if self.null_embedding is None:
            raise ValueError("guidance_scale != 1 needs null_embedding (the empty prompt's text embedding)")
        return self.null_embedding.to(cond).expand(cond.shape[0], -1, -1)

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if self.text_conditioned:
            extra: dict[str, Any] = {"resolution": None, "aspect_ratio": None}
            return self.network(x, encoder_hidden_states=cond, timestep=t, added_cond_kwargs=extra).sample
        return self.network(x, timestep=t, class_labels=cond).sample
