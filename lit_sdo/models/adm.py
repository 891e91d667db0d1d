"""ADM, the UNet of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs", arXiv 2105.05233), and its
noise-aware classifier (the UNet's encoder half with attention pooling), for the published checkpoints.

Written for lit_sdo from the paper's description; module and parameter names follow the layout of the
released state dicts (openai/guided-diffusion ``UNetModel`` / ``EncoderUNetModel``) so that those files
load with ``strict=True``: ``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``,
``output_blocks``, ``out``; a residual block holds ``in_layers`` (norm, SiLU, conv), ``emb_layers``
(SiLU, linear), ``out_layers`` (norm, SiLU, dropout, conv) and ``skip_connection``; an attention block
``norm``, ``qkv`` and ``proj_out`` (1×1 convolutions over the flattened positions).

Architecture choices of the paper (Sec. 3): residual blocks with adaptive group normalisation
("scale-shift norm": GroupNorm(h)·(1 + s) + b with (s, b) from the time+class embedding), residual
blocks for up- and downsampling (BigGAN), attention at 32, 16 and 8 pixels, a learned variance (6 output
channels: ε and the interpolation of the variance, of which samplers here use ε).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_sdo.models.embeddings import sinusoidal_embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups, in the parameters' precision (float32 under a half-precision torso, as trained)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.to(self.weight.dtype)).to(x.dtype)


def timestep_features(timesteps: Tensor, dim: int) -> Tensor:
    """(B,) DDPM timesteps 0..T-1 -> (B, dim) [cos, sin] features with periods up to 10000 (Transformer/DDPM)."""
    return sinusoidal_embedding(timesteps.float(), dim, scale=1.0)


def attention(qkv: Tensor, heads: int, split_heads_first: bool) -> Tensor:
    """Multi-head self-attention over positions: qkv (B, 3C, T) -> (B, C, T), scale 1/√(C/heads).

    The checkpoints use two channel layouts: ``split_heads_first`` (the 128×128 and 256×256 models, the
    classifiers' blocks) reads qkv as ``heads`` groups of [q, k, v]; otherwise (the 64×64 model, the
    classifiers' pooling) as [q, k, v] each split into ``heads``.
    """
    batch, width, length = qkv.shape
    ch = width // (3 * heads)
    if split_heads_first:
        q, k, v = qkv.reshape(batch, heads, 3 * ch, length).split(ch, dim=2)  # (B, H, ch, T) each
    else:
        q, k, v = (part.reshape(batch, heads, ch, length) for part in qkv.chunk(3, dim=1))
    out = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))  # (B, H, T, ch)
    return out.transpose(2, 3).reshape(batch, heads * ch, length)


class EmbeddedSequential(nn.Sequential):
    """Runs its layers in order, passing the embedding to the residual blocks."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Resample(nn.Module):
    """×2 nearest upsampling or 2×2 average pooling, optionally followed/replaced by a 3×3 convolution.

    The parameter names of the checkpoints: ``conv`` (learned upsampling), ``op`` (learned downsampling).
    """

    def __init__(self, channels: int, up: bool, learned: bool) -> None:
        super().__init__()
        self.up = up
        if learned and up:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif learned:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.learned = learned

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x) if self.learned else x
        return self.op(x) if self.learned else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding, optionally changing channels or resolution (BigGAN style)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 scale_shift: bool = True, up: bool = False, down: bool = False) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = up or down
        self.h_upd = Resample(channels, up=up, learned=False) if self.resample else nn.Identity()
        self.x_upd = Resample(channels, up=up, learned=False) if self.resample else nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)  # each block starts as the identity
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.resample:  # resample between the activation and the convolution, on both paths
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[..., None, None]  # (B, 2C or C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions with a residual connection (zero-initialised output projection)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 split_heads_first: bool = True) -> None:
        super().__init__()
        if num_head_channels != -1 and channels % num_head_channels:
            raise ValueError(f"channels={channels} must be divisible by num_head_channels={num_head_channels}")
        self.heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.split_heads_first = split_heads_first
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)  # (B, C, T)
        h = self.proj_out(attention(self.qkv(self.norm(flat)), self.heads, self.split_heads_first))
        return (flat + h).reshape(b, c, *spatial)


class AttentionPool(nn.Module):
    """The classifier's head: attention from the mean position to all positions (CLIP's attention pooling)."""

    def __init__(self, spatial: int, channels: int, num_head_channels: int, out_channels: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(channels, spatial ** 2 + 1) / channels ** 0.5)
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels, 1)
        self.heads = channels // num_head_channels

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(*x.shape[:2], -1)  # (B, C, HW)
        flat = torch.cat([flat.mean(dim=-1, keepdim=True), flat], dim=-1) + self.positional_embedding.to(x.dtype)
        return self.c_proj(attention(self.qkv_proj(flat), self.heads, split_heads_first=False))[:, :, 0]  # (B, K)


