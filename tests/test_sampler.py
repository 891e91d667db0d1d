"""The Sampler as the one owner of a sampling run (lit_sdo.models.sampler): one gradient policy parsed once from
the spec's string form and fields, one run seed the policy's draws derive from, the spec's precision on every
no-grad model call whatever the policy (float32 where a result is measured), conditions, encode and decode.

Precision tests patch oneDNN's probe to report bf16 kernels: PyTorch runs bf16 on any CPU (slowly where it
emulates), so the dtypes seen here are those a CPU with the kernels would see."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_generator
from torch import Tensor, nn

from lit_sdo.models import DiffusionModel
from lit_sdo.models.sampler import Sampler, SamplerSpec
from lit_sdo.sampling import GradientPolicy, LatentUNetDenoiser, parse_policy
from lit_sdo.sampling import precision as precision_module

NUM_STEPS = 4
LABELS = torch.tensor([0, 2])


def pixel_sampler(**spec: object) -> Sampler:
    return Sampler(SamplerSpec(**({"model": "tiny-ddpm", "num_steps": NUM_STEPS} | spec)), model=tiny_generator())


class CallRecorder:
    """Per denoiser network call: whether it built a graph, and the dtype its first convolution computed in."""

    def __init__(self, network: nn.Module) -> None:
        self.calls: list[tuple[bool, torch.dtype]] = []
        network.conv_in.register_forward_hook(
            lambda _m, _i, out: self.calls.append((torch.is_grad_enabled(), out.dtype)))

    def take(self) -> list[tuple[bool, torch.dtype]]:
        calls, self.calls = self.calls, []
        return calls


# ----- the spec: one policy -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "expected"), [
    ({"policy": "sdo-tail=4"}, GradientPolicy("sdo", tail=4)),
    ({"policy": "sdo", "k": "random"}, GradientPolicy("sdo", k="random")),
    ({"policy": "sdo-k=3", "k": 0}, GradientPolicy("sdo", k=3)),  # a field at its default leaves the string's
    ({"policy": "sdo-tail=4", "tail": 2}, GradientPolicy("sdo", tail=2)),  # a field set wins
    ({"policy": "last_k", "last_k": 3}, GradientPolicy("last_k", last_k=3)),
    ({"policy": GradientPolicy("sdo", tail=1), "k": 2}, GradientPolicy("sdo", k=2, tail=1)),
])
def test_the_spec_holds_one_policy_parsed_once(options: dict, expected: GradientPolicy) -> None:
    spec = SamplerSpec(**options)
    assert spec.policy == expected
    assert {f.name for f in dataclasses.fields(spec)}.isdisjoint({"k", "last_k", "tail", "policy_seed"})
    assert json.loads(json.dumps(spec.as_dict()))["policy"] == expected.label
    assert parse_policy(spec.as_dict()["policy"]) == expected  # the written form reads back


def test_a_second_seed_is_refused_in_one_line() -> None:
    assert SamplerSpec(policy_seed=0).seed == 0  # what the shipped reward configs still say
    assert SamplerSpec(seed=2, policy_seed=2).seed == 2
    with pytest.raises(ValueError, match=r"^policy_seed=3 differs from seed=0: [^\n]*set seed$"):
        SamplerSpec(policy_seed=3)
    with pytest.raises(ValueError, match=r"^policy 'sdo-random-seed=3' sets seed=3: [^\n]*seed: 3$"):
        SamplerSpec(policy="sdo-random-seed=3")


def test_a_spec_survives_a_weights_only_load(tmp_path: Path) -> None:
    """Checkpoints keep the spec in their hyper-parameters; ``fit --ckpt_path`` reads them weights-only."""
    spec = SamplerSpec(policy="sdo-tail=2", k="random", precision="bf16")
    torch.save({"sampler": spec}, tmp_path / "spec.pt")
    assert torch.load(tmp_path / "spec.pt", weights_only=True)["sampler"] == spec


def test_a_sampler_is_built_with_its_policy_and_keeps_it() -> None:
    sampler = pixel_sampler(policy="sdo-tail=4")
    assert sampler.policy is sampler.spec.policy
    with pytest.raises(AttributeError):
        sampler.policy = parse_policy("full")  # type: ignore[misc]  # a policy set later would skip the checks
    with pytest.raises(ValueError, match=r"^policy tail=5 exceeds the run's 4 steps"):
        pixel_sampler(policy="sdo-tail=5")


# ----- seeds -------------------------------------------------------------------------------------------------
def graph_step(recorder: CallRecorder) -> int:
    """Index of the one call that built a graph (SDO)."""
    grads = [grad for grad, _ in recorder.take()]
    assert sum(grads) == 1
    return grads.index(True)


def test_a_given_generator_with_another_guidance_than_the_spec_is_refused_in_one_line() -> None:
    """Guidance is built into the loaded adapter: a spec that says another scale would be silently ignored."""
    with pytest.raises(ValueError, match=r"^generator 'tiny-ddpm' was loaded with guidance_scale=1 but the spec "
                                         r"says 3; load it with load_diffusion\('tiny-ddpm', guidance_scale=3\)"):
        pixel_sampler(guidance_scale=3.0)
    assert pixel_sampler(guidance_scale=1.0).spec.guidance_scale == 1.0


def test_the_policys_draws_derive_from_the_run_seed_and_the_key() -> None:
    """SDO's random k of the run named ``policy_key`` is drawn from ``seed * 1_000_003 + policy_key``."""
    for seed in (0, 5):
        sampler = pixel_sampler(k="random", seed=seed)
        recorder = CallRecorder(sampler.denoiser.network)
        x = sampler.initial_noise([0, 1]).requires_grad_(True)
        drawn = []
        for key in range(6):
            sampler.generate(x, LABELS, policy_key=key)
            expected = int(torch.randint(NUM_STEPS, (1,), generator=torch.Generator().manual_seed(
                seed * 1_000_003 + key)).item())
            drawn.append(graph_step(recorder))
            assert drawn[-1] == expected, (seed, key)
        assert len(set(drawn)) > 1  # the key names the run: another run draws anew
        sampler.generate(x, LABELS, policy_key=3)
        assert graph_step(recorder) == drawn[3]  # ... and the same run draws the same (a resume, another rank)


