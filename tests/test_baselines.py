"""The paper's baselines (AdjointDPM, DOODL) and SDO with an exact tail, against exact references.

- adjoint: with Euler on the scheduler's levels its forward IS the scheduler's chain; its gradient tends
  to full backprop through a fine diffusers Euler chain of the same ODE as its solver steps grow; with
  ``states=ends`` its saved tensors do not grow with N, by default they grow by one latent per level;
- doodl: EDICT inverts its own forward; with an input-blind denoiser EDICT is DDIM; the backward (inputs kept,
  or rebuilt) equals autograd through the same EDICT chain; saved tensors flat in N with ``states=ends``,
  two latents per step by default;
(the official code's defaults, call counts and DOODL's two-image loss: tests/test_official_baselines.py)
- sdo tail: tail = N is ``full`` bit for bit, forward values are plain sampling's; recompute gives the same
  gradient without the kept graph in the forward;
- policy strings and one-line errors.

Bit for bit, by construction: tail = N plans the same call modes as ``full``, so it runs the same calls; a
checkpointed call re-runs the kept call's operations on the same inputs in backward; forward values with a
kept tail are plain sampling's (grad mode changes no kernel or shape). The adjoint and EDICT references use
other arithmetic (float64 ODE levels, another chain's autograd): their tolerances are stated where compared.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_unet
from torch import Tensor, nn
from torch.nn.functional import cosine_similarity

from lit_sdo.callbacks import SavedTensorMeter
from lit_sdo.sampling import GradientPolicy, PixelUNetDenoiser, as_policy, build_scheduler, parse_policy, sample
from lit_sdo.sampling.edict import EdictChain
from lit_sdo.sampling.flow_ode import probability_flow
from lit_sdo.sampling.policies import CallMode

SHAPE = (1, 8, 8)


class ShiftConditionedDenoiser(PixelUNetDenoiser):
    """A tiny UNet whose condition is a float tensor added to its input: cond gradients have a path."""

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        return self.network(x + 0.3 * cond, t).sample


class InputBlindDenoiser(PixelUNetDenoiser):
    """ε depends on t only: both EDICT sequences see the same ε, so EDICT is DDIM."""

    def predict(self, x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        return torch.sin(t.double().view(-1, 1, 1, 1) / 300) * torch.ones_like(x)


def denoiser(trainable: bool = False) -> PixelUNetDenoiser:
    return PixelUNetDenoiser(make_tiny_unet(num_class_embeds=3).double()).requires_grad_(trainable)


def latent(batch: int = 2, seed: int = 0) -> Tensor:
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def weights(batch: int = 2) -> Tensor:
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def linear_loss(z: Tensor) -> Tensor:
    return (z * weights(z.shape[0])).sum()


def squared_loss(z: Tensor) -> Tensor:
    """Not linear in z: the mean of two images' losses is not the loss of their mean."""
    return (z * weights(z.shape[0])).sum((1, 2, 3)).square().sum()


def gradients(model: nn.Module, scheduler, policy, x: Tensor, cond: Tensor | None, wrt_cond: bool = False,
              start_step: int = 0, loss_fn=linear_loss) -> list[Tensor]:
    """d loss/d(x, [cond], trainable params) of one sampling run; the loss is ``loss_fn`` at x₀, averaged with
    its value at the run's partner image where the policy has one (DOODL over both EDICT images)."""
    x = x.clone().requires_grad_()
    inputs = [x]
    if wrt_cond:
        cond = cond.clone().requires_grad_()
        inputs.append(cond)
    inputs += [p for p in model.parameters() if p.requires_grad]
    out = sample(model, scheduler, x, cond, policy=policy, start_step=start_step)
    images = [out.sample] if out.partner is None else [out.sample, out.partner]
    return list(torch.autograd.grad(sum(loss_fn(z) for z in images) / len(images), inputs))


def cosine(a: list[Tensor], b: list[Tensor]) -> float:
    flat = lambda grads: torch.cat([g.flatten() for g in grads])  # noqa: E731
    return float(cosine_similarity(flat(a), flat(b), dim=0))


def saved_bytes(run) -> int:
    """Bytes autograd saves for backward while ``run()`` builds its graph."""
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return total


def held_for_backward(model: nn.Module, policy: str, steps: int) -> tuple[int, int]:
    """(peak, what is left after) of the bytes autograd holds over one gradient, its backward included."""
    meter = SavedTensorMeter.excluding_weights_of(model)
    with meter.hooks():
        out = sample(model, build_scheduler("ddim", steps), latent().requires_grad_(), torch.tensor([0, 1]),
                     policy=policy)
        (out.sample * weights()).sum().backward()
    return meter.peak, meter.live


