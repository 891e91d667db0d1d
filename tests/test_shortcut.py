"""Shortcut models: training targets, the scheduler/denoiser pair, sampling and gradients, bad input.

References are exact: the self-consistency target against the paper's Eq. 5 written out by hand (this
pins the second half-step's start time at t + d), the sampler against a hand-written Euler loop, and
SDO/full gradients against autograd through that loop.

Bit for bit, by construction: x_t and the clipped target written with the library's operations in its
order; a saved-and-loaded network and ``load_diffusion``'s sampler against the originals (same weights,
same operations). The hand loops order their sums differently: float64 tolerances.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lit_sdo.models.shortcut import ShortcutDiT, load_shortcut, save_shortcut
from lit_sdo.sampling import GradientPolicy, sample, start_step_for
from lit_sdo.sampling.shortcut import ShortcutDenoiser, ShortcutScheduler, build_shortcut_sampler
from lit_sdo.tasks.shortcut import ShortcutModule, flow_matching_targets, self_consistency_targets

M = 8  # max steps of the tiny test networks


def tiny_network(step_conditioned: bool = True, max_steps: int = M) -> ShortcutDiT:
    """A seeded tiny DiT whose zero-initialised output layers are randomised (so the output depends on x, t, d)."""
    torch.manual_seed(0)
    net = ShortcutDiT(in_channels=1, sample_size=8, patch_size=2, hidden_size=16, depth=1, num_heads=2,
                      num_classes=3, max_steps=max_steps, step_conditioned=step_conditioned).double()
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.3)
    return net.eval()


class RecordingTeacher(nn.Module):
    """s(x, t, d, y) = 0.5 x + t + 3 d, recording every call's (t, d)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor, t: Tensor, d: Tensor, labels: Tensor | None) -> Tensor:
        self.calls.append((t.clone(), d.clone()))
        return 0.5 * x + t.reshape(-1, 1, 1, 1) + 3 * d.reshape(-1, 1, 1, 1)


# ---------------------------------------------------------------- training targets


def test_self_consistency_second_half_step_starts_at_t_plus_d() -> None:
    """Paper Eq. 5: s(x_t, t, 2d) = s(x_t, t, d)/2 + s(x'_{t+d}, t + d, d)/2 with x'_{t+d} = x_t + d s(x_t, t, d)."""
    torch.manual_seed(0)
    data, noise = torch.randn(14, 1, 4, 4, dtype=torch.float64), torch.randn(14, 1, 4, 4, dtype=torch.float64)
    teacher = RecordingTeacher()
    x_t, t, big, target = self_consistency_targets(teacher, data, noise, None, max_steps=128)
    (t1, d1), (t2, d2) = teacher.calls
    half = big / 2
    assert torch.equal(t1, t) and torch.equal(d1, half) and torch.equal(d2, half)
    assert torch.equal(t2, t + half)  # NOT t + 2d, NOT t - d
    # every step size 1, 1/2, ..., 1/64 for the big step, so the half step reaches 1/128
    assert sorted(set(big.tolist())) == [2.0 ** -k for k in range(6, -1, -1)]
    assert torch.all(t + big <= 1) and torch.all(torch.remainder(t, big) == 0)
    # the target written out by hand
    tb = t.reshape(-1, 1, 1, 1)
    hb = half.reshape(-1, 1, 1, 1)
    expected_xt = (1 - tb) * noise + tb * data
    s1 = 0.5 * expected_xt + tb + 3 * hb
    x_mid = expected_xt + hb * s1
    s2 = 0.5 * x_mid + (tb + hb) + 3 * hb
    torch.testing.assert_close(x_t, expected_xt, rtol=0, atol=0)
    torch.testing.assert_close(target, (s1 + s2) / 2, rtol=1e-15, atol=1e-15)


def test_flow_matching_targets_at_smallest_step() -> None:
    torch.manual_seed(0)
    data, noise = torch.randn(32, 1, 4, 4), torch.randn(32, 1, 4, 4)
    x_t, t, d, v = flow_matching_targets(data, noise, max_steps=128)
    assert torch.all(d == 1 / 128) and torch.all((t * 128) == (t * 128).round()) and t.max() < 1
    tb = t.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, (1 - tb) * noise + tb * data)
    torch.testing.assert_close(v, data - noise)


