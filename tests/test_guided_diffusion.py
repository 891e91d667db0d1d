"""ADM (guided-diffusion) checkpoints and classifier guidance.

References: the parameter names/shapes of the released 128×128 files (``tests/data/guided_diffusion_128x128_*.txt``,
listed from openai/guided-diffusion's ``UNetModel`` / ``EncoderUNetModel`` at the README's flags, which load those
files with strict=True); the guidance formula of Dhariwal & Nichol Alg. 2 with ∇ log p by central finite
differences in float64; attention written out head by head; diffusers' own DDIMScheduler for ᾱ_t.

Bit for bit, by construction: the loaded network and classifier against the modules they were saved from
(the same weights, the same operations on the same inputs). Elsewhere tolerances, stated where compared.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lit_sdo.models import build_sampler, load_diffusion
from lit_sdo.models import guided_diffusion as gd
from lit_sdo.models.adm import ADMClassifier, ADMUNet, attention, count_parameters
from lit_sdo.sampling import GradientPolicy, sample
from lit_sdo.sampling.classifier_guidance import ClassifierGuidedDenoiser

DATA = Path(__file__).resolve().parent / "data"
TINY = {  # the 128×128 layout at toy width: 2 levels, attention at 4×4, 3 classes, 8×8 images
    "unet": dict(image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                 attention_resolutions=(2,), channel_mult=(1, 2), num_classes=3, num_heads=2, num_head_channels=-1,
                 scale_shift=True, resblock_updown=True, split_heads_first=True),
    "classifier": dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                       attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32, scale_shift=True,
                       resblock_updown=True, split_heads_first=True, pool="attention"),
}


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights everywhere, zero-initialised layers included (so every block changes the output)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return module.eval().requires_grad_(False)


@pytest.fixture
def tiny_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, ADMUNet, ADMClassifier]:
    """A folder with ``8x8_diffusion.pt`` / ``8x8_classifier.pt`` written with torch.save, as the release."""
    monkeypatch.setitem(gd.ARCHITECTURES, "8x8", TINY)
    unet = randomised(ADMUNet(**TINY["unet"]), 0)
    classifier = randomised(ADMClassifier(**TINY["classifier"]), 1)
    torch.save(unet.state_dict(), tmp_path / "8x8_diffusion.pt")
    torch.save(classifier.state_dict(), tmp_path / "8x8_classifier.pt")
    return tmp_path, unet, classifier


def test_tiny_checkpoints_load_back_through_the_loader(tiny_release: tuple[Path, ADMUNet, ADMClassifier]) -> None:
    folder, unet, classifier = tiny_release
    model = load_diffusion(f"guided-diffusion:8x8?classifier_scale=2.5&dir={folder}")
    assert (model.num_classes, model.image_size, model.channels, model.is_shortcut) == (3, 8, 3, False)
    denoiser = model.denoiser
    assert isinstance(denoiser, ClassifierGuidedDenoiser) and denoiser.classifier_scale == 2.5
    assert not any(p.requires_grad for p in denoiser.parameters())
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 900]), torch.tensor([0, 2])
    torch.testing.assert_close(denoiser.network(x, t, y), unet(x, t, y), rtol=0, atol=0)
    torch.testing.assert_close(denoiser.classifier(x, t), classifier(x, t), rtol=0, atol=0)
    assert model.scheduler_config["beta_schedule"] == "linear"


def read_layout(name: str) -> dict[str, tuple[int, ...]]:
    lines = (DATA / f"guided_diffusion_128x128_{name}.txt").read_text().splitlines()
    return {key: tuple(int(n) for n in shape.split("x")) for key, shape in (line.split() for line in lines)}


@pytest.mark.parametrize(("part", "cls", "expected_count"), [
    ("unet", ADMUNet, 421_529_606),  # ~422 M: summed from the released layout (the README states no count)
    ("classifier", ADMClassifier, 42_568_040),
])
def test_128x128_layout_is_the_released_one(part: str, cls: type, expected_count: int) -> None:
    """Built on the meta device (nothing allocated): every name and shape of the released state dict."""
    network = gd.build_on_meta(cls, gd.ARCHITECTURES["128x128"][part])
    assert all(p.is_meta for p in network.parameters())
    layout = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    released = read_layout(part)
    assert layout == released
    assert count_parameters(network) == sum(math.prod(s) for s in released.values()) == expected_count


def test_wrong_architecture_is_one_line(tiny_release: tuple[Path, ADMUNet, ADMClassifier], tmp_path: Path) -> None:
    folder, _, classifier = tiny_release
    torch.save(classifier.state_dict(), tmp_path / "swapped.pt")
    with pytest.raises(ValueError, match=r"is not a 8x8 ADM diffusion UNet: \d+ missing \(e.g. label_emb.weight\)"
                       ) as err:
        gd.load_adm_unet(tmp_path / "swapped.pt", "8x8")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="is not a 128x128 ADM diffusion UNet: .* of another shape") as err:
        gd.load_adm_unet(folder / "8x8_diffusion.pt", "128x128")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="architecture '64x64' is not one of 128x128"):
        load_diffusion("guided-diffusion:64x64")


def test_missing_checkpoint_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_diffusion(f"guided-diffusion:128x128?classifier_scale=1.0&dir={tmp_path}")
    message = str(err.value)
    assert "\n" not in message and "not available locally" in message
    assert "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/128x128_diffusion.pt" in message


def test_classifier_scale_without_classifier_and_cfg_are_refused(
        tiny_release: tuple[Path, ADMUNet, ADMClassifier]) -> None:
    folder, unet, _ = tiny_release
    with pytest.raises(ValueError, match="classifier_scale=1.0 needs the noise-aware classifier") as err:
        load_diffusion(f"guided-diffusion:8x8?classifier_scale=1&classifier=none&dir={folder}")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="classifier_scale=2.0 needs a noise-aware classifier"):
        ClassifierGuidedDenoiser(unet, gd.alphas_cumprod(), None, classifier_scale=2.0)
    with pytest.raises(ValueError, match="no null label, so classifier-free guidance needs guidance_scale=1.0"):
        load_diffusion(f"guided-diffusion:8x8?dir={folder}", guidance_scale=3.0)
    with pytest.raises(ValueError, match="unknown option"):
        load_diffusion(f"guided-diffusion:8x8?scale=1&dir={folder}")
    plain = load_diffusion(f"guided-diffusion:8x8?classifier=none&dir={folder}")
    assert plain.denoiser.classifier is None


def log_prob(classifier: ADMClassifier, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    return torch.log_softmax(classifier(x, t), dim=-1).gather(1, labels[:, None])[:, 0]  # (B,)


def test_guided_noise_prediction_is_alg2_with_finite_difference_gradient() -> None:
    """ε̂ = ε − s √(1 − ᾱ_t) ∇ log p(y | x_t, t), the gradient by central differences (float64)."""
    unet = randomised(ADMUNet(**TINY["unet"]), 0).double()
    classifier = randomised(ADMClassifier(**TINY["classifier"]), 1).double()
    abar, scale = gd.alphas_cumprod(), 3.0
    denoiser = ClassifierGuidedDenoiser(unet, abar, classifier, classifier_scale=scale).double()
    torch.manual_seed(2)
    x, t, y = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor(400), torch.tensor([1, 2])
    t_batch, h = t.expand(2), 1e-5
    coords = torch.randperm(x[0].numel())[:24]  # (24,) coordinates checked by central differences
    steps = torch.zeros(len(coords), x[0].numel(), dtype=x.dtype)
    steps[torch.arange(len(coords)), coords] = h
    steps = steps.reshape(len(coords), *x.shape[1:])  # one coordinate per row
    n = len(coords)
    fd = torch.stack([  # (B, 24), all perturbations of one sample in one batch
        (log_prob(classifier, x[b] + steps, t.expand(n), y[b].expand(n))
         - log_prob(classifier, x[b] - steps, t.expand(n), y[b].expand(n))) / (2 * h) for b in range(2)])
    eps = unet(x, t_batch, y)[:, :3]
    expected = eps.flatten(1)[:, coords] - scale * math.sqrt(1 - float(abar[400])) * fd
    with torch.no_grad():  # the gradient is taken inside, even where the sampler keeps no graph
        got = denoiser(x, t, y)
    assert (got - eps).abs().max() > 1e-3
    torch.testing.assert_close(got.flatten(1)[:, coords], expected, rtol=1e-6, atol=1e-8)


def test_guidance_term_is_detached_from_the_graph() -> None:
    """At the step SDO keeps, the graph is ε_θ's only: ∂ε̂/∂x_t = ∂ε_θ/∂x_t (no classifier Hessian term)."""
    unet = randomised(ADMUNet(**TINY["unet"]), 0).double()
    classifier = randomised(ADMClassifier(**TINY["classifier"]), 1).double()
    denoiser = ClassifierGuidedDenoiser(unet, gd.alphas_cumprod(), classifier, classifier_scale=3.0).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    t, y, w = torch.tensor(400), torch.tensor([1, 2]), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    (guided,) = torch.autograd.grad((denoiser(x, t, y) * w).sum(), x)
    (plain,) = torch.autograd.grad((unet(x, t.expand(2), y)[:, :3] * w).sum(), x)
    torch.testing.assert_close(guided, plain, rtol=1e-12, atol=1e-12)


