"""Cost of one gradient through an N-step sampler, for every gradient policy (paper Table 3).

For each policy and N it measures, through the library's public :func:`lit_sdo.sampling.sample`:
- ``seconds``: wall time of one gradient (sampling forward + backward), median of ``--repeats`` runs
  after a warm-up; policies run round-robin so load from other processes hits all of them alike;
- ``peak_mem_bytes``: peak memory above the baseline before the case. CUDA: ``max_memory_allocated``
  minus ``memory_allocated``. CPU: peak RSS of a FRESH process per case (forked from a server that has
  only imported the libraries), because the interpreter with torch already holds ~0.9 GB and glibc keeps
  freed blocks; the child fixes malloc's mmap threshold so freed tensors leave RSS;
- ``cpu_seconds``: CPU time of the process (``time.process_time``, all threads) over the same calls, median;
  the figure to compare on a shared machine, where wall time also counts other processes' load (None on CUDA);
- ``ratio_to_sampling``: ``seconds`` over plain sampling's (policy ``none``) in the same run;
- ``grad_cosine``: cosine between the policy's gradient w.r.t. x_T and the exact one, i.e. ``full``
  backprop computed separately in float64 (``checkpoint`` if ``full`` runs out of memory; ``--exact-dtype
  float32`` for networks whose float64 copy does not fit, ``--no-exact`` to leave it out: then None);
- ``grad_cosine_to_fp32_sdo``: for SDO run at a lower precision (``sdo@bf16``), the cosine to the same
  SDO policy's float32 gradient (same k); None for other policies.

A policy label may carry the precision of its no-grad model calls after ``@`` (see
:func:`parse_label`): ``sdo@bf16``, ``none@bf16``, ``sdo@bf16+copy``, ``sdo@fp32+cl+compile``, ...

The loss is the squared distance of x₀ (the VAE's decoded image for ``sd15``) to a fixed random target.
By default (``--wrt all``) the gradient is taken w.r.t. x_T AND the network's parameters, so every policy
has something to differentiate (DRaFT-K / AlignProp truncations give no gradient to x_T at all: their cosine
is 0) and backward costs B ≈ 2F (a backward of about two forwards); ``--wrt latent`` freezes the network (the
latent-optimisation setting of Table 3).

Run ``python benchmarks/gradient_cost.py`` (CPU, small UNet) or see ``--help``. For networks at the paper's
sizes on a CPU, ``--one-pass`` (:mod:`benchmarks.one_pass`) runs each case once in a fresh process instead of
warm-up + repeats + float64 reference + a separate peak-RSS process.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python benchmarks/gradient_cost.py` without installing
    sys.path.insert(0, str(ROOT))

from benchmarks.baseline_report import (  # noqa: E402
    baseline_targets,
    paper_ratio_lines,
    plot_frontier,
    tail_frontier_lines,
)
from lit_sdo.io import write_json  # noqa: E402
from lit_sdo.sampling import (  # noqa: E402
    DenoiserAdapter,
    GradientPolicy,
    LatentUNetDenoiser,
    PixelUNetDenoiser,
    TransformerDenoiser,
    as_policy,
    build_scheduler,
    sample,
)
from lit_sdo.sampling.policies import BASELINE_NAMES  # noqa: E402
from lit_sdo.sampling.precision import PRECISION_NAMES, Precision  # noqa: E402

# Policy labels as they appear in --policies, the table and the JSON ``policy`` key.
POLICIES: dict[str, GradientPolicy] = {
    "none": GradientPolicy("none"),
    "sdo": GradientPolicy("sdo", k=0),
    "sdo-random": GradientPolicy("sdo", k="random"),
    "full": GradientPolicy("full"),
    "checkpoint": GradientPolicy("checkpoint"),
    "last_k=1": GradientPolicy("last_k", last_k=1),
    "random_truncation": GradientPolicy("random_truncation"),
}
# Any other label is read as a policy string (lit_sdo.sampling.parse_policy): adjoint, doodl, sdo-tail=4, ...


def policy_for(label: str) -> GradientPolicy:
    """The policy a label names: a preset above, else its string form."""
    return POLICIES[label] if label in POLICIES else as_policy(label)
DEFAULT_STEPS = (10, 25, 50, 100)
RECORD_KEYS = ("policy", "steps", "seconds", "cpu_seconds", "peak_mem_bytes", "ratio_to_sampling", "grad_cosine",
               "grad_cosine_to_fp32_sdo", "warmup_seconds")
PRECISION_FLAGS = {"copy": "cast='copy'", "cl": "channels_last", "compile": "torch.compile",
                   "emulated": "allow_emulated (bf16 on a CPU without bf16 kernels)"}
SEED = 0

# The DDPM β schedule of most pixel models and DiT, and Stable Diffusion's "scaled_linear" one.
LINEAR_BETAS: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "linear",
                                "beta_start": 1e-4, "beta_end": 0.02}
SD_BETAS: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                            "beta_end": 0.012, "set_alpha_to_one": False, "steps_offset": 1}


@dataclass
class Setup:
    """A random-initialised network behind its adapter, with a seeded x_T, condition and loss target."""

    denoiser: DenoiserAdapter
    x_T: Tensor  # (B, C, H, W)
    cond: Tensor | None  # class labels (B,) or text embeddings (B, 77, 768)
    target: Tensor  # (B, C, H, W): the loss is mean((x₀ - target)²)
    scheduler_config: dict[str, Any]


# A builder returns (adapter, condition kind, scheduler config); the condition kind is a number of
# classes (class labels), "text" (CLIP-L text embeddings, 77×768) or None (unconditional).
CondKind = int | str | None


def _tiny_unet() -> tuple[DenoiserAdapter, CondKind, dict[str, Any]]:
    """Pixel UNet2DModel, 3×32×32, 10 classes: one forward is ~10 ms on one core and its saved
    activations (~4 MB a call per sample) are ~6× its weights, so memory ratios reflect activations."""
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=10)
    return PixelUNetDenoiser(unet), 10, LINEAR_BETAS


def _ddpm_256() -> tuple[DenoiserAdapter, CondKind, dict[str, Any]]:
    """The UNet2DModel shape of google/ddpm-celebahq-256 (113.7M parameters, 3×256×256, unconditional)."""
    unet = UNet2DModel(
        sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),  # attention at 16×16
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        act_fn="silu", attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, time_embedding_type="positional",
    )
    return PixelUNetDenoiser(unet), None, LINEAR_BETAS


def _sd15_unet() -> tuple[DenoiserAdapter, CondKind, dict[str, Any]]:
    """UNet2DConditionModel at Stable Diffusion 1.5's shape (859.5M parameters) on 4×64×64 latents."""
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
    )
    # The benchmark's loss is on the latent x₀: no VAE decode (Table 3's latent row includes one).
    return LatentUNetDenoiser(unet, vae=None), "text", SD_BETAS