def test_shortcut_module_loss_trains_network_not_ema() -> None:
    torch.manual_seed(0)
    module = ShortcutModule(dict(in_channels=1, sample_size=8, patch_size=2, hidden_size=16, depth=1,
                                 num_heads=2, num_classes=3, max_steps=M), lr=1e-3)
    images, labels = torch.rand(8, 1, 8, 8) * 2 - 1, torch.randint(0, 3, (8,))
    loss, logs = module.shortcut_loss(images, labels)
    loss.backward()
    assert loss.ndim == 0 and set(logs) == {"train/loss_self_consistency", "train/loss_flow"}
    assert all(p.grad is not None for p in module.network.parameters() if p.requires_grad)
    assert all(p.grad is None for p in module.ema.parameters())


def test_flow_baseline_needs_no_d_and_rejects_self_consistency() -> None:
    net = dict(in_channels=1, sample_size=8, patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=3,
               max_steps=M, step_conditioned=False)
    ShortcutModule(net, self_consistency_fraction=0.0)
    with pytest.raises(ValueError, match="step_conditioned=True"):
        ShortcutModule(net, self_consistency_fraction=0.25)


class LabelTeacher(nn.Module):
    """s(x, t, d, y) = 0.5 x + t + 3 d + y (so guidance changes the output), recording every call's (d, labels)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Tensor, Tensor | None]] = []

    def forward(self, x: Tensor, t: Tensor, d: Tensor, labels: Tensor | None) -> Tensor:
        self.calls.append((d.clone(), None if labels is None else labels.clone()))
        y = labels.to(x).reshape(-1, 1, 1, 1)
        return 0.5 * x + t.reshape(-1, 1, 1, 1) + 3 * d.reshape(-1, 1, 1, 1) + y


class ConstantNetwork(nn.Module):
    """Stands in for the trained network or its EMA teacher: returns ``value`` everywhere, records labels."""

    def __init__(self, value: float, null_class: int = 3) -> None:
        super().__init__()
        self.value, self.null_class, self.max_steps = value, null_class, M
        self.labels: list[Tensor] = []

    def forward(self, x: Tensor, t: Tensor, d: Tensor, labels: Tensor | None) -> Tensor:
        self.labels.append(labels.clone())
        return torch.full_like(x, self.value)


def tiny_module(**kwargs) -> ShortcutModule:  # noqa: ANN003
    torch.manual_seed(0)
    return ShortcutModule(dict(in_channels=1, sample_size=8, patch_size=2, hidden_size=16, depth=1, num_heads=2,
                               num_classes=3, max_steps=M), **kwargs)


def test_target_guidance_applies_at_the_flow_level_only() -> None:
    """Official bootstrap_cfg: rows whose half-step is d = 1/M get s_∅ + w (s_y - s_∅) in both half-steps."""
    torch.manual_seed(0)
    data, noise = torch.randn(12, 1, 4, 4, dtype=torch.float64), torch.randn(12, 1, 4, 4, dtype=torch.float64)
    labels, null, w = torch.randint(0, 3, (12,)), 3, 1.5
    x_t, t, big, target = self_consistency_targets(LabelTeacher(), data, noise, labels, M, guidance_scale=w,
                                                   null_class=null, generator=torch.Generator().manual_seed(0))
    half = big.reshape(-1, 1, 1, 1) / 2
    flow = (half == 1 / M).double()  # (B, 1, 1, 1) rows guided
    y = labels.double().reshape(-1, 1, 1, 1)
    guided_y = flow * (null + w * (y - null)) + (1 - flow) * y  # the label term after guidance

    def s(x: Tensor, time: Tensor) -> Tensor:
        return 0.5 * x + time + 3 * half + guided_y

    tb = t.reshape(-1, 1, 1, 1)
    first = s(x_t, tb)
    second = s(x_t + half * first, tb + half)
    torch.testing.assert_close(target, (first + second) / 2, rtol=1e-14, atol=1e-14)
    assert flow.sum() > 0 and (1 - flow).sum() > 0
    plain = self_consistency_targets(LabelTeacher(), data, noise, labels, M,
                                     generator=torch.Generator().manual_seed(0))[3]
    assert not torch.allclose(plain, target)
    with pytest.raises(ValueError, match="needs the network's null_class"):
        self_consistency_targets(LabelTeacher(), data, noise, labels, M, guidance_scale=w)


def test_targets_are_clipped_like_the_official_code() -> None:
    """x'_{t+d} and the target are clipped to ±4 (official targets_shortcut.py); None leaves them alone."""
    torch.manual_seed(0)
    data, noise = 10 * torch.randn(12, 1, 4, 4, dtype=torch.float64), torch.randn(12, 1, 4, 4, dtype=torch.float64)

    def identity(x: Tensor, t: Tensor, d: Tensor, labels: Tensor | None) -> Tensor:
        return x

    x_t, t, big, target = self_consistency_targets(identity, data, noise, None, M, target_clip=4.0)
    half = big.reshape(-1, 1, 1, 1) / 2
    x_mid = (x_t + half * x_t).clamp(-4, 4)
    torch.testing.assert_close(target, ((x_t + x_mid) / 2).clamp(-4, 4), rtol=0, atol=0)
    x_t, _, big, unclipped = self_consistency_targets(identity, data, noise, None, M)
    torch.testing.assert_close(unclipped, x_t + big.reshape(-1, 1, 1, 1) / 4 * x_t, rtol=1e-15, atol=1e-15)
    assert unclipped.abs().max() > 4


