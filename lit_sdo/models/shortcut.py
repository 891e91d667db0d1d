"""The shortcut-model backbone: a DiT conditioned on (x_t, t, d, class) (Frans et al. 2024, arXiv 2410.12557).

Time follows the paper (Sec. 2-3): x_t = (1 - t) x₀ + t x₁ with x₀ ~ N(0, I) noise at t = 0 and x₁ data at
t = 1; the network returns the shortcut s(x_t, t, d), the average velocity that moves x_t to x_{t+d} in
one step of size d. At the smallest step d = 1/M (M = ``max_steps``, 128 in the paper) s is the flow-
matching velocity x₁ - x₀, which stands in for the paper's d = 0 as in the official code.

One class serves the embedded digits model (a few hundred thousand parameters, patch 2 on 16×16) and
the paper's DiT-B on 32×32×4 latents (``configs/shortcut/*.yaml``). ``step_conditioned=False`` builds the
same network without the d embedding: the flow-matching baseline, which only knows d = 1/M.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lit_sdo.io import read_tensors, write_json, write_tensors
from lit_sdo.models.embeddings import sinusoidal_embedding

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SHORTCUT_KIND = "shortcut_dit"  # config.json "kind" of these networks (shortcut and flow-matching)
CONFIG_KEYS = ("in_channels", "sample_size", "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio",
               "num_classes", "max_steps", "step_conditioned")  # ShortcutDiT's constructor arguments, in order


def sincos_positions(grid: int, dim: int) -> Tensor:
    """Fixed 2-D sin/cos positional embedding (grid², dim), as in DiT."""
    coords = torch.arange(grid, dtype=torch.float32) / grid
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 2
    return torch.cat([sinusoidal_embedding(ys.flatten(), quarter, 100.0),
                      sinusoidal_embedding(xs.flatten(), quarter, 100.0)], dim=1)  # (grid², dim)


class ScalarEmbedder(nn.Module):
    """Scalar (t or the step level) -> hidden vector: sinusoidal features then a 2-layer MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, values: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(values, self.freq_dim).to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation by the conditioning vector (DiT, Peebles & Xie)."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.modulation[1].weight)  # adaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)  # (B, 1, D)
        a = self.norm1(h) * (1 + scale1) + shift1
        h = h + gate1 * self.attn(a, a, a, need_weights=False)[0]
        m = self.norm2(h) * (1 + scale2) + shift2
        return h + gate2 * self.mlp(m)