def _sd15_with_vae() -> tuple[DenoiserAdapter, CondKind, dict[str, Any]]:
    """SD1.5's UNet plus its VAE (AutoencoderKL at SD's shape, 83.7M parameters): the loss is on the decoded
    3×512×512 image, as in Table 3's latent row."""
    unet = _sd15_unet()[0].network
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215)
    return LatentUNetDenoiser(unet, vae=vae), "text", SD_BETAS


def _dit_xl_2() -> tuple[DenoiserAdapter, CondKind, dict[str, Any]]:
    """DiTTransformer2DModel XL/2 (28 layers × 16 heads × 72) on 4×32×32 latents, learned sigma.

    749.8M parameters in diffusers' layout, which repeats the timestep/class embedding in each block
    (the original DiT-XL/2 has 675M)."""
    dit = DiTTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
        activation_fn="gelu-approximate", norm_elementwise_affine=False, attention_bias=True,
    )
    return TransformerDenoiser(dit), 1000, LINEAR_BETAS


def _digits_ddpm() -> tuple[DenoiserAdapter, CondKind, dict[str, Any]]:
    """The shipped embedded:digits-ddpm (trained weights, 1×16×16, 10 classes): the attack's generator."""
    from lit_sdo.models import load_diffusion

    model = load_diffusion("embedded:digits-ddpm")
    return model.denoiser, model.num_classes, dict(model.scheduler_config)