class _Encoder(nn.Module):
    """Shared front of both networks: time embedding, the downsampling path and the middle block."""

    def __init__(self, in_channels: int, model_channels: int, num_res_blocks: int, attention_resolutions: Sequence[int],
                 channel_mult: Sequence[float], dropout: float, num_heads: int, num_head_channels: int,
                 scale_shift: bool, resblock_updown: bool, split_heads_first: bool) -> None:
        super().__init__()
        self.model_channels = model_channels
        emb = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self._attn_args = (num_heads, num_head_channels, split_heads_first)
        self._res_args = (emb, dropout, scale_shift)
        attn, res = self.attn, self.res
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbeddedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        self.skip_channels, ds = [ch], 1  # channels of every skip connection; ds = downsampling factor
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbeddedSequential(*layers))
                self.skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Resample(ch, up=False, learned=True)
                self.input_blocks.append(EmbeddedSequential(down))
                self.skip_channels.append(ch)
                ds *= 2
        self.middle_block = EmbeddedSequential(res(ch), attn(ch), res(ch))
        self.channels, self.downsampling = ch, ds

    def attn(self, channels: int) -> AttentionBlock:
        """An attention block with this network's head settings."""
        return AttentionBlock(channels, *self._attn_args)

    def res(self, channels: int, out: int | None = None, up: bool = False, down: bool = False) -> ResBlock:
        """A residual block with this network's embedding width, dropout and normalisation."""
        emb, dropout, scale_shift = self._res_args
        return ResBlock(channels, emb, out, dropout, scale_shift, up=up, down=down)

    def embed(self, timesteps: Tensor) -> Tensor:
        return self.time_embed(timestep_features(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype))


class ADMUNet(_Encoder):
    """ε_θ(x_t, t, y) of ADM: ``forward(x (B, C, H, W), timesteps (B,), y (B,) or None) -> (B, out_channels, H, W)``.

    Args mirror the released model flags: ``model_channels`` (``num_channels``), ``attention_resolutions``
    as downsampling factors (image_size // 32, // 16, // 8), ``num_classes`` (None: unconditional),
    ``split_heads_first`` = not ``use_new_attention_order``, ``scale_shift`` = ``use_scale_shift_norm``.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[float],
                 num_classes: int | None = None, dropout: float = 0.0, num_heads: int = 1, num_head_channels: int = -1,
                 scale_shift: bool = True, resblock_updown: bool = True, split_heads_first: bool = True) -> None:
        super().__init__(in_channels, model_channels, num_res_blocks, attention_resolutions, channel_mult, dropout,
                         num_heads, num_head_channels, scale_shift, resblock_updown, split_heads_first)
        self.image_size, self.in_channels, self.out_channels, self.num_classes = (
            image_size, in_channels, out_channels, num_classes)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, 4 * model_channels)
        skips, ch, ds = list(self.skip_channels), self.channels, self.downsampling
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [self.res(ch + skips.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(self.attn(ch))
                if level and i == num_res_blocks:
                    layers.append(self.res(ch, ch, up=True) if resblock_updown else Resample(ch, up=True, learned=True))
                    ds //= 2
                self.output_blocks.append(EmbeddedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        if (y is None) != (self.num_classes is None):
            raise ValueError("this ADM UNet is " + ("class-conditional: pass class labels y (B,)" if self.num_classes
                                                    is not None else "unconditional: pass y=None"))
        emb = self.embed(timesteps)  # (B, 4·model_channels)
        if y is not None:
            emb = emb + self.label_emb(y)
        h, skips = x.to(emb.dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)


class ADMClassifier(_Encoder):
    """log-probability model p_φ(y | x_t, t): ``forward(x (B, C, H, W), timesteps (B,)) -> logits (B, out_channels)``.

    The released classifiers are the UNet's encoder with attention pooling (``pool="attention"``);
    ``"adaptive"`` (global average, 1×1 convolution) is the other head the paper mentions.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int], channel_mult: Sequence[float],
                 dropout: float = 0.0, num_heads: int = 1, num_head_channels: int = 64, scale_shift: bool = True,
                 resblock_updown: bool = True, split_heads_first: bool = True, pool: str = "attention") -> None:
        super().__init__(in_channels, model_channels, num_res_blocks, attention_resolutions, channel_mult, dropout,
                         num_heads, num_head_channels, scale_shift, resblock_updown, split_heads_first)
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, out_channels
        ch = self.channels
        if pool == "attention":
            head: nn.Module = AttentionPool(image_size // self.downsampling, ch, num_head_channels, out_channels)
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), head)
        elif pool == "adaptive":
            self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Conv2d(ch, out_channels, 1), nn.Flatten())
        else:
            raise ValueError(f"pool={pool!r} is not one of 'attention', 'adaptive'")

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        emb = self.embed(timesteps)
        h = x.to(emb.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
        return self.out(self.middle_block(h, emb)).to(x.dtype)


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
