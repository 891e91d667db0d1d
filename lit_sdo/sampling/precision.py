"""Precision of the no-grad denoiser calls: the cheap part of an SDO gradient.

An SDO gradient costs N model calls without a graph plus ONE call with its graph and backward
(paper Sec. 4.3, Eq. 18). The no-grad calls only produce the trajectory x_T -> x_0 and the
stop-gradient outputs sg(u_θ(x_t)); their arithmetic precision can drop while the graph-keeping
call, the scheduler arithmetic (latents stay float32) and everything after the sampler stay in
float32. :class:`Precision` says how those calls run (dtype, autocast or a low-precision copy of the
weights, channels_last, ``torch.compile``); :func:`no_grad_denoiser` turns a denoiser into the
callable the loop uses for its SKIP/OFF steps, cast back to the latent's dtype.

The default ``Precision()`` (float32, nothing else) is the denoiser itself: the loop is unchanged.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

PrecisionName = Literal["fp32", "bf16", "fp16"]
PRECISION_NAMES: tuple[str, ...] = ("fp32", "bf16", "fp16")
CAST_MODES: tuple[str, ...] = ("autocast", "copy")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

Denoise = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class Precision:
    """How the sampler's no-grad model calls run; graph-keeping calls always run as the model is.

    Attributes:
        dtype: ``fp32`` (default: unchanged), ``bf16`` (CUDA with bf16, CPUs with oneDNN bf16
            kernels: AVX512-BF16/AMX or AVX512-core, ARM with BF16) or ``fp16`` (CUDA; CPUs with
            AVX512-FP16/AMX-FP16).
        cast: ``autocast`` runs the float32 weights under ``torch.autocast`` (no extra resident
            weights; normalisations stay float32); ``copy`` keeps a second, low-precision copy of
            the floating parameters and buffers (+50 % weight memory for bf16/fp16) and runs the whole
            network in ``dtype``. The copy is refreshed when a parameter changes in place (LoRA
            training), detected through the tensors' version counters.
        channels_last: feed the network NHWC inputs (the convolutions then keep NHWC activations;
            the weights are not touched).
        compile: ``torch.compile`` the no-grad call once per denoiser (the first call pays the
            compile time; see benchmarks/RESULTS.md for when it pays back).
        allow_emulated: run ``dtype`` on a device without native kernels for it (numerics tests
            on a CPU without bf16: correct but tens of times slower than float32).
    """

    dtype: PrecisionName = "fp32"
    cast: Literal["autocast", "copy"] = "autocast"
    channels_last: bool = False
    compile: bool = False
    allow_emulated: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in PRECISION_NAMES:
            raise ValueError(f"precision dtype={self.dtype!r} is unknown; allowed values: {', '.join(PRECISION_NAMES)}")
        if self.cast not in CAST_MODES:
            raise ValueError(f"precision cast={self.cast!r} is unknown; allowed values: {', '.join(CAST_MODES)}")

    @property
    def is_default(self) -> bool:
        """True when the no-grad calls are exactly the plain float32 calls."""
        return self.dtype == "fp32" and not self.channels_last and not self.compile


def as_precision(precision: Precision | str | None) -> Precision:
    """Accept a :class:`Precision`, a dtype name (``"bf16"``) or None (float32)."""
    if precision is None:
        return Precision()
    if isinstance(precision, Precision):
        return precision
    return Precision(dtype=precision)  # type: ignore[arg-type]


# ---------------------------------------------------------------- what a device supports
def supported_precisions(device: torch.device | str) -> tuple[str, ...]:
    """The dtypes with native kernels on ``device`` (float32 always)."""
    device = torch.device(device)
    names = ["fp32"]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            names.append("bf16")
        names.append("fp16")
    elif device.type == "cpu":
        if _cpu_probe("_is_mkldnn_bf16_supported"):
            names.append("bf16")
        if _cpu_probe("_is_mkldnn_fp16_supported"):
            names.append("fp16")
    return tuple(names)


def _cpu_probe(name: str) -> bool:
    """oneDNN's own check of the CPU's instruction set (False where PyTorch lacks the probe)."""
    probe = getattr(torch.ops.mkldnn, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def check_supported(precision: Precision, device: torch.device | str) -> None:
    """One-line error for a dtype the device has no kernels for (unless ``allow_emulated``)."""
    device = torch.device(device)
    supported = supported_precisions(device)
    if precision.dtype in supported or precision.allow_emulated:
        return
    if device.type == "cpu":
        what = f"cpu (capability {torch.backends.cpu.get_cpu_capability()}, no oneDNN {precision.dtype} kernels)"
    elif device.type == "cuda":
        what = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        what = device.type
    raise ValueError(f"precision {precision.dtype!r} is not supported on {what}; this device supports: "
                     f"{', '.join(supported)} (allow_emulated=True runs it anyway, slowly)")


# ---------------------------------------------------------------- the no-grad call
# One prepared call per (denoiser, precision): a compiled graph or a low-precision weight copy is
# built once and reused by every later ``sample`` call, even when the precision is given by name.
_PREPARED: weakref.WeakKeyDictionary[nn.Module, dict[Precision, Denoise]] = weakref.WeakKeyDictionary()


def no_grad_denoiser(denoiser: nn.Module, precision: Precision | str | None, device: torch.device) -> Denoise:
    """The callable for the loop's no-grad (SKIP/OFF) model calls: ``(x, t, cond) -> output`` in x's dtype.

    Returns ``denoiser`` itself for the default precision, so the float32 path is the plain call.
    """
    precision = as_precision(precision)
    if precision.is_default:
        return denoiser
    check_supported(precision, device)
    per_model = _PREPARED.setdefault(denoiser, {})
    if precision not in per_model:
        per_model[precision] = _prepare(denoiser, precision, device)
    return per_model[precision]


def _prepare(denoiser: nn.Module, precision: Precision, device: torch.device) -> Denoise:
    dtype = DTYPES[precision.dtype]
    if precision.cast == "copy" and dtype != torch.float32:
        network: Denoise = _WeightCopy(denoiser, dtype, precision.compile)
    else:
        network = torch.compile(denoiser, dynamic=False) if precision.compile else denoiser
    use_autocast = precision.cast == "autocast" and dtype != torch.float32
    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format

    def call(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        model_input = x.contiguous(memory_format=memory_format)  # (B, C, H, W), NHWC strides if asked
        if precision.cast == "copy":
            model_input = model_input.to(dtype)
            cond = cond.to(dtype) if cond is not None and cond.is_floating_point() else cond
        with torch.autocast(device.type, dtype=dtype, enabled=use_autocast):
            out = network(model_input, t, cond)
        # the scheduler's arithmetic and the latents stay in x's dtype (float32)
        return out.to(dtype=x.dtype, memory_format=torch.contiguous_format)

    return call


class _WeightCopy:
    """``denoiser`` run on a low-precision copy of its floating parameters and buffers.

    The copy is rebuilt when any source tensor changed in place since it was made (optimizer
    steps bump the version counters) or was replaced (``.to(device)``), so a copy never lags the
    float32 weights it stands for.
    """

    def __init__(self, denoiser: nn.Module, dtype: torch.dtype, compile_call: bool = False) -> None:
        self.denoiser, self.dtype = denoiser, dtype
        self._run = torch.compile(self._functional, dynamic=False) if compile_call else self._functional
        self._versions: tuple[tuple[int, int], ...] | None = None
        self._weights: dict[str, Tensor] = {}

    def _sources(self) -> dict[str, Tensor]:
        tensors = dict(self.denoiser.named_parameters())
        tensors.update(dict(self.denoiser.named_buffers()))
        return {name: t for name, t in tensors.items() if t.is_floating_point()}

    def weights(self) -> dict[str, Tensor]:
        sources = self._sources()
        versions = tuple((t._version, t.data_ptr()) for t in sources.values())  # in-place steps, moves
        if versions != self._versions:
            with torch.no_grad():
                self._weights = {name: t.detach().to(self.dtype) for name, t in sources.items()}
            self._versions = versions
        return self._weights

    def _functional(self, weights: dict[str, Tensor], x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        return functional_call(self.denoiser, weights, (x, t, cond))

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self._run(self.weights(), x, t, cond)