def test_module_clips_self_consistency_targets_by_default() -> None:
    """With a teacher that answers 100 and a network that answers 0, the clipped target gives a loss of 4² = 16."""
    module = tiny_module(self_consistency_fraction=0.5)
    assert module.hparams.target_clip == 4.0 and module.hparams.self_consistency_fraction == 0.5
    module.ema, module.network = ConstantNetwork(100.0), ConstantNetwork(0.0)
    _, logs = module.shortcut_loss(torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    assert float(logs["train/loss_self_consistency"]) == 16.0


def test_unconditional_training_puts_the_null_label_on_the_whole_batch() -> None:
    """label_dropout=1 (official cfg_scale 0): teacher and network see only the null label, also in the
    self-consistency part, so the few-step shortcuts are learnt for the label they are sampled with."""
    module = tiny_module(self_consistency_fraction=0.5, label_dropout=1.0)
    module.ema, module.network = ConstantNetwork(0.0), ConstantNetwork(0.0)
    module.shortcut_loss(torch.zeros(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    seen = torch.cat(module.ema.labels + module.network.labels)
    assert seen.numel() == 2 * 4 + 8 and torch.all(seen == 3)


def test_module_guides_its_targets_with_the_null_label() -> None:
    module = tiny_module(self_consistency_fraction=0.5, target_guidance_scale=1.5)
    module.ema = LabelTeacher()
    module.shortcut_loss(torch.zeros(16, 1, 8, 8), torch.zeros(16, dtype=torch.long))
    null_calls = [d for d, labels in module.ema.calls if labels is not None and torch.all(labels == 3)]
    assert len(null_calls) == 2 and all(torch.all(d == 1 / M) for d in null_calls)
    with pytest.raises(ValueError, match="0 < label_dropout < 1"):
        tiny_module(target_guidance_scale=1.5, label_dropout=1.0)


def test_config_keys_are_the_constructor_arguments(tmp_path: Path) -> None:
    """The saved config names exactly ShortcutDiT's arguments; extra keys in config.json are ignored on load."""
    import inspect

    from lit_sdo.models.shortcut import CONFIG_KEYS

    assert CONFIG_KEYS == tuple(inspect.signature(ShortcutDiT).parameters)
    net = tiny_network().float()
    save_shortcut(net, tmp_path / "m", extra={"training_command": "x", "seed": 0})
    assert load_shortcut(tmp_path / "m").config == net.config


# ---------------------------------------------------------------- scheduler and sampling


def test_scheduler_surface() -> None:
    scheduler = ShortcutScheduler(max_steps=8)
    scheduler.set_timesteps(4)
    assert scheduler.num_inference_steps == 4 and scheduler.config["max_steps"] == 8
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([1000.0, 750.0, 500.0, 250.0]))
    x, s = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    (prev,) = scheduler.step(s, scheduler.timesteps[1], x, return_dict=False)
    torch.testing.assert_close(prev, x + 0.25 * s)
    assert start_step_for(scheduler, 600) == 2
    clone = ShortcutScheduler.from_config(scheduler.config)
    assert clone.config["max_steps"] == 8


@pytest.mark.parametrize("bad", [0, 3, 6, 16, 2.0])
def test_bad_step_counts(bad: int) -> None:
    with pytest.raises(ValueError, match="power of two between 1 and 8"):
        ShortcutScheduler(max_steps=8).set_timesteps(bad)
    with pytest.raises(ValueError, match="power of two"):
        build_shortcut_sampler(tiny_network(), bad)


def test_step_rejects_foreign_timestep() -> None:
    scheduler = ShortcutScheduler(max_steps=8)
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="not one of this 2-step schedule"):
        scheduler.step(torch.zeros(1), torch.tensor(750.0), torch.zeros(1))


def test_t_and_d_out_of_range() -> None:
    net, x = tiny_network(), torch.randn(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="t must lie in"):
        net(x, torch.tensor([1.5]), torch.tensor([0.125]))
    with pytest.raises(ValueError, match=r"step size d must lie in \[1/8, 1\]"):
        net(x, torch.tensor([0.0]), torch.tensor([1 / 16]))
    with pytest.raises(ValueError, match="t \\+ d must be <= 1"):
        net(x, torch.tensor([0.75]), torch.tensor([0.5]))


def test_network_without_d_conditioning_is_refused() -> None:
    flow = tiny_network(step_conditioned=False)
    with pytest.raises(ValueError, match="without step-size \\(d\\) conditioning"):
        build_shortcut_sampler(flow, 2)
    denoiser, _ = build_shortcut_sampler(flow, 2, flow_only=True)
    assert denoiser.step_size == 1 / M


def hand_loop(net: ShortcutDiT, x: Tensor, labels: Tensor, num_steps: int, detach_except: int | None = None) -> Tensor:
    """The paper's Alg. 2: x ← x + d s(x, t, d), t = 0, d, ..., 1 - d (optionally sg(s) except at one step)."""
    d = 1.0 / num_steps
    for k in range(num_steps):
        s = net(x, torch.full((x.shape[0],), k * d, dtype=x.dtype), torch.full((x.shape[0],), d, dtype=x.dtype),
                labels)
        if detach_except is not None and k != detach_except:
            s = s.detach()
        x = x + d * s
    return x


@pytest.mark.parametrize("num_steps", [1, 2, 4, 8])
def test_sample_matches_hand_written_loop(num_steps: int) -> None:
    net = tiny_network()
    torch.manual_seed(1)
    x, labels = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2])
    denoiser, scheduler = build_shortcut_sampler(net, num_steps)
    out = sample(denoiser, scheduler, x, labels, policy="none").sample
    torch.testing.assert_close(out, hand_loop(net, x, labels, num_steps), rtol=1e-12, atol=1e-12)