MODELS: dict[str, Callable[[], tuple[DenoiserAdapter, CondKind, dict[str, Any]]]] = {
    "small-unet": _tiny_unet,
    "digits-ddpm": _digits_ddpm,
    "sd15-unet": _sd15_unet,
    "sd15": _sd15_with_vae,
    "ddpm-256": _ddpm_256,
    "dit-xl-2": _dit_xl_2,
}
DEFAULT_BATCH = {"small-unet": 2, "digits-ddpm": 30, "sd15-unet": 1, "sd15": 1, "ddpm-256": 1, "dit-xl-2": 1}


def build_setup(model: str, device: str, batch: int, wrt: str, dtype: torch.dtype = torch.float32) -> Setup:
    """Seeded network (identical in every process), x_T, condition and target on ``device``."""
    if model not in MODELS:
        raise ValueError(f"--model {model!r} is unknown; allowed values: {', '.join(MODELS)}")
    torch.manual_seed(SEED)
    denoiser, cond_kind, scheduler_config = MODELS[model]()
    denoiser = denoiser.to(device=device, dtype=dtype).eval()
    denoiser.requires_grad_(wrt == "all")
    generator = torch.Generator().manual_seed(SEED + 1)
    x_T = torch.randn(batch, *denoiser.sample_shape, generator=generator).to(device, dtype)
    target = torch.randn(batch, *_output_shape(denoiser), generator=generator).to(device, dtype)
    cond: Tensor | None = None
    if cond_kind == "text":  # CLIP ViT-L/14 text embeddings, (B, 77, 768)
        cond = torch.randn(batch, 77, 768, generator=generator).to(device, dtype)
    elif isinstance(cond_kind, int):  # class labels 0, 1, ... (B,)
        cond = (torch.arange(batch) % cond_kind).to(device)
    return Setup(denoiser, x_T, cond, target, scheduler_config)


def _output_shape(denoiser: DenoiserAdapter) -> tuple[int, ...]:
    """(C, H, W) of ``denoiser.decode(x₀)``: the latent itself, or the VAE's image (8× per side for SD)."""
    if denoiser.vae is None:
        return denoiser.sample_shape
    factor = 2 ** (len(denoiser.vae.config.block_out_channels) - 1)
    return (denoiser.vae.config.out_channels, *(factor * side for side in denoiser.sample_shape[1:]))


def parse_label(label: str) -> tuple[GradientPolicy, Precision | None]:
    """``policy[@dtype[+copy][+cl][+compile][+emulated]]`` -> (policy, precision of the no-grad calls).

    ``dtype`` is one of fp32, bf16, fp16; ``copy`` a low-precision weight copy instead of autocast,
    ``cl`` channels_last inputs, ``compile`` torch.compile, ``emulated`` allow_emulated.
    """
    base, _, suffix = label.partition("@")
    policy = policy_for(base)  # a preset or any policy string; one-line error for an unknown one
    if not suffix:
        return policy, None
    if policy.name in BASELINE_NAMES:
        raise ValueError(f"policy {base!r} (in {label!r}) runs its own solver: a precision suffix applies to the "
                         "sampler's policies (none, sdo, full, checkpoint, last_k, random_truncation)")
    dtype, *flags = suffix.split("+")
    if dtype not in PRECISION_NAMES or not set(flags) <= set(PRECISION_FLAGS):
        raise ValueError(f"precision suffix {suffix!r} (in {label!r}) is not dtype[+flag...] with dtype from "
                         f"{', '.join(PRECISION_NAMES)} and flags from {', '.join(PRECISION_FLAGS)}")
    return policy, Precision(dtype=dtype, cast="copy" if "copy" in flags else "autocast",  # type: ignore[arg-type]
                                     channels_last="cl" in flags, compile="compile" in flags,
                                     allow_emulated="emulated" in flags)


def label_gradient(setup: Setup, steps: int, label: str, policy_seed: int = 0) -> Tensor | None:
    """:func:`one_gradient` of a policy label, precision suffix included."""
    policy, precision = parse_label(label)
    return one_gradient(setup, steps, policy, policy_seed, precision=precision)


