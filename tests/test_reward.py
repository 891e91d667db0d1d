"""Reward fine-tuning on tiny models: which steps carry gradient, what trains, resume, NaN, DDP, rewards.

Bit for bit, by construction: resume vs an uninterrupted run (an exact restore, then the same operations on
the same shapes in the same order) and the NaN stop's checkpoint (a copy of the last good LoRA). Two DDP
ranks vs one device to 1e-5: all-reduce averages the ranks' gradients where one device accumulates the
micro-batches, other sums in float32."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from diffusers import DDPMScheduler

from lit_sdo.callbacks import NaNStop, StepCost
from lit_sdo.datamodules import RewardPromptDataModule
from lit_sdo.images import to_unit_range
from lit_sdo.io import read_tensors, write_tensors
from lit_sdo.lora import lora_parameters
from lit_sdo.models.networks import build_network
from lit_sdo.models.sampler import SamplerSpec
from lit_sdo.objectives import ClassLogProbReward, EmbeddingMLPReward, InkReward, PreferenceReward
from lit_sdo.sampling import GradientPolicy, noise_for_seeds, sample
from lit_sdo.tasks.reward import RewardFinetuneModule
from lit_sdo.tasks.train_classifier import export_classifier
from lit_sdo.tasks.train_diffusion import export_diffusion

ROOT = Path(__file__).resolve().parents[1]
NUM_STEPS = 4  # sampling steps of the tiny runs
SAMPLER_FIELDS = {"num_steps", "policy", "k", "last_k", "guidance_scale", "policy_seed"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny 2-class attention DDPM and a tiny 2-class ResNet, exported like the shipped models."""
    from test_lora import make_attention_unet

    root = tmp_path_factory.mktemp("reward-models")
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    ddpm = export_diffusion(make_attention_unet(), scheduler, root / "ddpm", num_classes=2)
    torch.manual_seed(0)
    kwargs = {"in_chans": 1, "layers": [1, 1, 1, 1], "channels": [4, 4, 4, 4]}
    resnet = export_classifier(build_network("resnet", num_classes=2, **kwargs), root / "resnet", "resnet", kwargs,
                               num_classes=2, input_size=8)
    return SimpleNamespace(ddpm=ddpm, resnet=resnet)


def make_module(folders: SimpleNamespace, out: Path, reward: torch.nn.Module | None = None,
                **kwargs: object) -> RewardFinetuneModule:
    L.seed_everything(0, verbose=False)  # LoRA's A matrices are drawn at injection
    reward = reward if reward is not None else ClassLogProbReward(str(folders.resnet))
    spec = {"model": str(folders.ddpm), "num_steps": NUM_STEPS, "k": "random"} | {
        k: kwargs.pop(k) for k in list(kwargs) if k in SAMPLER_FIELDS}
    options = {"grid_every_n_steps": 100, "grid_samples": 2, "output_dir": str(out)} | kwargs
    return RewardFinetuneModule(sampler=SamplerSpec(**spec), reward=reward, **options)


def fit(module: RewardFinetuneModule, out: Path, steps: int, samples_per_step: int = 4, batch_size: int = 2,
        accumulate: int = 2, callbacks: list | None = None, ckpt_path: str | None = None) -> L.Trainer:
    data = RewardPromptDataModule(num_classes=2, samples_per_step=samples_per_step, batch_size=batch_size)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=steps, accumulate_grad_batches=accumulate,
                        logger=False, enable_checkpointing=bool(callbacks), callbacks=callbacks or [],
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer


class GradCapture(L.Callback):
    """The LoRA gradients the optimiser is about to apply (before any clipping)."""

    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer: object) -> None:
        self.grads.append([p.grad.clone() for p in lora_parameters(module.denoiser.network)])