def test_pair_follows_set_timesteps() -> None:
    """The denoiser reads d from its scheduler, so re-setting N keeps the pair consistent."""
    net = tiny_network()
    x, labels = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
    denoiser, scheduler = build_shortcut_sampler(net, 1)
    scheduler.set_timesteps(4)
    out = sample(denoiser, scheduler, x, labels, policy="none").sample
    torch.testing.assert_close(out, hand_loop(net, x, labels, 4), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_gradients_through_shortcut_sampling(num_steps: int) -> None:
    """full == autograd through the hand loop; SDO (k=0) == the hand loop with sg(s) at every other step."""
    net = tiny_network()
    torch.manual_seed(2)
    x, labels = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 2])
    weights = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    denoiser, scheduler = build_shortcut_sampler(net, num_steps)

    def grad_of(run) -> Tensor:  # noqa: ANN001
        leaf = x.clone().requires_grad_(True)
        return torch.autograd.grad((run(leaf) * weights).sum(), leaf)[0]

    full = grad_of(lambda z: sample(denoiser, scheduler, z, labels, policy="full").sample)
    sdo = grad_of(lambda z: sample(denoiser, scheduler, z, labels, policy=GradientPolicy("sdo", k=0)).sample)
    torch.testing.assert_close(full, grad_of(lambda z: hand_loop(net, z, labels, num_steps)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sdo, grad_of(lambda z: hand_loop(net, z, labels, num_steps, detach_except=0)),
                               rtol=1e-10, atol=1e-12)
    assert sdo.abs().sum() > 0
    if num_steps == 1:  # one step: SDO's one graph step is the whole chain
        torch.testing.assert_close(sdo, full, rtol=1e-12, atol=1e-14)
    else:
        assert not torch.allclose(sdo, full)


def test_guidance_only_at_flow_level() -> None:
    net = tiny_network()
    x, labels = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 2])
    t = torch.tensor(1000.0)
    for num_steps in (2, M):
        plain, _ = build_shortcut_sampler(net, num_steps)
        guided, _ = build_shortcut_sampler(net, num_steps, guidance_scale=3.0)
        if num_steps < M:  # paper Sec. 3.1: no CFG at d > 0
            torch.testing.assert_close(guided(x, t, labels), plain(x, t, labels))
        else:
            uncond = plain(x, t, torch.full_like(labels, net.null_class))
            expected = uncond + 3.0 * (plain(x, t, labels) - uncond)
            torch.testing.assert_close(guided(x, t, labels), expected)


