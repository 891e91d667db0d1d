"""Low-precision no-grad calls (lit_sdo.sampling.precision) against float32 references.

- the default path is the plain diffusers loop, bit for bit (by construction: the same UNet calls on the
  same batch, the same scheduler steps);
- bf16 no-grad calls stay within a stated tolerance of float32, really run in bf16, and the one
  graph-keeping call runs in float32 (its saved tensors, its outputs, the gradient's dtype);
- the SDO gradient with bf16 skip calls points where the float32 SDO gradient points;
- a dtype the device has no kernels for is a one-line error naming the device and what it supports.

bf16 runs with ``allow_emulated=True`` so these tests pass on CPUs without bf16 kernels too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel
from torch import Tensor, nn

from lit_sdo.sampling import PixelUNetDenoiser, build_scheduler, sample
from lit_sdo.sampling import precision as precision_module
from lit_sdo.sampling.precision import Precision, check_supported, no_grad_denoiser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common, gradient_cost  # noqa: E402

NUM_STEPS = 6
BF16 = Precision("bf16", allow_emulated=True)
BF16_COPY = Precision("bf16", cast="copy", allow_emulated=True)
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ≈ 0.2 %); through a 2-block UNet and 6 DDIM steps
# the x₀ error measured ~0.3-0.6 %: 2 % leaves room for other CPUs' kernels and still fails a float16
# overflow or a wrong cast (O(1) errors).
X0_TOLERANCE = 0.02


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=4).eval()


def latent(seed: int = 0) -> Tensor:
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W)


LABELS = torch.tensor([1, 3])


def run(denoiser: nn.Module, policy: str = "none", precision: Precision | str | None = None,
        x: Tensor | None = None) -> Tensor:
    out = sample(denoiser, build_scheduler("ddim", NUM_STEPS), latent() if x is None else x, LABELS,
                 policy=policy, precision=precision)
    return out.sample


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def sdo_gradient(denoiser: nn.Module, precision: Precision | str | None) -> Tensor:
    x_T = latent().requires_grad_(True)
    x0 = run(denoiser, "sdo", precision, x_T)
    (grad,) = torch.autograd.grad((x0 - 0.5).square().mean(), x_T)
    return grad


def test_default_precision_is_the_plain_diffusers_loop_bit_for_bit() -> None:
    unet = tiny_unet()
    scheduler = build_scheduler("ddim", NUM_STEPS)
    x = latent()
    with torch.no_grad():  # the textbook loop, written out
        for t in scheduler.timesteps:
            eps = unet(x, t.reshape(-1).expand(2), class_labels=LABELS).sample
            x = scheduler.step(eps, t, x).prev_sample
    denoiser = PixelUNetDenoiser(unet)
    assert no_grad_denoiser(denoiser, None, torch.device("cpu")) is denoiser
    for precision in (None, "fp32", Precision()):
        assert torch.equal(run(denoiser, "none", precision), x)
        assert torch.equal(run(denoiser, "sdo", precision, latent().requires_grad_(True)).detach(), x)


@pytest.mark.parametrize("precision", [BF16, BF16_COPY], ids=["autocast", "copy"])
def test_bf16_sampling_stays_within_tolerance_of_fp32(precision: Precision) -> None:
    denoiser = PixelUNetDenoiser(tiny_unet())
    reference = run(denoiser)
    mixed = run(denoiser, "none", precision)
    assert mixed.dtype == torch.float32  # the latents stay float32
    error = relative_error(mixed, reference)
    assert 0 < error < X0_TOLERANCE, error  # 0 would mean the bf16 path never ran


@pytest.mark.parametrize("precision", [BF16, BF16_COPY], ids=["autocast", "copy"])
def test_scheduler_arithmetic_sees_fp32_model_outputs(precision: Precision, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.dtype] = []
    step = DDIMScheduler.step

    def recording_step(self: DDIMScheduler, model_output: Tensor, *args: object, **kwargs: object) -> object:
        seen.append(model_output.dtype)
        return step(self, model_output, *args, **kwargs)

    monkeypatch.setattr(DDIMScheduler, "step", recording_step)
    out = sample(PixelUNetDenoiser(tiny_unet()), build_scheduler("ddim", NUM_STEPS), latent(), LABELS,
                 policy="none", precision=precision, return_trajectory=True)
    assert seen == [torch.float32] * NUM_STEPS
    assert {x.dtype for x in out.trajectory} == {torch.float32}


class DtypeRecorder:
    """Output dtypes of every convolution, and dtypes of every tensor autograd saves for backward."""

    def __init__(self, network: nn.Module) -> None:
        self.conv_outputs: list[torch.dtype] = []
        self.saved: list[torch.dtype] = []
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                module.register_forward_hook(lambda _m, _i, out: self.conv_outputs.append(out.dtype))

    def pack(self, tensor: Tensor) -> Tensor:
        if tensor.is_floating_point():
            self.saved.append(tensor.dtype)
        return tensor


@pytest.mark.parametrize("precision", [BF16, BF16_COPY], ids=["autocast", "copy"])
def test_graph_step_runs_in_fp32_and_skip_steps_in_bf16(precision: Precision) -> None:
    unet = tiny_unet().requires_grad_(True)
    recorder = DtypeRecorder(unet)
    x_T = latent().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda tensor: tensor):
        x0 = run(PixelUNetDenoiser(unet), "sdo", precision, x_T)
        loss = (x0 - 0.5).square().mean()
    grads = torch.autograd.grad(loss, [x_T, *unet.parameters()], allow_unused=True)
    convs_per_call = len(recorder.conv_outputs) // NUM_STEPS
    graph_call, skip_calls = recorder.conv_outputs[:convs_per_call], recorder.conv_outputs[convs_per_call:]
    assert set(graph_call) == {torch.float32}  # SDO's k=0 call keeps its graph in float32
    assert set(skip_calls) == {torch.bfloat16}
    assert recorder.saved and set(recorder.saved) == {torch.float32}
    assert all(g is None or g.dtype == torch.float32 for g in grads)
    assert grads[0] is not None and grads[0].abs().sum() > 0


def test_bf16_sdo_gradient_points_where_the_fp32_sdo_gradient_points() -> None:
    denoiser = PixelUNetDenoiser(tiny_unet())
    reference = sdo_gradient(denoiser, None).flatten().double()
    for precision in (BF16, BF16_COPY):
        grad = sdo_gradient(denoiser, precision).flatten().double()
        assert grad.dtype == reference.dtype
        cosine = float(grad @ reference / (grad.norm() * reference.norm()))
        assert cosine > 0.999, (precision, cosine)


def test_weight_copy_follows_in_place_weight_updates() -> None:
    unet = tiny_unet()
    denoiser = PixelUNetDenoiser(unet)
    before = run(denoiser, "none", BF16_COPY)
    with torch.no_grad():
        unet.conv_in.weight.mul_(1.5)  # an optimizer step, in place
    after = run(denoiser, "none", BF16_COPY)
    assert relative_error(after, run(denoiser)) < X0_TOLERANCE  # follows the new float32 weights
    assert relative_error(after, before) > X0_TOLERANCE  # ... and not the stale copy


def test_channels_last_matches_fp32() -> None:
    denoiser = PixelUNetDenoiser(tiny_unet())
    out = run(denoiser, "none", Precision(channels_last=True))
    assert out.is_contiguous()
    assert relative_error(out, run(denoiser)) < 1e-5


def test_unsupported_precision_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "_cpu_probe", lambda name: False)  # a CPU without bf16/fp16 kernels
    for name in ("bf16", "fp16"):
        with pytest.raises(ValueError, match=rf"precision '{name}' is not supported on cpu .*supports: fp32 ") as info:
            run(PixelUNetDenoiser(tiny_unet()), "sdo", name, latent().requires_grad_(True))
        assert "\n" not in str(info.value)
    check_supported(Precision("bf16", allow_emulated=True), "cpu")  # asked for explicitly: runs
    monkeypatch.setattr(precision_module, "_cpu_probe", lambda name: name == "_is_mkldnn_bf16_supported")
    check_supported(Precision("bf16"), "cpu")
    with pytest.raises(ValueError, match="supports: fp32, bf16 "):
        check_supported(Precision("fp16"), "cpu")


@pytest.mark.parametrize("kwargs, message", [({"dtype": "int8"}, "dtype='int8' is unknown; allowed values: fp32"),
                                             ({"cast": "half"}, "cast='half' is unknown; allowed values: autocast")])
def test_unknown_precision_names_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Precision(**kwargs)


# ---------------------------------------------------------------- benchmarks/gradient_cost.py's labels
def test_benchmark_labels_carry_the_precision() -> None:
    policy, precision = common.parse_label("sdo-random@bf16+copy+cl")
    assert policy.k == "random" and precision == Precision("bf16", cast="copy", channels_last=True)
    assert common.parse_label("none") == (common.POLICIES["none"], None)
    for bad, message in [("sdo@int8", "precision suffix 'int8'"), ("sdo@bf16+fast", "flags from copy"),
                         ("adjoint@bf16", "policy 'adjoint'")]:
        with pytest.raises(ValueError, match=message):
            common.parse_label(bad)
    with pytest.raises(SystemExit):
        gradient_cost.parse_args(["--policies", "sdo@bf17"])
    setup = common.build_setup("small-unet", "cpu", 1, "latent")
    reference = gradient_cost.fp32_sdo_gradients(setup, 3, ["none", "sdo@bf16+emulated"])["sdo"]
    mixed = common.label_gradient(setup, 3, "sdo@bf16+emulated")
    assert not torch.equal(mixed, reference)
    assert common.cosine(mixed, reference) > 0.99


def test_weight_copy_follows_replaced_weights() -> None:
    unet = tiny_unet()
    denoiser = PixelUNetDenoiser(unet)
    run(denoiser, "none", BF16_COPY)
    unet.conv_in.weight.data = unet.conv_in.weight.data * 1.5  # a new tensor (as .to(device) makes), version 0
    assert relative_error(run(denoiser, "none", BF16_COPY), run(denoiser)) < X0_TOLERANCE