def one_gradient(setup: Setup, steps: int, policy: GradientPolicy, policy_seed: int = 0,
                 precision: Precision | None = None) -> Tensor | None:
    """Sample with ``policy`` and return d loss / d x_T (zeros where no gradient reaches x_T).

    Returns None for ``none`` (plain sampling under no_grad). Parameter gradients, when the network is
    trainable, are computed and discarded: they are part of the cost being measured.
    """
    scheduler = build_scheduler("ddim", steps, setup.scheduler_config)
    if policy.name == "none":
        with torch.no_grad():
            setup.denoiser.decode(sample(setup.denoiser, scheduler, setup.x_T, setup.cond, policy=policy,
                                         precision=precision).sample)
        return None
    x_T = setup.x_T.detach().requires_grad_()
    out = sample(setup.denoiser, scheduler, x_T, setup.cond, policy=policy,
                 policy_generator=torch.Generator().manual_seed(policy_seed), precision=precision)
    loss = (setup.denoiser.decode(out.sample) - setup.target).square().mean()
    params = [p for p in setup.denoiser.parameters() if p.requires_grad]
    if not loss.requires_grad:  # truncation with a frozen network: nothing reaches x_T or any weight
        return torch.zeros_like(x_T)
    grads = torch.autograd.grad(loss, [x_T, *params], allow_unused=True)
    return torch.zeros_like(x_T) if grads[0] is None else grads[0]


def exact_gradient(setup: Setup, steps: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The exact d loss / d x_T: ``full`` backprop in ``dtype`` (``checkpoint`` if ``full`` does not fit)."""
    exact = copy.copy(setup)  # float64: a converted deep copy; float32: the network itself, frozen for the call
    trainable = [p for p in setup.denoiser.parameters() if p.requires_grad]
    exact.denoiser = copy.deepcopy(setup.denoiser).to(dtype) if dtype != setup.x_T.dtype else setup.denoiser
    exact.denoiser.requires_grad_(False)
    exact.x_T, exact.target = setup.x_T.to(dtype), setup.target.to(dtype)
    exact.cond = setup.cond.to(dtype) if setup.cond is not None and setup.cond.is_floating_point() else setup.cond
    try:
        return _exact_full_or_checkpoint(exact, steps).to(setup.x_T.dtype)
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _exact_full_or_checkpoint(exact: Setup, steps: int) -> Tensor:
    try:
        grad = one_gradient(exact, steps, POLICIES["full"])
    except torch.OutOfMemoryError:
        _release_memory(exact.x_T.device)
        grad = one_gradient(exact, steps, POLICIES["checkpoint"])
    assert grad is not None
    return grad


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two flattened gradients; 0 when either is all zeros (no gradient at all)."""
    a, b = a.double().flatten(), b.double().flatten()
    denom = a.norm() * b.norm()
    return 0.0 if denom == 0 else float(a @ b / denom)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed_gradient(setup: Setup, steps: int, label: str,
                   policy_seed: int) -> tuple[float, float | None, int | None, Tensor | None]:
    """(wall seconds, CPU seconds of this process or None on CUDA, CUDA peak bytes above the baseline or
    None on CPU, gradient) of one call."""
    device = setup.x_T.device
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    grad = label_gradient(setup, steps, label, policy_seed)
    _sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = torch.cuda.max_memory_allocated(device) - baseline if device.type == "cuda" else None
    return seconds, (cpu_seconds if device.type == "cpu" else None), peak, grad


# ---------------------------------------------------------------- CPU memory: a fresh process per case
def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS: resident now, VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}; peak RSS needs Linux")


def peak_rss_worker(model: str, steps: int, label: str, batch: int, wrt: str, threads: int) -> int:
    """Run in a fresh process: bytes of peak RSS above the RSS just before one gradient of the case."""
    fix_malloc_thresholds()
    torch.set_num_threads(threads)
    setup = build_setup(model, "cpu", batch, wrt)
    one_gradient(setup, 1, POLICIES["full"])  # warm-up: lazy kernels and thread pools of forward/backward
    gc.collect()
    baseline = status_kib("VmRSS")
    reset_peak_rss()
    label_gradient(setup, steps, label)
    return (status_kib("VmHWM") - baseline) * 1024