def test_flow_only_sampling_is_euler_at_smallest_d() -> None:
    net = tiny_network(step_conditioned=False)
    x, labels = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
    denoiser, scheduler = build_shortcut_sampler(net, 2, flow_only=True)
    out = sample(denoiser, scheduler, x, labels, policy="none").sample
    v0 = net(x, torch.zeros(2, dtype=x.dtype), torch.full((2,), 1 / M, dtype=x.dtype), labels)
    x1 = x + 0.5 * v0
    v1 = net(x1, torch.full((2,), 0.5, dtype=x.dtype), torch.full((2,), 1 / M, dtype=x.dtype), labels)
    torch.testing.assert_close(out, x1 + 0.5 * v1, rtol=1e-12, atol=1e-12)


def test_denoiser_rejects_other_schedulers_and_networks() -> None:
    from diffusers import DDIMScheduler

    with pytest.raises(ValueError, match="needs ShortcutScheduler"):
        ShortcutDenoiser(tiny_network(), DDIMScheduler())
    with pytest.raises(ValueError, match="not a shortcut network"):
        ShortcutDenoiser(nn.Linear(2, 2), ShortcutScheduler(max_steps=8))


def test_save_load_roundtrip(tmp_path: Path) -> None:
    net = tiny_network().float().requires_grad_(False)  # as loaded: same attention kernel
    save_shortcut(net, tmp_path / "m")
    loaded = load_shortcut(tmp_path / "m")
    x = torch.randn(2, 1, 8, 8)
    args = (torch.tensor([0.25, 0.5]), torch.tensor([0.5, 0.125]), torch.tensor([0, 3]))
    torch.testing.assert_close(loaded(x, *args), net(x, *args), rtol=0, atol=0)
    assert loaded.config == net.config
    with pytest.raises(FileNotFoundError, match="save_shortcut"):
        load_shortcut(tmp_path / "missing")


@pytest.mark.parametrize("step_conditioned", [True, False], ids=["shortcut", "flow"])
def test_load_diffusion_pairs_a_shortcut_folder_with_its_own_sampler(tmp_path: Path, step_conditioned: bool) -> None:
    """Shortcut and flow-matching folders load by name like any diffusion model; ``build_sampler`` gives the
    N-step pair (flow models query the network at d = 1/M) and refuses a diffusers scheduler in one line."""
    from lit_sdo.models import build_sampler, load_diffusion

    net = tiny_network(step_conditioned=step_conditioned).float().requires_grad_(False)
    save_shortcut(net, tmp_path / "m")
    model = load_diffusion(str(tmp_path / "m"))
    assert (model.num_classes, model.image_size, model.channels) == (3, 8, 1)
    assert model.is_shortcut and model.scheduler_config == {}  # an explicit field, no tag in the scheduler config
    denoiser, scheduler = build_sampler(model, "shortcut", 4)
    expected_denoiser, expected_scheduler = build_shortcut_sampler(net, 4, flow_only=not step_conditioned)
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    got = sample(denoiser, scheduler, x, labels, policy="none").sample
    torch.testing.assert_close(got, sample(expected_denoiser, expected_scheduler, x, labels, policy="none").sample,
                               rtol=0, atol=0)
    guided, _ = build_sampler(load_diffusion(str(tmp_path / "m"), guidance_scale=2.0), "shortcut", 4)
    assert guided.guidance_scale == 2.0  # the scale the model was loaded with carries over
    with pytest.raises(ValueError, match="is a shortcut model: use scheduler: shortcut") as err:
        build_sampler(model, "ddim", 4)
    assert "\n" not in str(err.value)


def test_checkpoint_without_d_conditioning(tmp_path: Path) -> None:
    """A flow-matching checkpoint loads, refuses shortcut sampling in one line, and a config that lies is caught."""
    import json

    save_shortcut(tiny_network(step_conditioned=False).float(), tmp_path / "flow")
    flow = load_shortcut(tmp_path / "flow")
    with pytest.raises(ValueError, match="without step-size \\(d\\) conditioning") as err:
        build_shortcut_sampler(flow, 4)
    assert "\n" not in str(err.value)
    config = json.loads((tmp_path / "flow" / "config.json").read_text())
    (tmp_path / "flow" / "config.json").write_text(json.dumps({**config, "step_conditioned": True}))
    with pytest.raises(ValueError, match="trained without step-size"):
        load_shortcut(tmp_path / "flow")