# ----- precision ---------------------------------------------------------------------------------------------
def test_the_precision_reaches_every_no_grad_call_whatever_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "_cpu_probe", lambda name: name == "_is_mkldnn_bf16_supported")
    sampler = pixel_sampler(precision="bf16")
    recorder = CallRecorder(sampler.denoiser.network)
    x = sampler.initial_noise([0, 1]).requires_grad_(True)
    bf16, fp32 = torch.bfloat16, torch.float32
    assert sampler.generate(x, LABELS).dtype == fp32  # the spec's sdo: k = 0 keeps its graph in float32
    assert recorder.take() == [(True, fp32)] + [(False, bf16)] * (NUM_STEPS - 1)
    sampler.generate(x, LABELS, "none")  # an explicit policy (the reward job's route) keeps the precision
    assert recorder.take() == [(False, bf16)] * NUM_STEPS
    sampler.generate(x, LABELS, "full")
    assert recorder.take() == [(True, fp32)] * NUM_STEPS
    assert sampler.evaluate(x, LABELS).dtype == fp32  # measuring is float32, said by the method's name
    assert recorder.take() == [(False, fp32)] * NUM_STEPS


def test_a_precision_the_device_cannot_run_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "_cpu_probe", lambda name: False)  # a CPU without bf16 kernels
    sampler = pixel_sampler(precision="bf16")  # the device is known when a job sets up, not here
    for run in (lambda: sampler.check_precision("cpu"), lambda: sampler.generate(sampler.initial_noise([0]), LABELS)):
        with pytest.raises(ValueError, match=r"^precision 'bf16' is not supported on cpu [^\n]*$"):
            run()
    pixel_sampler().check_precision("cpu")  # float32 runs everywhere


# ----- conditions, encode, decode --------------------------------------------------------------------------------
class PromptEncoder:
    """Text embeddings (B, 3, 8) that depend on the prompt only; remembers every batch it was asked for."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> Tensor:
        self.batches.append(list(prompts))
        return torch.stack([embedding(p) for p in prompts])


def embedding(prompt: str) -> Tensor:
    return torch.randn(3, 8, generator=torch.Generator().manual_seed(sum(map(ord, prompt))))


def latent_sampler() -> tuple[Sampler, nn.Module, PromptEncoder]:
    from test_models import tiny_text_unet, tiny_vae

    vae, encoder = tiny_vae().eval(), PromptEncoder()
    model = DiffusionModel("tiny-sd", LatentUNetDenoiser(tiny_text_unet(), vae).eval(), {}, None, 16, 3,
                           encode_prompt=encoder)
    return Sampler(SamplerSpec(model="tiny-sd", num_steps=2), model=model), vae, encoder


def test_condition_embeds_each_prompt_once_and_passes_labels_through() -> None:
    sampler, _, encoder = latent_sampler()
    cond = sampler.condition(prompts=["a", "b", "a"])
    assert cond.shape == (3, 3, 8) and encoder.batches == [["a", "b"]]
    torch.testing.assert_close(cond, torch.stack([embedding(p) for p in ["a", "b", "a"]]), rtol=0, atol=0)
    sampler.condition(prompts=["b", "c"])
    assert encoder.batches == [["a", "b"], ["c"]]  # only the prompt it has not seen
    torch.testing.assert_close(sampler.condition(LABELS), torch.stack([embedding("")] * 2), rtol=0, atol=0)
    pixel = pixel_sampler()
    assert pixel.condition(LABELS, ["a digit", "a digit"]) is LABELS  # a class model ignores the objective's text


def test_encode_maps_images_to_the_latents_decode_reads() -> None:
    sampler, vae, _ = latent_sampler()
    images = torch.rand(2, 3, 16, 16) * 2 - 1  # (B, C, H, W) in [-1, 1]
    with torch.no_grad():
        latents = sampler.encode(images)
        reference = vae.encode(images).latent_dist.mean * vae.config.scaling_factor  # diffusers' convention
        torch.testing.assert_close(latents, reference, rtol=0, atol=0)  # the same calls on the same input
        assert latents.shape == (2, *sampler.latent_shape)
        decoded = sampler.decode(latents)
        torch.testing.assert_close(decoded, vae.decode(latents / vae.config.scaling_factor).sample, rtol=0, atol=0)
    pixel = pixel_sampler()
    x = torch.rand(2, 1, 8, 8)
    assert pixel.encode(x) is x and pixel.decode(x) is x


def test_the_command_line_type_checks_the_policy_fields() -> None:
    """``k`` / ``last_k`` / ``tail`` are constructor arguments, not fields: the CLI still checks their types."""
    import cli

    root = Path(__file__).resolve().parents[1]
    for option, message in (("k=abc", "expected an int"), ("last_k=two", "expected an int")):
        with pytest.raises(cli.ConfigError, match=rf"model.init_args.sampler.{option.split('=')[0]}: .*{message}"):
            cli.parse_command_line(["fit", "--config", str(root / "configs/attack/digits.yaml"),
                                    f"--model.init_args.sampler.{option}"])
