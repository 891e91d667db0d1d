"""Every job honours its sampler's precision: the attack, edit, style, aesthetic, reward and sample-grid jobs, built
as their configs build them (tiny models), run their no-grad model calls in the configured bf16 and their
graph-keeping and measuring calls in float32; on a device without the kernels each stops in one line before any
model call.

oneDNN's probe is patched to report bf16 kernels (or none): PyTorch runs bf16 on any CPU (slowly where it
emulates), so the dtypes seen here are those of a CPU with the kernels. What is seen is the dtype the denoiser
network's first convolution computes in, per call, with whether the call built a graph and the phase of the job
it came from (a training step of a given epoch, or anything else: results, eval grids, predictions)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import patch_loaders, tiny_classifier
from diffusers import DDPMScheduler
from test_guided import HashedTextModel, references
from test_guided import tiny_generator as ten_class_generator
from test_lora import make_attention_unet

import lit_sdo.models.sampler
from lit_sdo.datamodules import LabelSeedDataModule, RewardPromptDataModule
from lit_sdo.models.aesthetic import StrokeThicknessPredictor, export_thickness_predictor
from lit_sdo.models.sampler import SamplerSpec
from lit_sdo.objectives import (
    AestheticObjective,
    ClassifierObjective,
    GramStyleObjective,
    InkReward,
    TextEditObjective,
)
from lit_sdo.sampling import precision as precision_module
from lit_sdo.tasks.latent import LatentOptimizationModule
from lit_sdo.tasks.reward import RewardFinetuneModule
from lit_sdo.tasks.sample_grid import SampleGridModule
from lit_sdo.tasks.train_diffusion import export_diffusion

JOBS = ["attack", "edit", "style", "aesthetic", "reward", "sample_grid"]
BF16, FP32 = torch.bfloat16, torch.float32
Call = tuple[str, bool, torch.dtype]  # (phase, built a graph, dtype of the first convolution)


class Phase(L.Callback):
    """Names what the job is doing when the network is called: ``train0``, ``train1``, ... or ``other``."""

    def __init__(self) -> None:
        self.now = "other"

    def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
        self.now = f"train{trainer.current_epoch}"

    def on_train_batch_end(self, *_: object) -> None:
        self.now = "other"


@dataclass
class Job:
    """One job, tiny, with the recorder on its denoiser network."""

    module: L.LightningModule
    run: Callable[[L.Trainer], object]
    phase: Phase
    calls: list[Call]


def latent_job(spec: dict, objective: object, data: L.LightningDataModule, out: Path) -> tuple[L.LightningModule,
                                                                                                Callable]:
    module = LatentOptimizationModule(sampler=SamplerSpec(**spec), objective=objective, optimizer="adam", lr=0.05,
                                      eps=0.1, output_dir=str(out),
                                      stop_at_success=False)  # every step calls the model, fooled or not
    return module, lambda trainer: trainer.fit(module, datamodule=data)


def build(name: str, precision: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Job:
    """The job ``name`` with ``precision``, as its config builds it (objective, data, sampler), on tiny models."""
    out = tmp_path / "out"
    if name == "attack":
        patch_loaders(monkeypatch)
        module, run = latent_job({"model": "tiny-ddpm", "num_steps": 4, "precision": precision},
                                 ClassifierObjective(tiny_classifier(), loss="ce"),
                                 LabelSeedDataModule(num_classes=3, per_class=1, batch_size=3), out)
    elif name in ("edit", "style", "aesthetic"):
        monkeypatch.setattr(lit_sdo.models.sampler, "load_diffusion", ten_class_generator)
        spec = {"model": "tiny-ddpm", "num_steps": 4, "precision": precision}
        if name == "edit":  # real references, DDIM-inverted
            module, run = latent_job(spec, TextEditObjective(HashedTextModel(), lam=0.7), references(n=2), out)
        else:  # from an intermediate latent of generated samples
            torch.manual_seed(3)
            thickness = export_thickness_predictor(StrokeThicknessPredictor(2.0, 4.5, channels=4), tmp_path / "t", 8)
            objective = (GramStyleObjective("digits:0", HashedTextModel(), layer=1) if name == "style"
                         else AestheticObjective(str(thickness)))
            module, run = latent_job(spec | {"start_timestep": 600}, objective,
                                     LabelSeedDataModule(num_classes=10, per_class=1, classes=[0, 1], batch_size=2),
                                     out)
    elif name == "reward":
        scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False)
        folder = export_diffusion(make_attention_unet(), scheduler, tmp_path / "ddpm", num_classes=2)
        spec = SamplerSpec(model=str(folder), num_steps=4, k="random", precision=precision)
        module = RewardFinetuneModule(sampler=spec, reward=InkReward(), grid_samples=2, output_dir=str(out))
        data = RewardPromptDataModule(num_classes=2, samples_per_step=2, batch_size=2)
        run = lambda trainer: trainer.fit(module, datamodule=data)  # noqa: E731
    else:
        patch_loaders(monkeypatch)
        module = SampleGridModule(model="tiny-ddpm", output=str(tmp_path / "grid.png"), num_steps=4, classes=[0, 1],
                                  samples_per_class=2, precision=precision)
        run = lambda trainer: trainer.predict(module)  # noqa: E731
    phase, calls = Phase(), []
    module.sampler.denoiser.network.conv_in.register_forward_hook(
        lambda _m, _i, output: calls.append((phase.now, torch.is_grad_enabled(), output.dtype)))
    return Job(module, run, phase, calls)


def trainer(job: Job, tmp_path: Path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=2, default_root_dir=tmp_path, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=[job.phase])


def dtypes(calls: list[Call], phase: Callable[[str], bool], graph: bool) -> set[torch.dtype]:
    return {dtype for when, grad, dtype in calls if phase(when) and grad == graph}


@pytest.mark.filterwarnings("ignore:.*(holds results|style image|eval mode|reference)")
@pytest.mark.parametrize("name", JOBS)
def test_the_configured_precision_reaches_the_no_grad_model_calls(name: str, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(precision_module, "_cpu_probe", lambda probe: probe == "_is_mkldnn_bf16_supported")
    job = build(name, "bf16", monkeypatch, tmp_path)
    job.run(trainer(job, tmp_path))
    if name == "sample_grid":  # the grid is the product: every call (no graph) in the configured precision
        assert dtypes(job.calls, lambda _: True, graph=False) == {BF16}
        assert dtypes(job.calls, lambda _: True, graph=True) == set()
        return
    # The second step's no-grad calls are all sampling calls (the start latents, float32, were made in the
    # first); every step's graph-keeping call, and every measurement outside the steps, is float32.
    assert dtypes(job.calls, lambda when: when == "train1", graph=False) == {BF16}
    assert dtypes(job.calls, lambda when: when.startswith("train"), graph=True) == {FP32}
    assert dtypes(job.calls, lambda when: when == "other", graph=False) == {FP32}


@pytest.mark.filterwarnings("ignore:.*(holds results|style image|eval mode|reference)")
@pytest.mark.parametrize("name", JOBS)
def test_a_precision_the_device_cannot_run_stops_every_job_in_one_line(name: str, monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    monkeypatch.setattr(precision_module, "_cpu_probe", lambda probe: False)  # a CPU without bf16 kernels
    job = build(name, "bf16", monkeypatch, tmp_path)
    with pytest.raises(ValueError, match=r"^precision 'bf16' is not supported on cpu [^\n]*$"):
        job.run(trainer(job, tmp_path))
    assert job.calls == []  # before any model call