# ---------------------------------------------------------------- configs


REAL_CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/shortcut/*.yaml"))


@pytest.fixture
def tiny_vae_and_images(tmp_path: Path) -> tuple[Path, Path]:
    """A seeded tiny AutoencoderKL folder (factor 2, 4 latent channels) and an ImageFolder of 4 RGB images."""
    from diffusers import AutoencoderKL
    from PIL import Image

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    for i in range(4):
        folder = tmp_path / "images" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((torch.rand(16, 16, 3) * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return tmp_path / "vae", tmp_path / "images"


@pytest.mark.parametrize("config", REAL_CONFIGS, ids=lambda p: p.name)
def test_real_configs_carry_paper_hyperparameters_and_train_at_tiny_size(
        config: Path, tiny_vae_and_images: tuple[Path, Path], tmp_path: Path) -> None:
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    vae, images = tiny_vae_and_images
    tiny = ["--model.init_args.network.hidden_size=16", "--model.init_args.network.depth=1",
            "--model.init_args.network.num_heads=2", "--model.init_args.network.sample_size=8",
            f"--model.init_args.vae={vae}", f"--model.init_args.export_dir={tmp_path / 'export'}",
            f"--data.init_args.root={images}", "--data.init_args.image_size=16", "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0", "--trainer.accelerator=cpu", "--trainer.fast_dev_run=1",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    cli = LightningCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       run=False, args=["--config", str(config), *tiny])
    hp = cli.model.hparams
    assert (hp.lr, hp.weight_decay, hp.ema_decay, hp.self_consistency_fraction) == (1e-4, 0.1, 0.999, 0.125)
    celeba = "celeba" in config.name  # official: unconditional, no CFG; ImageNet: bootstrap_cfg with cfg_scale 1.5
    assert hp.target_clip == 4.0 and hp.target_guidance_scale == (1.0 if celeba else 1.5)
    assert hp.network["patch_size"] == 2 and hp.network["max_steps"] == 128 and hp.network["in_channels"] == 4
    assert cli.datamodule.hparams.batch_size == 4 and hp.label_dropout == (1.0 if "celeba" in config.name else 0.1)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 1
    network = load_shortcut(tmp_path / "export")
    denoiser, scheduler = build_shortcut_sampler(network, 1)
    out = sample(denoiser, scheduler, torch.randn(2, 4, 8, 8), torch.tensor([0, 0]), policy="none").sample
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


def test_real_config_paper_sizes() -> None:
    """The unmodified configs build DiT-B/2 (hidden 768, depth 12, 12 heads) on 32×32×4 latents."""
    import yaml

    for config in REAL_CONFIGS:
        network = yaml.safe_load(config.read_text())["model"]["init_args"]["network"]
        sizes = (network["hidden_size"], network["depth"], network["num_heads"], network["mlp_ratio"])
        assert sizes == (768, 12, 12, 4.0)
        assert (network["sample_size"], network["in_channels"]) == (32, 4)
        batch = yaml.safe_load(config.read_text())["data"]["init_args"]["batch_size"]
        assert batch == (64 if "celeba" in config.name else 256)  # the official training commands


def test_training_configs_export_under_runs() -> None:
    """A training run with its defaults never overwrites the shipped weights under data/models/."""
    import yaml

    root = Path(__file__).resolve().parents[1] / "configs"
    exports = {p.name: yaml.safe_load(p.read_text())["model"]["init_args"].get("export_dir")
               for p in sorted([*root.glob("train/*.yaml"), *root.glob("shortcut/*.yaml")])}
    assert exports and all(str(folder).startswith("runs/") for folder in exports.values()), exports


def test_results_section_is_replaced_not_duplicated(tmp_path: Path) -> None:
    from benchmarks.shortcut_fid import SECTION, write_section

    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n## Other\n\nkeep me\n")
    write_section(path, f"{SECTION}\n\nfirst\n")
    write_section(path, f"{SECTION}\n\nsecond\n")
    text = path.read_text()
    assert text.count(SECTION) == 1 and "second" in text and "first" not in text and "keep me" in text