def test_ddim_sampling_and_sdo_gradient_run_through_the_loop(
        tiny_release: tuple[Path, ADMUNet, ADMClassifier]) -> None:
    folder, _, _ = tiny_release
    model = load_diffusion(f"guided-diffusion:8x8?classifier_scale=1.0&dir={folder}")
    denoiser, scheduler = build_sampler(model, "ddim", 4)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    plain = sample(denoiser, scheduler, x, y, policy="none").sample
    leaf = x.clone().requires_grad_(True)
    out = sample(denoiser, scheduler, leaf, y, policy=GradientPolicy("sdo", k=0)).sample
    torch.testing.assert_close(out.detach(), plain, rtol=1e-6, atol=1e-6)  # forward values never depend on it
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_schedule_is_diffusers_linear_ddpm_schedule() -> None:
    from diffusers import DDIMScheduler

    reference = DDIMScheduler(**gd.SCHEDULER_CONFIG).alphas_cumprod.double()
    torch.testing.assert_close(gd.alphas_cumprod(), reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("split_heads_first", [True, False])
def test_attention_layouts_head_by_head(split_heads_first: bool) -> None:
    torch.manual_seed(0)
    heads, ch, length = 2, 4, 5
    qkv = torch.randn(3, 3 * heads * ch, length, dtype=torch.float64)
    out = attention(qkv, heads, split_heads_first)
    for h in range(heads):
        if split_heads_first:  # heads × [q, k, v]
            block = qkv[:, h * 3 * ch:(h + 1) * 3 * ch]
            q, k, v = block[:, :ch], block[:, ch:2 * ch], block[:, 2 * ch:]
        else:  # [q, k, v] × heads
            q, k, v = (qkv[:, part * heads * ch + h * ch: part * heads * ch + (h + 1) * ch] for part in range(3))
        weights = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)  # (B, T, T)
        torch.testing.assert_close(out[:, h * ch:(h + 1) * ch], torch.einsum("bts,bcs->bct", weights, v))