# ---------------------------------------------------------------- adjoint
@pytest.mark.parametrize(("scheduler_name", "start_step"), [("ddim", 0), ("ddim", 2), ("euler", 1), ("flow_euler", 0)])
@pytest.mark.parametrize("states", ["all", "ends"])
def test_adjoint_euler_forward_is_the_scheduler_chain(scheduler_name: str, start_step: int, states: str) -> None:
    model, scheduler, labels = denoiser(), build_scheduler(scheduler_name, 5), torch.tensor([0, 2])
    plain = sample(model, scheduler, latent(), labels, policy="none", start_step=start_step).sample
    policy = f"adjoint-solver=euler-states={states}"
    adjoint = sample(model, scheduler, latent().requires_grad_(), labels, policy=policy, start_step=start_step)
    # the schedulers keep ᾱ/σ in float32; the ODE view reads them in float64
    torch.testing.assert_close(adjoint.sample.detach(), plain, rtol=1e-5, atol=1e-5)


def fine_euler_reference(model: nn.Module, levels: list[float], steps: int, x: Tensor, cond: Tensor) -> list[Tensor]:
    """Full backprop through diffusers' Euler chain on ``steps`` geometric σ levels between the same ends."""
    sigmas = torch.logspace(torch.tensor(levels[0]).log10(), torch.tensor(levels[-2]).log10(), steps).tolist()
    fine = build_scheduler("euler", 1)
    fine.set_timesteps(sigmas=sigmas + [levels[-1]])
    return gradients(model, fine, "full", x, cond, wrt_cond=True)


@pytest.mark.slow  # ~15 s: a 100-step full-backprop reference
def test_adjoint_gradient_tends_to_the_exact_one_as_solver_steps_grow() -> None:
    torch.manual_seed(0)
    model = ShiftConditionedDenoiser(make_tiny_unet(num_class_embeds=None).double())
    model.requires_grad_(False)
    model.network.conv_out.requires_grad_(True)  # a few trainable weights, as LoRA would be
    levels = [4.0, 1.5, 0.5, 0.1, 0.0]
    coarse = build_scheduler("euler", 1)
    coarse.set_timesteps(sigmas=levels)
    x, cond = latent(1), latent(1, seed=5)
    exact = fine_euler_reference(model, levels, 100, x, cond)  # 0.99991 cosine to a 400-step one
    cos = {(solver, m): cosine(gradients(model, coarse, GradientPolicy("adjoint", solver=solver, substeps=m), x,
                                         cond, wrt_cond=True), exact)
           for solver, m in [("euler", 1), ("euler", 2), ("rk4", 1), ("rk4", 2)]}
    assert cos[("euler", 1)] < cos[("euler", 2)] < cos[("rk4", 1)] < cos[("rk4", 2)]
    assert cos[("rk4", 2)] >= 0.999, cos


