"""What the benchmark scripts share: the networks they time, one gradient measurement, peak memory of a fresh
process, the records' format and the helpers that turn records into tables and PASS/FAIL lines. It imports only the
library, never another benchmark script, so every script can import it and none imports another's internals."""

from __future__ import annotations

import ctypes
import gc
import math
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import UNet2DModel
from torch import Tensor

from lit_sdo.io import atomic_path
from lit_sdo.models import load_diffusion
from lit_sdo.models.sampler import Sampler
from lit_sdo.models.standins import LINEAR_BETAS, SD_BETAS, ddpm_256_unet, dit_xl_2, sd15_unet, sd_vae
from lit_sdo.sampling import (
    DenoiserAdapter,
    GradientPolicy,
    LatentUNetDenoiser,
    PixelUNetDenoiser,
    TransformerDenoiser,
    as_policy,
    build_scheduler,
    parse_policy,
    sample,
)
from lit_sdo.sampling.policies import BASELINE_NAMES
from lit_sdo.sampling.precision import PRECISION_NAMES, Precision

SEED = 0
T = TypeVar("T")


# ---------------------------------------------------------------- networks at the paper's shapes (random weights)
def small_unet() -> UNet2DModel:
    """Pixel UNet2DModel, 3×32×32, 10 classes: one forward is ~10 ms on one core and its saved activations
    (~4 MB a call per sample) are ~6× its weights, so memory ratios reflect activations."""
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=10)


def digits_ddpm() -> tuple[DenoiserAdapter, int | str | None, dict[str, Any]]:
    """The shipped embedded:digits-ddpm (trained weights, 1×16×16, 10 classes): the attack's generator."""
    model = load_diffusion("embedded:digits-ddpm")
    return model.denoiser, model.num_classes, dict(model.scheduler_config)


# A model returns (adapter, condition kind, scheduler config); the condition kind is a number of classes (class
# labels), "text" (CLIP-L text embeddings, 77×768) or None (unconditional). ``sd15-unet``'s loss is on the latent
# x₀ (no VAE decode); ``sd15``'s on the decoded 3×512×512 image, as in Table 3's latent row.
MODELS: dict[str, Callable[[], tuple[DenoiserAdapter, int | str | None, dict[str, Any]]]] = {
    "small-unet": lambda: (PixelUNetDenoiser(small_unet()), 10, LINEAR_BETAS),
    "digits-ddpm": digits_ddpm,
    "sd15-unet": lambda: (LatentUNetDenoiser(sd15_unet(), vae=None), "text", SD_BETAS),
    "sd15": lambda: (LatentUNetDenoiser(sd15_unet(), vae=sd_vae()), "text", SD_BETAS),
    "ddpm-256": lambda: (PixelUNetDenoiser(ddpm_256_unet()), None, LINEAR_BETAS),
    "dit-xl-2": lambda: (TransformerDenoiser(dit_xl_2()), 1000, LINEAR_BETAS),
}
DEFAULT_BATCH = {"small-unet": 2, "digits-ddpm": 30, "sd15-unet": 1, "sd15": 1, "ddpm-256": 1, "dit-xl-2": 1}


@dataclass
class Setup:
    """A random-initialised network behind its adapter, with a seeded x_T, condition and loss target."""

    denoiser: DenoiserAdapter
    x_T: Tensor  # (B, C, H, W)
    cond: Tensor | None  # class labels (B,) or text embeddings (B, 77, 768)
    target: Tensor  # (B, C, H, W): the loss is mean((x₀ - target)²)
    scheduler_config: dict[str, Any]


def build_setup(model: str, device: str, batch: int, wrt: str, dtype: torch.dtype = torch.float32) -> Setup:
    """Seeded network (identical in every process), x_T, condition and target on ``device``; ``wrt="all"`` makes
    the weights trainable too (their gradients are part of the measured cost), ``"latent"`` freezes them."""
    if model not in MODELS:
        raise ValueError(f"--model {model!r} is unknown; allowed values: {', '.join(MODELS)}")
    torch.manual_seed(SEED)
    denoiser, cond_kind, scheduler_config = MODELS[model]()
    denoiser = denoiser.to(device=device, dtype=dtype).eval()
    denoiser.requires_grad_(wrt == "all")
    generator = torch.Generator().manual_seed(SEED + 1)
    x_T = torch.randn(batch, *denoiser.sample_shape, generator=generator).to(device, dtype)
    target = torch.randn(batch, *output_shape(denoiser), generator=generator).to(device, dtype)
    cond: Tensor | None = None
    if cond_kind == "text":  # CLIP ViT-L/14 text embeddings, (B, 77, 768)
        cond = torch.randn(batch, 77, 768, generator=generator).to(device, dtype)
    elif isinstance(cond_kind, int):  # class labels 0, 1, ... (B,)
        cond = (torch.arange(batch) % cond_kind).to(device)
    return Setup(denoiser, x_T, cond, target, scheduler_config)