def lora_state(module: RewardFinetuneModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("policy", ["sdo", "random_truncation", "last_k", "random_truncation-recompute=true"])
def test_gradient_comes_from_the_policys_steps_and_equals_the_fixed_k_reference(
        folders: SimpleNamespace, tmp_path: Path, policy: str) -> None:
    module = make_module(folders, tmp_path, policy=policy, k="random", last_k=1)
    recompute, policy = policy.endswith("-recompute=true"), policy.removesuffix("-recompute=true")
    initial = lora_state(module)
    graph_calls: list[bool] = []
    module.denoiser.network.register_forward_hook(lambda *_: graph_calls.append(torch.is_grad_enabled()))
    capture = GradCapture()
    fit(module, tmp_path, steps=1, samples_per_step=2, accumulate=1, callbacks=[capture])
    # The policy's draw for the one micro-batch (noise seeds 0, 1): the module's documented rule.
    draw = int(torch.randint(NUM_STEPS, (1,), generator=torch.Generator().manual_seed(0)).item())
    expected_calls = {"sdo": 1, "random_truncation": draw + 1, "last_k": 1}[policy]
    if not recompute:  # (a rebuilt call runs once more in backward)
        assert sum(graph_calls) == expected_calls  # grids and eval run without graph

    # Reference: the same micro-batch with the drawn step(s) fixed, gradients by autograd.
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in initial:
                param.copy_(initial[name])
    reference_policy = {"sdo": GradientPolicy("sdo", k=draw), "random_truncation": GradientPolicy(
        "last_k", last_k=draw + 1), "last_k": GradientPolicy("last_k", last_k=1)}[policy]
    labels = torch.tensor([0, 1])

    def gradient(policy_: GradientPolicy) -> list[torch.Tensor]:
        x = noise_for_seeds([0, 1], module.denoiser.sample_shape)
        images = to_unit_range(sample(module.denoiser, module.sampler.scheduler, x, labels, policy=policy_).sample)
        loss = -module.reward(images, {"label": labels}).mean()
        return list(torch.autograd.grad(loss, lora_parameters(module.denoiser.network)))

    for got, want in zip(capture.grads[0], gradient(reference_policy), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    assert sum(g.abs().sum() for g in capture.grads[0]) > 0
    if policy == "sdo":  # another step's gradient differs: the test can tell which step was used
        other = gradient(GradientPolicy("sdo", k=(draw + 1) % NUM_STEPS))
        assert any(not torch.allclose(a, b) for a, b in zip(capture.grads[0], other, strict=True))


def test_only_lora_weights_change(folders: SimpleNamespace, tmp_path: Path) -> None:
    module = make_module(folders, tmp_path, lr=1e-2)
    before = {n: t.clone() for n, t in module.state_dict().items()}
    fit(module, tmp_path, steps=2)
    after = module.state_dict()
    assert before.keys() == after.keys()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    saved = read_tensors(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert len(saved) == len([n for n in before if "lora_" in n])


def test_bfloat16_base_keeps_fp32_lora_and_trains(folders: SimpleNamespace, tmp_path: Path) -> None:
    """The GPU recipe (paper Sec. 5.3: frozen base in bf16, LoRA in fp32) run on CPU by asking for it."""
    module = make_module(folders, tmp_path, reward=InkReward(), lr=1e-2, base_dtype="bfloat16")
    before = lora_state(module)
    capture = GradCapture()
    fit(module, tmp_path, steps=2, callbacks=[capture])
    dtypes = {n: p.dtype for n, p in module.denoiser.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in capture.grads[0])
    assert any(not torch.equal(before[n], v) for n, v in lora_state(module).items())


def test_reward_increases_on_a_tiny_problem(folders: SimpleNamespace, tmp_path: Path) -> None:
    module = make_module(folders, tmp_path, reward=InkReward(), lr=0.2, grid_samples=4)
    fit(module, tmp_path, steps=10)
    evals = [row["eval_reward"] for row in module.history if "eval_reward" in row]
    assert len(evals) == 2  # step 0 and the last step, on the same fixed seeds
    assert evals[1] > evals[0] + 0.015, evals  # measured: 0.479 -> 0.504


def test_batch_and_accumulation_that_do_not_divide_are_one_line_errors(folders: SimpleNamespace,
                                                                       tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^samples_per_step=5 is not a multiple of batch_size=2[^\n]*$"):
        RewardPromptDataModule(samples_per_step=5, batch_size=2)
    module = make_module(folders, tmp_path)
    with pytest.raises(ValueError, match=r"accumulate_grad_batches=2 or change[^\n]*$"):
        fit(module, tmp_path, steps=1, samples_per_step=4, batch_size=2, accumulate=1)


class NaNAfter(torch.nn.Module):
    """Ink reward whose training calls (those with gradient) turn NaN from the ``n``-th on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        reward = images.flatten(1).mean(1)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls >= self.n:
                return reward * float("nan")
        return reward


def test_nan_reward_stops_naming_the_step_and_keeps_the_last_good_checkpoint(folders: SimpleNamespace,
                                                                            tmp_path: Path) -> None:
    module = make_module(folders, tmp_path, reward=NaNAfter(3), lr=1e-2)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=1)
    with pytest.raises(FloatingPointError, match=r"^training loss is nan at optimiser step 2 .*last good checkpoint: "
                                                 r"\S+last.ckpt$"):
        fit(module, tmp_path, steps=5, samples_per_step=2, accumulate=1, callbacks=[checkpoint, NaNStop()])
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2
    current = lora_state(module)  # the NaN step never updated the LoRA
    assert set(last["state_dict"]) == set(current)
    for name, value in current.items():
        torch.testing.assert_close(last["state_dict"][name], value, rtol=0, atol=0)


def test_resume_from_checkpoint_continues_the_same_run(folders: SimpleNamespace, tmp_path: Path) -> None:
    straight = make_module(folders, tmp_path / "a", lr=1e-2)
    fit(straight, tmp_path / "a", steps=4)
    first = make_module(folders, tmp_path / "b", lr=1e-2)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=1)
    fit(first, tmp_path / "b", steps=2, callbacks=[checkpoint])
    resumed = make_module(folders, tmp_path / "b", lr=1e-2)
    fit(resumed, tmp_path / "b", steps=4, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=1)])
    for name, value in lora_state(straight).items():
        torch.testing.assert_close(lora_state(resumed)[name], value, rtol=0, atol=0)
    assert [r["step"] for r in resumed.history] == [0, 1, 2, 3, 4]
    assert [r.get("reward") for r in resumed.history] == pytest.approx([r.get("reward") for r in straight.history])


def test_embedded_rewards_match_their_definitions(folders: SimpleNamespace) -> None:
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(InkReward()(images, {}), images.mean((1, 2, 3)))
    torch.testing.assert_close(InkReward(sign=-1, dark_ink=True)(images, {}), -(1 - images).mean((1, 2, 3)))
    reward = ClassLogProbReward(str(folders.resnet))
    log_probs = torch.log_softmax(reward.classifier(images), 1)
    torch.testing.assert_close(reward(images, {"label": torch.tensor([0, 1, 1])}), log_probs[[0, 1, 2], [0, 1, 1]])
    torch.testing.assert_close(ClassLogProbReward(str(folders.resnet), target_class=1)(images, {}), log_probs[:, 1])
    with pytest.raises(ValueError, match="target_class=5 is out of range"):
        ClassLogProbReward(str(folders.resnet), target_class=5)
    with pytest.raises(ValueError, match="needs the samples' labels"):
        reward(images, {"prompt": ["a", "b", "c"]})
    with pytest.raises(ValueError, match=r"sign=2.0 must be 1 \(bolder\) or -1 \(thinner\)"):
        InkReward(sign=2.0)


def test_embedding_mlp_reward_loads_user_weights_and_rejects_wrong_shapes(folders: SimpleNamespace,
                                                                          tmp_path: Path) -> None:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)]  # hidden=(8,): no dropout between, keys 0 and 1
    weights = {"layers.0.weight": layers[0].weight, "layers.0.bias": layers[0].bias,
               "layers.1.weight": layers[1].weight, "layers.1.bias": layers[1].bias}
    write_tensors(tmp_path / "mlp.safetensors", weights)
    reward = EmbeddingMLPReward(str(tmp_path / "mlp.safetensors"), embedder=f"classifier:{folders.resnet}",
                                embed_dim=4, hidden=(8,))
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    features = torch.nn.functional.normalize(reward.embed.classifier.features(images), dim=-1)
    torch.testing.assert_close(reward(images, {}), layers[1](layers[0](features)).squeeze(1).detach())
    with pytest.raises(ValueError, match=r"^MLP weights .* have shapes .* set embed_dim/hidden to match[^\n]*$"):
        EmbeddingMLPReward(str(tmp_path / "mlp.safetensors"), embedder=f"classifier:{folders.resnet}",
                           embed_dim=768)
    with pytest.raises(FileNotFoundError, match="not available locally"):
        EmbeddingMLPReward(str(tmp_path / "none.safetensors"), embedder=f"classifier:{folders.resnet}")


def test_prompt_sets_are_shipped() -> None:
    animals = (ROOT / "data/prompts/animals45.txt").read_text().splitlines()
    assert len(animals) == len(set(animals)) == 45
    assert "a painting of an ant" in animals and "a painting of a cat" in animals
    data = RewardPromptDataModule(classes="data/prompts/digits.txt", samples_per_step=4, batch_size=2)
    assert data.classes == list(range(10))
    positions, seeds = data.conditions(epoch=3, index=torch.tensor([0, 1]))
    assert positions.tolist() == [2, 3] and seeds.tolist() == [12, 13]  # sample 3·4 + j
    with pytest.raises(FileNotFoundError, match="prompt file nowhere.txt does not exist"):
        RewardPromptDataModule(prompts="nowhere.txt")


@pytest.mark.slow
def test_two_ddp_ranks_through_the_cli_give_the_one_device_lora(folders: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(ROOT / "configs/reward/digits.yaml"),
               f"--model.init_args.sampler.model={folders.ddpm}",
               f"--model.init_args.sampler.num_steps={NUM_STEPS}", "--model.init_args.lr=0.01",
               "--model.init_args.grid_samples=2", f"--model.init_args.output_dir={out}",
               "--data.init_args.num_classes=2", "--data.init_args.samples_per_step=4", "--data.init_args.batch_size=2",
               "--trainer.max_epochs=2", "--trainer.gradient_clip_val=null", "--trainer.accumulate_grad_batches=1",
               "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.enable_progress_bar=false",
               f"--trainer.logger.init_args.save_dir={out}"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = read_tensors(out / "lora" / "pytorch_lora_weights.safetensors")

    # One device, accumulating the same two micro-batches (the CLI seeds everything with 0 first too).
    L.seed_everything(0, verbose=False)
    single = RewardFinetuneModule(sampler=SamplerSpec(model=str(folders.ddpm), num_steps=NUM_STEPS, k="random"),
                                  reward=InkReward(), lr=0.01, grid_samples=2, output_dir=str(tmp_path / "one"))
    fit(single, tmp_path / "one", steps=2, samples_per_step=4, batch_size=2, accumulate=2)
    one = read_tensors(tmp_path / "one" / "lora" / "pytorch_lora_weights.safetensors")
    assert ddp.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=0, atol=1e-5)
    assert any(one[key].abs().max() > 0 for key in one if "lora_B" in key)



def test_text_model_with_guidance_trains_its_unet_lora_on_a_prompt_file(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler
    from test_models import save_pipeline, save_tiny_text_encoder, tiny_text_unet, tiny_vae

    unet = tiny_text_unet()
    folder = save_pipeline(tmp_path / "sd", {"unet": unet, "vae": tiny_vae(), "scheduler": DDIMScheduler()})
    save_tiny_text_encoder(folder)
    (tmp_path / "prompts.txt").write_text("a b\nb a\n")
    L.seed_everything(0, verbose=False)
    reward = PromptRecorder()
    module = RewardFinetuneModule(sampler=SamplerSpec(model=str(folder), num_steps=3, guidance_scale=2.0),
                                  reward=reward, grid_samples=2, output_dir=str(tmp_path / "out"), lr=1e-2)
    before = lora_state(module)
    assert any(".attn2.to_k." in name for name in before)  # cross-attention projections are adapted too
    data = RewardPromptDataModule(prompts=str(tmp_path / "prompts.txt"), samples_per_step=2, batch_size=2)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    assert any(not torch.equal(before[n], v) for n, v in lora_state(module).items())
    assert reward.seen and all(sorted(texts) == ["a b", "b a"] for texts in reward.seen)  # each image's own prompt
    saved = read_tensors(tmp_path / "out" / "lora" / "pytorch_lora_weights.safetensors")
    assert all(key.startswith("unet.") for key in saved)
    from lit_sdo.lora import sample_lora_grid  # the trained LoRA applies with a scale to sample a grid

    grid = sample_lora_grid(str(folder), [f"{tmp_path / 'out' / 'lora'}:0.5"], prompts=["a b"], seeds=[0],
                            num_steps=2, guidance_scale=2, out=str(tmp_path / "g.png"))
    assert grid.is_file()


class PromptRecorder(InkReward):
    """InkReward that records the prompt texts it is given with each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[str]] = []

    def forward(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
        assert "label" not in batch and len(batch["prompt"]) == len(images)
        self.seen.append(list(batch["prompt"]))
        return super().forward(images, batch)


TINY_OPEN_CLIP = {"embed_dim": 8, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8,
                                                 "head_width": 8},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def preference_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny open_clip architecture registered as 'lit-sdo-tiny-hps', saved as an HPS-style checkpoint."""
    import json

    import open_clip

    root = tmp_path_factory.mktemp("hps")
    (root / "configs").mkdir()
    (root / "configs" / "lit-sdo-tiny-hps.json").write_text(json.dumps(TINY_OPEN_CLIP))
    wide = TINY_OPEN_CLIP | {"embed_dim": 12}
    (root / "configs" / "lit-sdo-tiny-hps-wide.json").write_text(json.dumps(wide))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model("lit-sdo-tiny-hps", pretrained=None)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, root / "hps.pt")
    return root / "hps.pt"


def test_preference_reward_is_the_cosine_of_open_clips_embeddings(preference_weights: Path) -> None:
    import open_clip

    reward = PreferenceReward(str(preference_weights), architecture="lit-sdo-tiny-hps")
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    prompts = ["a painting of a cat", "a painting of a dog"]
    score = reward(images, {"prompt": prompts})
    model = reward.scorer.model
    mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
    with torch.no_grad():  # open_clip's own forward on already-sized images: normalised features
        image_features, text_features, _ = model((images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1),
                                                 open_clip.get_tokenizer("lit-sdo-tiny-hps")(prompts))
    torch.testing.assert_close(score.detach(), (image_features * text_features).sum(-1))
    (grad,) = torch.autograd.grad(score.sum(), images)
    assert grad.abs().sum() > 0  # differentiable in the image: usable as a reward
    grey = reward(torch.rand(2, 1, 40, 30), {"prompt": prompts})  # other sizes and grey images are prepared first
    assert grey.shape == (2,) and torch.isfinite(grey).all()


def test_preference_reward_bad_input_is_one_line(preference_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not available locally: download them from https://huggingface"):
        PreferenceReward(str(tmp_path / "HPS_v2.1_compressed.pt"))
    with pytest.raises(ValueError, match=r"do not fit open_clip lit-sdo-tiny-hps-wide: 0 missing, 0 unexpected and "
                                         r"\d+ reshaped") as err:
        PreferenceReward(str(preference_weights), architecture="lit-sdo-tiny-hps-wide")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not an open_clip model config"):
        PreferenceReward(str(preference_weights), architecture="no-such-clip")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt is not a weights file torch can read safely") as err:
        PreferenceReward(str(tmp_path / "notes.pt"), architecture="lit-sdo-tiny-hps")
    assert "\n" not in str(err.value)
    reward = PreferenceReward(str(preference_weights), architecture="lit-sdo-tiny-hps")
    with pytest.raises(ValueError, match="use it with a text model"):
        reward(torch.rand(1, 3, 16, 16), {"label": torch.tensor([0])})


def test_history_carries_the_step_cost_callbacks_numbers(folders: SimpleNamespace, tmp_path: Path) -> None:
    cost = StepCost()
    module = make_module(folders, tmp_path, reward=InkReward())
    fit(module, tmp_path, steps=2, callbacks=[cost])
    assert [row["step"] for row in cost.rows] == [1, 2]
    assert module.history[0] == {"step": 0, "seconds": 0.0, "cpu_seconds": 0.0,
                                 "eval_reward": module.history[0]["eval_reward"]}
    for row, measured in zip(module.history[1:], cost.rows, strict=True):
        assert {k: row[k] for k in measured} == measured
    assert 0 < cost.rows[0]["seconds"] < cost.rows[1]["seconds"] and cost.rows[0]["peak_bytes"] > 0
    without = make_module(folders, tmp_path / "plain", reward=InkReward())
    fit(without, tmp_path / "plain", steps=1)  # no callback, no cost columns, the same rewards
    assert set(without.history[1]) == {"step", "reward", "eval_reward"}
    assert without.history[1]["reward"] == pytest.approx(module.history[1]["reward"], abs=0)