@pytest.mark.parametrize(("scheduler_name", "start_step"), [("ddim", 2), ("euler", 1), ("flow_euler", 1)])
def test_adjoint_equals_full_when_the_denoiser_ignores_its_input(scheduler_name: str, start_step: int) -> None:
    """ε(t) only: x₀ is affine in the start latent, every solver is exact, and so is the adjoint's gradient."""
    model = InputBlindDenoiser(make_tiny_unet().double()).requires_grad_(False)
    scheduler = build_scheduler(scheduler_name, 5)
    labels = torch.tensor([0, 0])
    full = gradients(model, scheduler, "full", latent(), labels, start_step=start_step)
    adjoint = gradients(model, scheduler, "adjoint-solver=midpoint", latent(), labels, start_step=start_step)
    torch.testing.assert_close(adjoint, full, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("solver", ["euler", "explicit_adams"])
def test_adjoint_ends_saved_memory_is_flat_in_the_number_of_steps(solver: str) -> None:
    model, labels, policy = denoiser(trainable=True), torch.tensor([0, 1]), f"adjoint-solver={solver}-states=ends"

    def run(name: str, steps: int) -> None:
        sample(model, build_scheduler("ddim", steps), latent().requires_grad_(), labels, policy=name)

    assert saved_bytes(lambda: run(policy, 3)) == saved_bytes(lambda: run(policy, 12))
    assert saved_bytes(lambda: run("full", 12)) > 3 * saved_bytes(lambda: run("full", 3))  # the hook counts
    # backward included, where the adjoint ODE rebuilds one call's graph per step and frees it
    assert held_for_backward(model, policy, 3) == held_for_backward(model, policy, 12)
    assert held_for_backward(model, "full", 12)[0] > 3 * held_for_backward(model, "full", 3)[0]


def test_adjoint_all_states_keep_one_latent_per_level() -> None:
    """The official way stores the state at each of the N + 1 levels (and the level itself, one float64)."""
    model, labels = denoiser(trainable=True), torch.tensor([0, 1])

    def run(steps: int) -> int:
        return saved_bytes(lambda: sample(model, build_scheduler("ddim", steps), latent().requires_grad_(), labels,
                                          policy="adjoint"))

    one_level = latent().numel() * 8 + 8  # (B, C, H, W) float64 and its σ
    assert run(12) - run(3) == 9 * one_level


# ---------------------------------------------------------------- doodl / EDICT
@pytest.mark.parametrize("leapfrog", [True, False])
def test_edict_inverts_its_own_forward(leapfrog: bool) -> None:
    chain = EdictChain(denoiser(), probability_flow(build_scheduler("ddim", 10)), torch.tensor([1, 2]),
                       leapfrog=leapfrog)
    start = latent()
    with torch.no_grad():
        x, y = chain.run(start, start)
        for i in reversed(range(chain.flow.num_steps)):
            x, y = chain.inverse_step(x, y, i)
    assert (x - start).abs().max() <= 1e-8 and (y - start).abs().max() <= 1e-8


def test_edict_with_an_input_blind_denoiser_is_ddim() -> None:
    model = InputBlindDenoiser(make_tiny_unet().double())
    scheduler = build_scheduler("ddim", 6)
    plain = sample(model, scheduler, latent(), torch.tensor([0, 0]), policy="none").sample
    edict = sample(model, scheduler, latent(), torch.tensor([0, 0]), policy="doodl").sample
    torch.testing.assert_close(edict, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("scheduler_name", "start_step"), [("ddim", 0), ("ddim", 3), ("euler", 1), ("flow_euler", 0)])
@pytest.mark.parametrize(("states", "images"), [("all", "both"), ("all", "first"), ("ends", "both"), ("ends", "first")])
def test_doodl_gradient_equals_autograd_through_the_same_edict_chain(scheduler_name: str, start_step: int,
                                                                     states: str, images: str) -> None:
    model = ShiftConditionedDenoiser(make_tiny_unet(num_class_embeds=None).double())
    model.requires_grad_(False)
    model.network.conv_out.requires_grad_(True)
    scheduler = build_scheduler(scheduler_name, 6)
    x, cond = latent(), latent(seed=5)
    doodl = gradients(model, scheduler, f"doodl-states={states}-images={images}", x, cond, wrt_cond=True,
                      start_step=start_step, loss_fn=squared_loss)

    chain = EdictChain(model, probability_flow(scheduler, start_step), cond.clone().requires_grad_())
    x_in = x.clone().requires_grad_()
    y_start = chain.flow.to_state(x_in)
    x0, y0 = (chain.flow.from_state(z) for z in chain.run(y_start, y_start))  # the same chain, by autograd
    # DOODL's loss over both images is the mean of the two losses (not the loss of their mean: it is not linear)
    loss = squared_loss(x0) if images == "first" else (squared_loss(x0) + squared_loss(y0)) / 2
    inputs = [x_in, chain.cond, model.network.conv_out.weight, model.network.conv_out.bias]
    reference = torch.autograd.grad(loss, inputs)
    for got, expected in zip(doodl, reference, strict=True):  # float64: only the order of the sums differs
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-10)


def test_doodl_ends_saved_memory_is_flat_in_the_number_of_steps() -> None:
    model, labels = denoiser(trainable=True), torch.tensor([0, 1])

    def run(steps: int) -> None:
        sample(model, build_scheduler("ddim", steps), latent().requires_grad_(), labels, policy="doodl-states=ends")

    assert saved_bytes(lambda: run(3)) == saved_bytes(lambda: run(12))
    assert held_for_backward(model, "doodl-states=ends", 3) == held_for_backward(model, "doodl-states=ends", 12)