class ShortcutDiT(nn.Module):
    """s_θ(x_t, t, d, y): a DiT whose conditioning vector sums embeddings of t, of log2(1/d) and of y.

    Args:
        in_channels: image or latent channels C (output has the same).
        sample_size: side of the square input (must be divisible by ``patch_size``).
        patch_size: side of one token's patch.
        hidden_size: token width D (DiT-B: 768).
        depth: number of blocks (DiT-B: 12).
        num_heads: attention heads (DiT-B: 12).
        mlp_ratio: MLP width / D (DiT-B: 4).
        num_classes: real classes; label ``num_classes`` is the null label used for guidance.
        max_steps: M, the most sampling steps; the smallest step size is 1/M (paper: 128).
        step_conditioned: embed the step size d (shortcut model); False gives the flow-matching baseline.
    """

    def __init__(self, in_channels: int = 1, sample_size: int = 16, patch_size: int = 2, hidden_size: int = 64,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0, num_classes: int = 10,
                 max_steps: int = 128, step_conditioned: bool = True) -> None:
        super().__init__()
        if sample_size % patch_size:
            raise ValueError(f"sample_size={sample_size} must be divisible by patch_size={patch_size}")
        if max_steps < 1 or max_steps & (max_steps - 1):
            raise ValueError(f"max_steps={max_steps} must be a power of two (the step sizes are 1, 1/2, ..., 1/M)")
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads} and by 4")
        self.config: dict[str, Any] = dict(zip(CONFIG_KEYS, (
            in_channels, sample_size, patch_size, hidden_size, depth, num_heads, mlp_ratio, num_classes,
            max_steps, step_conditioned), strict=True))
        self.in_channels, self.sample_size, self.patch_size = in_channels, sample_size, patch_size
        self.num_classes, self.max_steps, self.step_conditioned = num_classes, max_steps, step_conditioned
        self.null_class = num_classes
        grid = sample_size // patch_size
        self.patchify = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer("positions", sincos_positions(grid, hidden_size)[None], persistent=False)
        self.t_embedder = ScalarEmbedder(hidden_size)
        self.d_embedder = ScalarEmbedder(hidden_size) if step_conditioned else None
        self.class_embedder = nn.Embedding(num_classes + 1, hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.final_linear = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        for layer in (self.final_modulation[1], self.final_linear):  # zero output at init (DiT)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def smallest_step(self) -> float:
        """1/M: the step size of the flow-matching targets (the paper's d = 0)."""
        return 1.0 / self.max_steps

    def check_inputs(self, t: Tensor, d: Tensor) -> None:
        """One-line errors for t or d outside the trained range (t in [0, 1], d in [1/M, 1], t + d <= 1)."""
        if t.min() < 0 or t.max() > 1:
            raise ValueError(f"t must lie in [0, 1] (0 = noise, 1 = data); got [{float(t.min())}, {float(t.max())}]")
        if d.min() < self.smallest_step * (1 - 1e-6) or d.max() > 1 + 1e-6:
            raise ValueError(f"step size d must lie in [1/{self.max_steps}, 1] for this network; "
                             f"got [{float(d.min())}, {float(d.max())}]")
        if (t + d).max() > 1 + 1e-5:
            raise ValueError(f"t + d must be <= 1 (a step may not run past the data end); got {float((t + d).max())}")

    def forward(self, x: Tensor, t: Tensor, d: Tensor, labels: Tensor | None = None) -> Tensor:
        """Shortcut velocity s(x_t, t, d) for x (B, C, H, W), t (B,), d (B,), labels (B,) or None (= null)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.sample_size:
            raise ValueError(f"x has shape {tuple(x.shape)}; this network expects (B, {self.in_channels}, "
                             f"{self.sample_size}, {self.sample_size})")
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).reshape(-1).expand(batch)  # (B,)
        d = torch.as_tensor(d, device=x.device, dtype=x.dtype).reshape(-1).expand(batch)  # (B,)
        self.check_inputs(t, d)
        if labels is None:
            labels = torch.full((batch,), self.null_class, device=x.device, dtype=torch.long)
        c = self.t_embedder(t) + self.class_embedder(labels)  # (B, D)
        if self.d_embedder is not None:
            level = torch.log2(1.0 / d) / math.log2(self.max_steps) if self.max_steps > 1 else torch.zeros_like(d)
            c = c + self.d_embedder(level)  # level in [0, 1]: 0 is one step, 1 is the flow (d = 1/M)
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.positions.to(x.dtype)  # (B, N, D)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_modulation(c)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        out = self.final_linear(self.final_norm(h) * (1 + scale) + shift)  # (B, N, p·p·C)
        return self._unpatchify(out)

    def _unpatchify(self, tokens: Tensor) -> Tensor:
        p, c, g = self.patch_size, self.in_channels, self.sample_size // self.patch_size
        out = tokens.reshape(tokens.shape[0], g, g, p, p, c)  # (B, gh, gw, p, p, C)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], c, g * p, g * p)


def save_shortcut(network: ShortcutDiT, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (the constructor arguments, plus ``extra``) to ``folder``."""
    folder = Path(folder)
    write_tensors(folder / WEIGHTS_FILE, dict(network.state_dict()))
    write_json(folder / CONFIG_FILE, {"kind": SHORTCUT_KIND, **network.config, **(extra or {})})
    return folder


def load_shortcut(folder: str | Path) -> ShortcutDiT:
    """Load a network written by :func:`save_shortcut` (eval mode, no grad on parameters).

    ``folder`` is a path or ``embedded:<name>`` (e.g. ``embedded:digits-shortcut``, ``embedded:digits-flow``).
    """
    import json

    from lit_sdo.models.hub import EMBEDDED_PREFIX, resolve_folder

    folder = resolve_folder(folder, "shortcut model") if str(folder).startswith(EMBEDDED_PREFIX) else Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist; pass a folder written by save_shortcut "
                                "(e.g. data/models/digits-shortcut)")
    config = json.loads(config_path.read_text())
    if config.get("kind") != SHORTCUT_KIND:
        raise ValueError(f"{config_path} describes kind={config.get('kind')!r}, not a {SHORTCUT_KIND} network")
    weights = read_tensors(folder / WEIGHTS_FILE)
    has_d = any(key.startswith("d_embedder.") for key in weights)
    if config.get("step_conditioned", True) and not has_d:
        raise ValueError(f"{folder} holds weights trained without step-size (d) conditioning but its config says "
                         "step_conditioned=true; set it to false and sample with flow_only=True")
    network = ShortcutDiT(**{key: config[key] for key in CONFIG_KEYS if key in config})  # not "kind", extras
    network.load_state_dict(weights)
    return network.eval().requires_grad_(False)