def reset_peak_rss() -> None:
    """Reset VmHWM (peak RSS) to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def fix_malloc_thresholds() -> None:
    """Make RSS follow live tensors, for peak-RSS measurements in a fresh process."""
    # Fixed mmap threshold (disables glibc's dynamic one): every block over 8 KiB, latent-sized tensors
    # included, is its own mapping, returned to the OS when freed. Then RSS follows live tensors: the
    # baseline keeps no blocks from the warm-up, and freed latents cannot leave a heap fragmented by the
    # small long-lived autograd objects in between (at 64 KiB that alone made SDO's peak grow ~15 KiB a step).
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 8 * 1024)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def cpu_peaks(model: str, steps: int, labels: Sequence[str], batch: int, wrt: str, threads: int,
              pool: ProcessPoolExecutor) -> dict[str, int]:
    """Peak RSS of each case, each in its own fresh process."""
    futures = {label: pool.submit(peak_rss_worker, model, steps, label, batch, wrt, threads) for label in labels}
    return {label: future.result() for label, future in futures.items()}


def fresh_process_pool() -> ProcessPoolExecutor:
    """One process per task, forked from a server that imported torch/diffusers but never computed
    (so OpenMP is fork-safe and no tensors are inherited); saves ~10 s of imports per case (diffusers
    imports its model classes lazily, so they are imported at the top of this module)."""
    context = mp.get_context("forkserver")
    # Preload by importable name: Python 3.11's forkserver silently skips a "__main__" preload.
    context.set_forkserver_preload(["benchmarks.gradient_cost"])  # torch, the diffusers models, lit_sdo
    return ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1)


# ---------------------------------------------------------------- the benchmark
def run_benchmark(model: str, device: str, steps: Sequence[int], labels: Sequence[str], repeats: int,
                  batch: int, wrt: str, threads: int, log: Callable[[str], None] = print,
                  exact: bool = True, exact_dtype: str = "float64") -> list[dict[str, Any]]:
    """Measure every (policy, N) case; returns one record per case (``RECORD_KEYS`` + model, device).

    ``exact=False`` skips the exact reference gradient (``grad_cosine`` None), ``exact_dtype`` is its
    dtype (``float64``; ``float32`` where a float64 copy of the network does not fit).
    """
    setup = build_setup(model, device, batch, wrt)
    dev = setup.x_T.device
    records = []
    pool = fresh_process_pool() if dev.type == "cpu" else None
    try:
        warmup: dict[str, float] = {}
        for label in labels:  # warm-up at the first N: lazy kernels, thread pools, allocator caches, compile
            start = time.perf_counter()
            label_gradient(setup, steps[0], label)
            warmup[label] = time.perf_counter() - start
            log(f"warm-up {label}: {warmup[label]:.1f} s (includes torch.compile where asked)")
        for n in steps:
            started = time.perf_counter()
            reference = exact_gradient(setup, n, getattr(torch, exact_dtype)) if exact else None
            fp32_sdo = fp32_sdo_gradients(setup, n, labels)
            _release_memory(dev)
            seconds: dict[str, list[float]] = {label: [] for label in labels}
            cpu_seconds: dict[str, list[float]] = {label: [] for label in labels}
            peaks: dict[str, int | None] = {}
            grads: dict[str, Tensor | None] = {}
            failed: set[str] = set()
            for r in range(repeats):  # round-robin, rotated, so background load hits every policy alike
                ok = [label for label in labels if label not in failed]
                for label in ok[r % len(ok):] + ok[: r % len(ok)]:
                    try:
                        sec, cpu, peak, grad = timed_gradient(setup, n, label, policy_seed=r)
                    except torch.OutOfMemoryError:
                        failed.add(label)
                        _release_memory(dev)
                        continue
                    seconds[label].append(sec)
                    if cpu is not None:
                        cpu_seconds[label].append(cpu)
                    if r == 0:  # the gradient compared with the exact one; CUDA peak of the first call
                        grads[label], peaks[label] = grad, peak
            ok = [label for label in labels if label not in failed]
            timed = time.perf_counter()
            if pool is not None:
                peaks = cpu_peaks(model, n, ok, batch, wrt, threads, pool)
            base = statistics.median(seconds["none"]) if seconds.get("none") else None
            for label in labels:
                sec = statistics.median(seconds[label]) if seconds[label] else None
                grad = grads.get(label)
                sdo_ref = fp32_sdo.get(label.partition("@")[0]) if "@" in label else None
                records.append({
                    "policy": label, "steps": n, "seconds": sec, "peak_mem_bytes": peaks.get(label),
                    "cpu_seconds": statistics.median(cpu_seconds[label]) if cpu_seconds[label] else None,
                    "ratio_to_sampling": sec / base if sec is not None and base else None,
                    "grad_cosine": cosine(grad, reference) if grad is not None and reference is not None else None,
                    "grad_cosine_to_fp32_sdo": cosine(grad, sdo_ref) if grad is not None and sdo_ref is not None
                    else None,
                    "warmup_seconds": warmup.get(label), "model": model, "device": str(dev),
                })
            log(f"N={n}: {time.perf_counter() - started:.1f} s ({timed - started:.1f} s exact gradient + timing)")
    finally:
        if pool is not None:
            pool.shutdown()
    return records


def fp32_sdo_gradients(setup: Setup, steps: int, labels: Sequence[str]) -> dict[str, Tensor]:
    """The float32 gradient of each SDO base policy that some label runs at another precision
    (policy seed 0, as the compared first repeat), keyed by the base label (``sdo``, ``sdo-random``)."""
    bases = {label.partition("@")[0] for label in labels if "@" in label}
    refs = {}
    for base in sorted(bases):
        if policy_for(base).name == "sdo":
            grad = one_gradient(setup, steps, policy_for(base), policy_seed=0)
            assert grad is not None
            refs[base] = grad
    return refs


# ---------------------------------------------------------------- reporting
def _get(records: list[dict[str, Any]], policy: str, steps: int, key: str) -> float | None:
    for rec in records:
        if rec["policy"] == policy and rec["steps"] == steps:
            return rec[key]
    return None


def fmt_or_dash(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or an em dash for a figure that was not measured."""
    return "—" if value is None else format(value, spec)


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per case, N grouped."""
    lines = ["| policy | N | seconds | × sampling | peak mem (MiB) | grad cosine | cosine to fp32 SDO |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    for rec in records:
        mem = None if rec["peak_mem_bytes"] is None else rec["peak_mem_bytes"] / 2**20
        lines.append(f"| {rec['policy']} | {rec['steps']} | {fmt_or_dash(rec['seconds'], '.3f')} | "
                     f"{fmt_or_dash(rec['ratio_to_sampling'], '.2f')} | {fmt_or_dash(mem, '.1f')} | "
                     f"{fmt_or_dash(rec['grad_cosine'], '.4f')} | "
                     f"{fmt_or_dash(rec.get('grad_cosine_to_fp32_sdo'), '.4f')} |")
    return "\n".join(lines)


def check_targets(records: list[dict[str, Any]]) -> list[str]:
    """PASS/FAIL/SKIP line per target (SKIP when a needed case was not run)."""
    lines = []

    def verdict(name: str, value: float | None, ok: Callable[[float], bool], shown: str) -> None:
        status = "SKIP" if value is None else ("PASS" if ok(value) else "FAIL")
        lines.append(f"{status}  {name}: {shown.format(value) if value is not None else 'case not run'}")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    t = lambda p, n: _get(records, p, n, "seconds")  # noqa: E731
    m = lambda p, n: _get(records, p, n, "peak_mem_bytes")  # noqa: E731
    verdict("sdo (k=0) time at N=50 <= 1.10x plain sampling", ratio(t("sdo", 50), t("none", 50)),
            lambda v: v <= 1.10, "{:.3f}x")
    verdict("sdo (k=random) time at N=50 <= 1.10x plain sampling", ratio(t("sdo-random", 50), t("none", 50)),
            lambda v: v <= 1.10, "{:.3f}x")
    verdict("full time at N=50 >= 2.5x sdo", ratio(t("full", 50), t("sdo", 50)), lambda v: v >= 2.5, "{:.2f}x")
    verdict("checkpoint time at N=50 >= 3.5x sdo", ratio(t("checkpoint", 50), t("sdo", 50)),
            lambda v: v >= 3.5, "{:.2f}x")
    verdict("full peak memory at N=50 >= 10x sdo", ratio(m("full", 50), m("sdo", 50)), lambda v: v >= 10, "{:.1f}x")
    verdict("sdo peak memory at N=100 <= 1.10x N=10", ratio(m("sdo", 100), m("sdo", 10)),
            lambda v: v <= 1.10, "{:.3f}x")
    points = [(r["steps"], r["peak_mem_bytes"]) for r in records if r["policy"] == "full" and r["peak_mem_bytes"]]
    r2 = _linear_r2(points) if len(points) >= 3 else None
    slope = _slope(points) if len(points) >= 3 else 0.0
    verdict("full peak memory grows linearly in N (R^2 of a line >= 0.99)", r2, lambda v: v >= 0.99,
            "R^2 = {:.4f}, " + f"{slope / 2**20:.2f} MiB per step")
    return lines


def check_precision_targets(records: list[dict[str, Any]]) -> list[str]:
    """PASS/FAIL line per SDO label with a precision suffix: time at N=50 <= 0.75x float32 plain
    sampling (``none``) and cosine >= 0.99 to the float32 SDO gradient."""
    lines = []
    for rec in records:
        if rec["steps"] != 50 or not rec["policy"].startswith("sdo") or "@" not in rec["policy"]:
            continue
        base, cos = _get(records, "none", 50, "seconds"), rec["grad_cosine_to_fp32_sdo"]
        if rec["seconds"] is None or not base or cos is None:
            lines.append(f"SKIP  {rec['policy']} at N=50: case not run")
            continue
        ratio = rec["seconds"] / base
        status = "PASS" if ratio <= 0.75 and cos >= 0.99 else "FAIL"
        lines.append(f"{status}  {rec['policy']} at N=50 <= 0.75x fp32 plain sampling with cosine >= 0.99 to "
                     f"fp32 SDO: {ratio:.3f}x, cosine {cos:.4f}")
    return lines


def _slope(points: list[tuple[float, float]]) -> float:
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def _linear_r2(points: list[tuple[float, float]]) -> float:
    slope = _slope(points)
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in points)
    total = sum((y - my) ** 2 for _, y in points)
    return 1.0 - residual / total if total > 0 else math.nan


# ---------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="small-unet", help=f"network: {', '.join(MODELS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="comma-separated N values")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"comma-separated; presets {', '.join(POLICIES)} or any policy string "
                             "(adjoint, doodl, sdo-tail=4, adjoint-solver=rk4-substeps=2, doodl-mixing=0.9; "
                             "adjoint and doodl keep every level's state, N latents: the flat-memory checks read "
                             "adjoint-states=ends and doodl-states=ends), each "
                             "optionally with a precision of its no-grad calls: @dtype[+copy][+cl][+compile]"
                             "[+emulated], e.g. sdo@bf16, none@bf16")
    parser.add_argument("--exact-dtype", choices=("float64", "float32"), default="float64",
                        help="dtype of the exact gradient; float64 copies the network (sd15-unet on CPU: float32)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per case (median), after one warm-up per policy at the first N")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 2 small-unet, else 1)")
    parser.add_argument("--wrt", choices=("all", "latent"), default="all",
                        help="differentiate w.r.t. x_T and the weights (all) or x_T only, weights frozen (latent)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; 1 by default: OpenMP spin-waits make 2 threads on shared cores ~10x slower")
    parser.add_argument("--json", type=Path, default=None, help="write one record per case here (atomic)")
    parser.add_argument("--exact", action=argparse.BooleanOptionalAction, default=True,
                        help="compute the float64 exact gradient for grad_cosine (--no-exact for big models on CPU)")
    parser.add_argument("--frontier", action="store_true",
                        help="also plot cosine against seconds per gradient for every policy (a PNG, see --out)")
    parser.add_argument("--out", type=Path, default=Path("runs/gradient_frontier.png"),
                        help="where --frontier writes its PNG")
    parser.add_argument("--one-pass", action="store_true",
                        help="CPU, big networks: each case once in a fresh process (1-step warm-up, then wall s, CPU "
                             "s, peak RSS of the one run; exact reference = this run's float32 full or checkpoint "
                             "gradient; cases predicted not to fit are skipped), see benchmarks/one_pass.py")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: print the report (table, checks, ratios) of the records in this JSON")
    parser.add_argument("--mem-budget-gib", type=float, default=None,
                        help="--one-pass: skip cases whose predicted peak exceeds this (default: MemAvailable - 4 GiB)")
    args = parser.parse_args(argv)
    if args.model not in MODELS:
        parser.error(f"--model {args.model!r} is unknown; allowed values: {', '.join(MODELS)}")
    try:
        args.steps = [int(s) for s in args.steps.split(",") if s]
    except ValueError:
        parser.error(f"--steps {args.steps!r} must be comma-separated integers, e.g. 10,25,50,100")
    if not args.steps or min(args.steps) < 1:
        parser.error("--steps needs at least one N >= 1")
    args.policies = [p for p in args.policies.split(",") if p]
    for label in args.policies:
        try:
            policy = parse_label(label)[0]
        except ValueError as err:
            parser.error(f"--policies: {err}")
        graph_steps = policy.tail if policy.name == "sdo" else policy.last_k if policy.name == "last_k" else 0
        if graph_steps > min(args.steps):
            parser.error(f"--policies {label!r} keeps the graph of {graph_steps} final steps, more than the "
                         f"smallest --steps {min(args.steps)}; allowed: at most {min(args.steps)}")
    # plain sampling is the time reference; it is always measured (first, so the table reads top-down)
    args.policies = ["none"] + [p for p in args.policies if p != "none"]
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    args.batch = args.batch or DEFAULT_BATCH[args.model]
    if args.one_pass and args.device != "cpu":
        parser.error(f"--one-pass measures peak RSS and CPU seconds of a CPU process; --device {args.device!r} "
                     "is not allowed with it (use --device cpu)")
    if args.mem_budget_gib is not None and (not args.one_pass or args.mem_budget_gib <= 0):
        parser.error(f"--mem-budget-gib {args.mem_budget_gib} needs --one-pass and a value > 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.from_json is not None:  # report only: the records of an earlier run
        records = json.loads(args.from_json.read_text())
        print_report(records, records[0]["model"] if records else args.model, args.frontier, args.out)
        return records
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"gradient cost: model={args.model} device={args.device} batch={args.batch} wrt={args.wrt} "
        f"threads={args.threads} repeats={args.repeats} steps={args.steps}")
    if args.one_pass:
        from benchmarks.one_pass import run_one_pass

        log("one pass per case; exact reference: this run's float32 full gradient, else checkpoint's")
        budget = None if args.mem_budget_gib is None else int(args.mem_budget_gib * 2**30)
        records = run_one_pass(args.model, args.steps, args.policies, args.batch, args.wrt, args.threads, log,
                               mem_budget_bytes=budget, json_path=args.json)
    else:
        if not args.exact or args.exact_dtype != "float64":
            log("exact reference: " + (f"{args.exact_dtype} full backprop" if args.exact
                                       else "skipped (--no-exact); grad_cosine is not measured"))
        records = run_benchmark(args.model, args.device, args.steps, args.policies, args.repeats, args.batch,
                                args.wrt, args.threads, log, exact=args.exact, exact_dtype=args.exact_dtype)
    title = f"{args.model}, batch {args.batch}, DDIM, wrt {args.wrt}: fidelity against cost"
    print_report(records, args.model, args.frontier, args.out, title)
    if args.json is not None:
        write_json(args.json, records)
    return records


def print_report(records: list[dict[str, Any]], model: str, frontier: bool = False, out: Path | None = None,
                 title: str | None = None) -> None:
    """The table, the PASS/FAIL lines, Table 3's ratios and the tail frontier of a run's records."""
    if any("skipped" in rec for rec in records):  # the one-pass mode's records
        from benchmarks.one_pass import one_pass_table

        print(one_pass_table(records))
    else:
        print(markdown_table(records))
    print()
    print("\n".join(check_targets(records) + baseline_targets(records) + check_precision_targets(records)))
    # Table 3's rows are the baselines as the paper ran them (the defaults: every level's state kept, N latents);
    # their memory flat in N is checked above on the -states=ends labels
    if any(rec["policy"] in ("adjoint", "doodl") for rec in records):
        print("\n" + "\n".join(paper_ratio_lines(records, model)))
    print("\n".join(tail_frontier_lines(records)))
    if frontier and out is not None:
        print(f"frontier plot: {plot_frontier(records, out, title or model)}", file=sys.stderr)


if __name__ == "__main__":
    main()