def output_shape(denoiser: DenoiserAdapter) -> tuple[int, ...]:
    """(C, H, W) of ``denoiser.decode(x₀)``: the latent itself, or the VAE's image (8× per side for SD)."""
    if denoiser.vae is None:
        return denoiser.sample_shape
    factor = 2 ** (len(denoiser.vae.config.block_out_channels) - 1)
    return (denoiser.vae.config.out_channels, *(factor * side for side in denoiser.sample_shape[1:]))


# ---------------------------------------------------------------- policy labels: policy[@precision]
# The default labels; any other label is a policy string too (sdo-tail=4, adjoint, ...).
POLICIES: dict[str, GradientPolicy] = {label: parse_policy(label) for label in (
    "none", "sdo", "sdo-random", "full", "checkpoint", "last_k=1", "random_truncation")}
PRECISION_FLAGS = {"copy": "cast='copy'", "cl": "channels_last", "compile": "torch.compile",
                   "emulated": "allow_emulated (bf16 on a CPU without bf16 kernels)"}


def policy_for(label: str) -> GradientPolicy:
    """The policy a label names: a preset above, else its string form (one-line error for an unknown one)."""
    return POLICIES[label] if label in POLICIES else as_policy(label)


def parse_label(label: str) -> tuple[GradientPolicy, Precision | None]:
    """``policy[@dtype[+flag...]]`` -> (policy, precision of the no-grad calls); ``dtype`` is fp32, bf16 or fp16,
    each flag one of :data:`PRECISION_FLAGS` (``copy``: a low-precision weight copy instead of autocast)."""
    base, _, suffix = label.partition("@")
    policy = policy_for(base)
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


# ---------------------------------------------------------------- one gradient
def input_gradient(loss_fn: Callable[[Tensor], Tensor], x: Tensor, params: Sequence[Tensor] = ()) -> Tensor:
    """d loss_fn(x) / d x, zeros where nothing reaches x (a truncated graph). The gradients of ``params`` are
    computed and dropped: part of the cost a benchmark measures, not of what it compares."""
    x = x.detach().requires_grad_()
    loss = loss_fn(x)
    if not loss.requires_grad:  # truncation with a frozen network: nothing reaches x or any weight
        return torch.zeros_like(x)
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    return torch.zeros_like(x) if grads[0] is None else grads[0]