def test_doodl_kept_inputs_are_two_latents_per_step() -> None:
    model, labels = denoiser(trainable=True), torch.tensor([0, 1])

    def run(steps: int) -> int:
        return saved_bytes(lambda: sample(model, build_scheduler("ddim", steps), latent().requires_grad_(), labels,
                                          policy="doodl"))

    assert run(12) - run(3) == 9 * 2 * latent().numel() * 8  # the pair (x_i, y_i) of each step, float64


# ---------------------------------------------------------------- sdo with an exact tail
@pytest.mark.parametrize("scheduler_name", ["ddim", "ddpm", "dpm", "euler", "flow_euler"])
def test_sdo_tail_over_all_steps_is_full_bit_for_bit(scheduler_name: str) -> None:
    model, labels = denoiser(), torch.tensor([1, 2])

    def grad(policy: GradientPolicy | str) -> Tensor:
        x = latent().requires_grad_()
        out = sample(model, build_scheduler(scheduler_name, 4), x, labels, policy=policy,
                     generator=torch.Generator().manual_seed(3))
        (out.sample * weights()).sum().backward()
        return x.grad

    assert torch.equal(grad(GradientPolicy("sdo", tail=4)), grad("full"))
    assert torch.equal(grad("sdo-k=2-tail=4"), grad("full"))


@pytest.mark.parametrize("policy", ["sdo", "sdo-k=2", "sdo-tail=2", "sdo-random-seed=3"])
def test_sdo_recompute_is_the_same_gradient_without_the_kept_graph_in_the_forward(policy: str) -> None:
    model, scheduler, labels = denoiser(trainable=True), build_scheduler("ddim", 4), torch.tensor([0, 2])
    kept = gradients(model, scheduler, as_policy(policy), latent(), labels)  # x_T and every weight
    recomputed = gradients(model, scheduler, as_policy(f"{policy}-recompute=true"), latent(), labels)
    assert all(torch.equal(a, b) for a, b in zip(kept, recomputed, strict=True))
    forward = lambda name: saved_bytes(lambda: sample(  # noqa: E731
        model, scheduler, latent().requires_grad_(), labels, policy=name))
    # the checkpointed calls save their inputs (x_t, t, labels) only, not the UNet's activations
    assert forward(f"{policy}-recompute=true") < forward(policy) / 10
    plan = as_policy(f"{policy}-recompute=true").plan(4, torch.Generator().manual_seed(0))
    assert plan.count(CallMode.CHECKPOINT) == (3 if "tail" in policy else 1) and CallMode.GRAPH not in plan


def test_sdo_tail_keeps_step_k_and_the_last_m_calls_and_leaves_forward_values_alone() -> None:
    model, labels, scheduler = denoiser(), torch.tensor([1, 2]), build_scheduler("ddim", 6)
    plain = sample(model, scheduler, latent(), labels, policy="none").sample
    out = sample(model, scheduler, latent().requires_grad_(), labels, policy="sdo-tail=2")
    assert out.graph_steps == [0, 4, 5]
    assert torch.equal(out.sample.detach(), plain)
    assert sample(model, scheduler, latent(), labels, policy="sdo-k=4-tail=2").graph_steps == [4, 5]


@pytest.mark.parametrize(("policy", "depth"), [("last_k=2", 2), ("random_truncation-seed=3", 3)])
def test_truncation_recompute_is_the_same_weight_gradient_with_one_call_graph_at_a_time(policy: str,
                                                                                       depth: int) -> None:
    # AlignProp's memory trick: the last K calls keep gradient, each rebuilt in backward. parse_policy gives a
    # fresh policy (its own generator from seed 3: K = 3 on its first draw) for every run.
    model, scheduler, labels = denoiser(trainable=True), build_scheduler("ddim", 4), torch.tensor([0, 2])
    weights_of = [p for p in model.parameters() if p.requires_grad]

    def run(name: str):
        return sample(model, scheduler, latent(), labels, policy=parse_policy(name))

    def weight_gradients(name: str) -> list[Tensor]:
        return list(torch.autograd.grad((run(name).sample * weights()).sum(), weights_of))

    graph, rebuilt = parse_policy(policy).plan(4), parse_policy(f"{policy}-recompute=true").plan(4)
    assert graph.count(CallMode.GRAPH) == depth and graph[:4 - depth] == [CallMode.OFF] * (4 - depth)
    assert rebuilt == [CallMode.CHECKPOINT if mode is CallMode.GRAPH else mode for mode in graph]
    kept, recomputed = weight_gradients(policy), weight_gradients(f"{policy}-recompute=true")
    assert all(torch.equal(a, b) for a, b in zip(kept, recomputed, strict=True))
    assert all(g.abs().sum() > 0 for g in recomputed)
    assert saved_bytes(lambda: run(f"{policy}-recompute=true")) < saved_bytes(lambda: run(policy)) / 10


# ---------------------------------------------------------------- strings and errors
@pytest.mark.parametrize("policy", [
    GradientPolicy("sdo"), GradientPolicy("sdo", k="random"), GradientPolicy("sdo", k=3, tail=4),
    GradientPolicy("sdo", recompute=True), GradientPolicy("sdo", k="random", tail=2, seed=3),
    GradientPolicy("last_k", last_k=2), GradientPolicy("last_k", last_k=3, recompute=True),
    GradientPolicy("random_truncation", recompute=True, seed=2),
    GradientPolicy("adjoint", solver="rk4", substeps=4), GradientPolicy("adjoint", solver="explicit_adams"),
    GradientPolicy("adjoint", states="ends"), GradientPolicy("adjoint", solver="euler", substeps=2, states="ends"),
    GradientPolicy("adjoint", solver="dopri5", rtol=1e-4), GradientPolicy("doodl", mixing=0.9, leapfrog=False),
    GradientPolicy("doodl", states="ends", images="first"),
])
def test_policy_string_form_round_trips(policy: GradientPolicy) -> None:
    assert as_policy(policy.label) == policy


def test_policy_strings_read_the_benchmark_labels() -> None:
    assert as_policy("sdo-tail=4") == GradientPolicy("sdo", tail=4)
    assert as_policy("sdo-random") == GradientPolicy("sdo", k="random")
    assert as_policy("last_k=1") == GradientPolicy("last_k", last_k=1)
    assert as_policy("doodl") == GradientPolicy("doodl", mixing=0.93, states="all", images="both")
    assert as_policy("adjoint") == GradientPolicy("adjoint", solver=None, states="all")
    assert as_policy("adjoint-states=ends").label == "adjoint-states=ends"


@pytest.mark.parametrize(("policy", "scheduler_name", "message"), [
    ("adjoin", "ddim", "policy name='adjoin' is unknown; allowed values: none, sdo, .*adjoint, doodl"),
    ("sdo-tail=5", "ddim", "policy tail=5 exceeds the run's 4 steps"),
    ("full-tail=2", "ddim", "tail=2 applies to 'sdo' only"),
    ("checkpoint-recompute=true", "ddim",
     "recompute=True applies to sdo, last_k, random_truncation only, not 'checkpoint'; use 'checkpoint'"),
    ("adjoint-solver=heun", "ddim", "policy solver='heun' is unknown; allowed values: euler, midpoint, rk4"),
    ("adjoint-substeps=0", "ddim", "substeps=0 must be an integer >= 1"),
    ("doodl-mixing=1.5", "ddim", r"mixing=1.5 must be in \(0, 1\]"),
    ("sdo-depth=2", "ddim", "option 'depth=2' is unknown; allowed: random, k=..."),
    ("sdo-tail=two", "ddim", "tail='two' must be an int"),
    ("doodl", "ddpm", "policy 'doodl' cannot run on DDPMScheduler: .*allowed schedulers: DDIMScheduler"),
    ("doodl", "dpm", "policy 'doodl' cannot run on DPMSolverMultistepScheduler"),
    ("doodl", "lcm", "policy 'doodl' cannot run on LCMScheduler"),
    ("doodl-states=ends", "ddpm", "policy 'doodl' cannot run on DDPMScheduler"),
    ("adjoint-solver=explicit_adams-substeps=2", "ddim",
     "policy substeps=2 cannot refine solver='explicit_adams' .*e.g. adjoint-solver=rk4-substeps=2"),
    ("adjoint-substeps=3", "ddim", "policy substeps=3 cannot refine solver='explicit_adams'"),  # the pixel default
    ("adjoint-states=some", "ddim", "policy states='some' is unknown; allowed values: all, ends"),
    ("sdo-states=ends", "ddim", "policy states='ends' applies to adjoint, doodl only, not 'sdo'"),
    ("doodl-images=second", "ddim", "policy images='second' is unknown; allowed values: both, first"),
])
def test_bad_policy_input_gives_one_line_value_error(policy: str, scheduler_name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        sample(denoiser(), build_scheduler(scheduler_name, 4), latent(), torch.tensor([0, 0]), policy=policy)
    assert "\n" not in str(error.value)