def one_gradient(setup: Setup, steps: int, policy: GradientPolicy, policy_seed: int = 0,
                 precision: Precision | None = None) -> Tensor | None:
    """Sample N DDIM steps with ``policy`` and return d loss / d x_T; None for ``none`` (plain sampling under
    no_grad). The loss is on the unclamped decode: a random network's x₀ is far outside [-1, 1], where
    clamping to the image range would zero its gradient."""
    scheduler = build_scheduler("ddim", steps, setup.scheduler_config)

    def decoded(x_T: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return setup.denoiser.decode(sample(setup.denoiser, scheduler, x_T, setup.cond, policy=policy,
                                            policy_generator=generator, precision=precision).sample)

    if policy.name == "none":
        with torch.no_grad():
            decoded(setup.x_T)
        return None
    params = [p for p in setup.denoiser.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(policy_seed)
    return input_gradient(lambda x_T: (decoded(x_T, generator) - setup.target).square().mean(), setup.x_T, params)


def label_gradient(setup: Setup, steps: int, label: str, policy_seed: int = 0) -> Tensor | None:
    """:func:`one_gradient` of a policy label, precision suffix included."""
    policy, precision = parse_label(label)
    return one_gradient(setup, steps, policy, policy_seed, precision=precision)


def cosine(a: Tensor | None, b: Tensor | None) -> float | None:
    """Cosine similarity of two flattened gradients; 0 when either is all zeros, None when either is missing."""
    if a is None or b is None:
        return None
    a, b = a.double().flatten(), b.double().flatten()
    denom = a.norm() * b.norm()
    return 0.0 if denom == 0 else float(a @ b / denom)


# ---------------------------------------------------------------- CPU memory: a fresh process per case
STATUS = "/proc/self/status"


def proc_kib(path: str, field: str) -> int:
    """A field of a /proc file in KiB: ``/proc/self/status`` VmRSS (resident now) and VmHWM (peak since the last
    reset), ``/proc/meminfo`` MemAvailable (what can be allocated without swapping)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{path} has no {field}; this measurement needs Linux")


def mem_available_bytes() -> int:
    return proc_kib("/proc/meminfo", "MemAvailable") * 1024


def fix_malloc_thresholds() -> None:
    """Make RSS follow live tensors, for peak-RSS measurements in a fresh process."""
    # Fixed mmap threshold (disables glibc's dynamic one): every block over 8 KiB, latent-sized tensors
    # included, is its own mapping, returned to the OS when freed. Then RSS follows live tensors: the
    # baseline keeps no blocks from the warm-up, and freed latents cannot leave a heap fragmented by the
    # small long-lived autograd objects in between (at 64 KiB that alone made SDO's peak grow ~15 KiB a step).
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 8 * 1024)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def measure(call: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, dict[str, Any]]:
    """``call()`` and what it cost: wall ``seconds``, ``cpu_seconds`` of this process (all threads; None on CUDA)
    and ``peak_mem_bytes`` above the start: CUDA's allocator peak, or on a CPU the peak RSS, which follows the
    call's tensors only in a fresh process with :func:`fix_malloc_thresholds` (elsewhere: ignore it)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = proc_kib(STATUS, "VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM (peak RSS) := RSS now
    start, cpu_start = time.perf_counter(), time.process_time()
    out = call()
    if cuda:
        torch.cuda.synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = torch.cuda.max_memory_allocated(device) - baseline if cuda else (proc_kib(STATUS, "VmHWM") - baseline) * 1024
    return out, {"seconds": seconds, "cpu_seconds": None if cuda else cpu_seconds, "peak_mem_bytes": peak}


@dataclass(frozen=True)
class Workload:
    """What every case of a gradient-cost run shares: the network, batch, what is differentiated, CPU threads."""

    model: str
    batch: int
    wrt: str
    threads: int


HEADROOM_BYTES = 4 * 2**30  # kept free for the other processes on the machine


def graph_calls(policy: GradientPolicy, steps: int) -> int:
    """Model calls of an N-step run that keep their graph at once (an upper bound for random choices)."""
    if policy.name in ("full", "random_truncation"):  # random_truncation: K can be N
        return steps
    if policy.name == "last_k":
        return min(policy.last_k, steps)
    if policy.name == "sdo":
        return min(1 + policy.tail, steps)  # step k and the last ``tail`` calls (k may be among them)
    # none, checkpoint (one call recomputed at a time), adjoint, doodl: one call's graph at a time; the baselines'
    # defaults also keep every level's state (adjoint N + 1 latents, doodl 2N), not graphs: flat only with states=ends
    return 1


def predicted_peak(calls: int, one_call_peak: int, mem_budget_bytes: float | None, source: str = "",
                   note: str = "") -> dict[str, Any]:
    """The predicted peak of ``calls`` graph calls, the budget (None: MemAvailable minus the headroom; math.inf:
    none), and ``skipped`` (why) when it does not fit. An upper bound: each graph call is charged the whole 1-step
    peak, which also holds the VAE decode's graph once."""
    budget = mem_available_bytes() - HEADROOM_BYTES if mem_budget_bytes is None else mem_budget_bytes
    out: dict[str, Any] = {"predicted_peak_bytes": one_call_peak * calls, "mem_budget_bytes": budget}
    if calls > 1 and one_call_peak * calls > budget:  # one graph call: the warm-up has just run it
        out["skipped"] = (f"predicted peak {one_call_peak * calls / 2**30:.2f} GiB ({calls} graph calls x the 1-step "
                          f"peak {one_call_peak / 2**30:.2f} GiB{source}) > budget {budget / 2**30:.2f} GiB{note}")
    return out


def fresh_process_case(work: Workload, steps: int, label: str, mem_budget_bytes: float | None) -> dict[str, Any]:
    """Run in a fresh process: a 1-step warm-up of the same label (lazy kernels, thread pools), its peak RSS as the
    prediction of the case's peak (:func:`predicted_peak`), then the one measured gradient unless it cannot fit.
    Returns :func:`measure`'s figures, ``warmup_seconds``, ``warmup_peak_bytes``, the prediction and ``grad``
    (d loss / d x_T as a NumPy array; None for ``none``), or ``skipped`` with the reason."""
    fix_malloc_thresholds()
    torch.set_num_threads(work.threads)
    policy, precision = parse_label(label)
    setup = build_setup(work.model, "cpu", work.batch, work.wrt)
    gc.collect()
    one_step = replace(policy, tail=min(policy.tail, 1), last_k=1)  # a longer tail or last_k is cut to one step
    warmup = measure(lambda: one_gradient(setup, 1, one_step, precision=precision))[1]
    gc.collect()
    out = {"warmup_seconds": warmup["seconds"], "warmup_peak_bytes": warmup["peak_mem_bytes"],
           **predicted_peak(graph_calls(policy, steps), warmup["peak_mem_bytes"], mem_budget_bytes)}
    if out.get("skipped"):
        return out
    grad, cost = measure(lambda: one_gradient(setup, steps, policy, precision=precision))
    # a NumPy copy: a pickled tensor would travel in shared memory, gone once this process exits
    return out | cost | {"grad": None if grad is None else grad.detach().numpy().copy()}


def fresh_process_pool() -> ProcessPoolExecutor:
    """One process per task, forked from a server that imported torch/diffusers but never computed (so OpenMP
    is fork-safe and no tensors are inherited); saves ~10 s of imports per case."""
    context = mp.get_context("forkserver")
    # Preload by importable name: Python 3.11's forkserver silently skips a "__main__" preload.
    context.set_forkserver_preload(["benchmarks.common"])  # torch, the diffusers models, lit_sdo
    return ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1)


def sample_images(sampler: Sampler, noise: Tensor, labels: Tensor, batch_size: int) -> tuple[Tensor, float]:
    """Plain float32 samples in [0, 1] (:meth:`Sampler.evaluate`) from ``noise`` with class ``labels``, in batches
    of ``batch_size``, and the seconds it took."""
    start = time.perf_counter()
    images = [sampler.evaluate(noise[i:i + batch_size], sampler.condition(labels[i:i + batch_size]))
              for i in range(0, len(noise), batch_size)]
    return torch.cat(images), time.perf_counter() - start


def machine() -> str:
    """The CPU a figure ran on and the load it ran under: lscpu's model name, torch's CPU capability, the
    1/5/15-minute load averages (a figure taken above 2.5 on 2 cores is to be rerun)."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, torch {torch.backends.cpu.get_cpu_capability()}; load average {load}"


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- records and the lines made of them
Records = list[dict[str, Any]]
# One record per (policy, N) case, in the JSON of gradient_cost.py (both modes) and read by its reports.
RECORD_KEYS = ("policy", "steps", "seconds", "cpu_seconds", "peak_mem_bytes", "ratio_to_sampling", "grad_cosine",
               "grad_cosine_to_fp32_sdo", "warmup_seconds")


def case_record(label: str, steps: int, measured: dict[str, Any], sampling: dict[str, Any],
                reference: Tensor | None, fp32_sdo: Tensor | None, **extra: Any) -> dict[str, Any]:
    """A case's record: ``measured`` (seconds, cpu_seconds, peak_mem_bytes, warmup_seconds, grad) against plain
    sampling's measurements and the reference gradients (None: not measured), with ``extra`` keys appended."""
    grad = measured.get("grad")
    return {"policy": label, "steps": steps, "seconds": measured.get("seconds"),
            "cpu_seconds": measured.get("cpu_seconds"), "peak_mem_bytes": measured.get("peak_mem_bytes"),
            "ratio_to_sampling": ratio(measured.get("seconds"), sampling.get("seconds")),
            "grad_cosine": cosine(grad, reference), "grad_cosine_to_fp32_sdo": cosine(grad, fp32_sdo),
            "warmup_seconds": measured.get("warmup_seconds"), **extra}


def record_value(records: Records, policy: str, steps: int, key: str) -> Any:
    """``key`` of the (policy, N) record; None when that case was not run."""
    return next((rec.get(key) for rec in records if rec["policy"] == policy and rec["steps"] == steps), None)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing (or b is 0)."""
    return a / b if a is not None and b else None


def fmt_or_dash(value: float | None, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec`` (and ``suffix``), or an em dash for a figure that was not measured."""
    return "—" if value is None else format(value, spec) + suffix


def verdict(name: str, value: float | None, ok: Callable[[float], bool], shown: str) -> str:
    """``PASS``/``FAIL``/``SKIP  name: shown`` (``shown`` formats the value; SKIP when the case was not run)."""
    status = "SKIP" if value is None else ("PASS" if ok(value) else "FAIL")
    return f"{status}  {name}: {shown.format(value) if value is not None else 'case not run'}"


def line_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """Least-squares line y = a + b·x through ``points``: (a, b, R²); R² is NaN for constant y."""
    mx, my = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in points)
    total = sum((y - my) ** 2 for _, y in points)
    return my - slope * mx, slope, 1.0 - residual / total if total > 0 else math.nan


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """The lines of a markdown table; ``align`` has one character a column, ``r`` for right-aligned numbers."""
    rule = "|".join("---:" if a == "r" else "---" for a in align.ljust(len(header), "l"))
    return [f"| {' | '.join(header)} |", f"|{rule}|", *(f"| {' | '.join(map(str, row))} |" for row in rows)]


def save_plot(path: Path, draw: Callable[[Any], None], xlabel: str, ylabel: str, title: str,
              size: tuple[float, float] = (6.5, 4.5)) -> Path:
    """A PNG (120 dpi, written atomically) of one matplotlib axes that ``draw(ax)`` fills, with the labels, a
    light grid and the legend of what ``draw`` labelled; the same frame for every benchmark's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
