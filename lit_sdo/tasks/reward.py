"""LoRA reward fine-tuning (paper Sec. 5.3, Eq. 27, Fig. 11-13): maximise r(G(x_T, θ + ΔW_LoRA), c).

Each micro-batch samples from fresh noise with the gradient policy deciding which denoiser calls keep a
graph: SDO with ``k="random"`` keeps ONE uniformly drawn call (about one sampling run plus one
backward), ``random_truncation`` is AlignProp-uniform, ``last_k`` DRaFT-K (``last_k=1``: AlignProp-1 /
DRaFT-1), ``checkpoint`` the exact gradient. Only the LoRA weights train (fp32); the base network is
frozen (fp32 on CPU, bf16 on GPU).

One Lightning epoch is one optimiser step (see :class:`lit_sdo.datamodules.RewardPromptDataModule`):
``trainer.max_epochs`` is the number of steps, ``trainer.accumulate_grad_batches`` the accumulation, and
a checkpoint per epoch resumes the same run (same noise, same random k, same optimiser state).

What a step costs (time, memory held for backward) is measured by :class:`lit_sdo.callbacks.StepCost`
and a NaN stops the run through :class:`lit_sdo.callbacks.NaNStop`; the configs register both, and
history.json carries StepCost's numbers beside the rewards when it is registered.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lit_sdo.callbacks import StepCost, announce, output_folder
from lit_sdo.images import image_grid, save_png
from lit_sdo.io import writable_folder, write_json
from lit_sdo.lora import DEFAULT_TARGETS, inject_lora, lora_parameters, save_lora
from lit_sdo.models.sampler import Sampler, SamplerSpec
from lit_sdo.objectives import Reward

GRID_SEED_OFFSET = 10_000_000  # fixed-seed grid/eval samples never share noise with training samples


class RewardFinetuneModule(L.LightningModule):
    """Fine-tune LoRA weights of a diffusion model's denoiser to maximise a differentiable reward.

    Args:
        sampler: generator, scheduler (paper: DDIM-50), guidance (paper: 7.5 for SD 1.5), gradient policy
            (``sdo`` with ``k: random`` is the paper's Fig. 5; ``random_truncation`` AlignProp-uniform; ``last_k``
            DRaFT-K; ``checkpoint`` the exact gradient), ``seed`` (the run seed the policy's random draws derive
            from) and ``precision`` (the no-grad calls of each sampling run).
        reward: module ``(images in [0, 1], batch) -> reward (B,)`` to maximise (default: log p(label) under
            the embedded digits ResNet, :class:`lit_sdo.objectives.ClassLogProbReward`).
        lora_rank: LoRA rank r.
        lora_alpha: LoRA α (None: α = r, scale 1).
        lora_targets: module names to adapt (None: attention projections to_q, to_k, to_v, to_out.0).
        base_dtype: frozen weights' dtype: ``auto`` (bf16 on GPU, fp32 on CPU), ``float32`` or ``bfloat16``.
        lr: AdamW learning rate (paper: 4e-4).
        betas: AdamW betas (paper: 0.9, 0.999).
        weight_decay: AdamW weight decay (paper: 1e-4).
        grid_every_n_steps: log a fixed-seed image grid and its reward every this many optimiser steps.
        grid_samples: samples in that grid (conditions cycle through the data module's classes/prompts).
        output_dir: where the LoRA, history.json and grid.png go (default: the logger's folder).
    """

    def __init__(self, sampler: SamplerSpec | None = None, reward: Reward | None = None, lora_rank: int = 4,
                 lora_alpha: float | None = None, lora_targets: list[str] | None = None,
                 base_dtype: Literal["auto", "float32", "bfloat16"] = "auto", lr: float = 4e-4,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-4, grid_every_n_steps: int = 10,
                 grid_samples: int = 16, output_dir: str | None = None) -> None:
        super().__init__()
        sampler = sampler or SamplerSpec(num_steps=50, k="random")
        self.save_hyperparameters(ignore=["reward"])
        if grid_every_n_steps < 1 or grid_samples < 1:
            raise ValueError(f"grid_every_n_steps={grid_every_n_steps} and grid_samples={grid_samples} must be >= 1")
        self.sampler = Sampler(sampler)
        inject_lora(self.denoiser.network, lora_targets or DEFAULT_TARGETS, lora_rank, lora_alpha)
        if reward is None:
            from lit_sdo.objectives import ClassLogProbReward

            reward = ClassLogProbReward()
        self.reward = reward.requires_grad_(False)
        self.strict_loading = False  # checkpoints hold the LoRA only; frozen networks load from their names
        self.history: list[dict[str, float]] = []  # one row per optimiser step (rank 0's view, synced rewards)
        self._step_rewards: list[Tensor] = []
        self._autocast_dtype: torch.dtype | None = None

    # ----- construction ---------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        """The sampler's denoiser (a property, not a second registration: state dicts and checkpoints hold
        each LoRA weight once)."""
        return self.sampler.denoiser

    def train(self, mode: bool = True) -> RewardFinetuneModule:
        super().train(mode)
        self.denoiser.eval()  # frozen networks: no dropout, fixed normalisation statistics
        self.reward.eval()
        return self

    def setup(self, stage: str) -> None:
        """Validate the data against the model and the trainer, cast the frozen base, embed the prompts."""
        out = output_folder(self.trainer, self)  # on every rank: trainer.log_dir is a collective under DDP
        if self.trainer.is_global_zero:
            writable_folder(out)  # a bad output path stops the run before any work
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "conditions"):
            raise ValueError("reward fine-tuning needs lit_sdo.datamodules.RewardPromptDataModule as data")
        per_step = datamodule.batch_size * self.trainer.accumulate_grad_batches * self.trainer.world_size
        if per_step != datamodule.samples_per_step:
            raise ValueError(
                f"samples_per_step={datamodule.samples_per_step} must equal batch_size={datamodule.batch_size} × "
                f"accumulate_grad_batches={self.trainer.accumulate_grad_batches} × devices={self.trainer.world_size} "
                f"= {per_step}; set --trainer.accumulate_grad_batches="
                f"{datamodule.samples_per_step / (datamodule.batch_size * self.trainer.world_size):g} or change "
                "batch_size/samples_per_step so they divide")
        self.sampler.check_precision(self.trainer.strategy.root_device)  # one line before any work
        model = self.sampler.model
        if datamodule.prompts is not None:
            if model.encode_prompt is None:
                raise ValueError(f"generator {model.name} takes no text; use classes, not prompts")
            self.sampler.condition(prompts=datamodule.prompts)  # every prompt embedded once, in one call
        else:
            n = model.num_classes
            if n is None:
                raise ValueError(f"generator {model.name} is not class-conditional; pass prompts")
            if max(datamodule.classes) >= n:
                raise ValueError(f"classes {datamodule.classes} are out of range for {model.name} with "
                                 f"{n} classes (0..{n - 1})")
        dtype = self.hparams.base_dtype
        on_gpu = self.trainer.strategy.root_device.type == "cuda"
        if dtype == "bfloat16" or (dtype == "auto" and on_gpu):
            for name, param in self.denoiser.named_parameters():
                if "lora_" not in name:
                    param.data = param.data.to(torch.bfloat16)
            self._autocast_dtype = torch.bfloat16

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(lora_parameters(self.denoiser.network), lr=self.hparams.lr,
                                 betas=tuple(self.hparams.betas), weight_decay=self.hparams.weight_decay)

    # ----- sampling -------------------------------------------------------------------------------
    def condition(self, positions: Tensor) -> Tensor:
        """Condition positions (B,) -> class labels (B,) or prompt embeddings (B, L, D)."""
        datamodule = self.trainer.datamodule
        if datamodule.prompts is not None:
            return self.sampler.condition(prompts=[datamodule.prompts[i] for i in positions.tolist()])
        return self.sampler.condition(torch.tensor(datamodule.classes, device=self.device)[positions.to(self.device)])

    def base_precision(self) -> AbstractContextManager[Any]:
        """bf16 autocast around the sampler when the frozen base weights are bf16 (``base_dtype``), else nothing."""
        if self._autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def score(self, images: Tensor, positions: Tensor, cond: Tensor) -> Tensor:
        """The reward of each image, given its class label (class models) or prompt text (text models)."""
        prompts = self.trainer.datamodule.prompts
        texts = None if prompts is None else [prompts[i] for i in positions.tolist()]
        batch: dict[str, Any] = {"label": cond} if cond.dim() == 1 else {}
        if texts is not None:
            batch["prompt"] = texts
        return self.reward(images, batch)

    # ----- one micro-batch ------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        positions, seeds = self.trainer.datamodule.conditions(self.current_epoch, batch["index"].cpu())
        cond = self.condition(positions)
        # The micro-batch's first noise seed names its sampling run: the policy's draws are the same after a
        # resume and differ on every rank and micro-batch.
        with self.base_precision():
            images = self.sampler.loss_images(self.sampler.initial_noise(seeds), cond, policy_key=int(seeds[0]))
        rewards = [self.score(image, positions, cond) for image in images]  # (B,) each; DOODL: x₀ and y₀
        self._step_rewards.append(rewards[0].detach().mean())  # the sample's reward
        return -rewards[0].mean() if len(rewards) == 1 else -torch.stack(rewards).mean()

    # ----- bookkeeping per optimiser step ---------------------------------------------------------
    def cost(self) -> dict[str, float]:
        """The training time so far and the last step's memory, when a StepCost callback measures them."""
        callback = StepCost.find(self.trainer)
        if callback is None:
            return {}
        if not callback.rows:
            return {"seconds": 0.0, "cpu_seconds": 0.0}
        return {k: v for k, v in callback.rows[-1].items() if k != "step"}

    def on_train_start(self) -> None:
        if self.global_step == 0:  # the untrained model: step 0 of the reward curves
            self.history.append({"step": 0, **self.cost(), "eval_reward": self.log_grid()})

    def on_train_epoch_end(self) -> None:
        """One optimiser step is complete: sync its reward, record it, log it vs step and vs wall-clock."""
        reward = torch.stack(self._step_rewards).mean()
        reward = self.trainer.strategy.reduce(reward, reduce_op="mean")
        self._step_rewards = []
        row = {"step": self.global_step, "reward": float(reward), **self.cost()}
        self.log("train/reward", reward, prog_bar=True, batch_size=self.trainer.datamodule.samples_per_step)
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_scalar"):
            experiment.add_scalar("reward/vs_step", row["reward"], self.global_step)
            if "seconds" in row:
                experiment.add_scalar("reward/vs_wallclock_ms", row["reward"], round(row["seconds"] * 1000))
        if self.global_step % self.hparams.grid_every_n_steps == 0 or self.global_step == self.trainer.max_epochs:
            row["eval_reward"] = self.log_grid()
        self.history.append(row)

    @torch.no_grad()
    def fixed_samples(self) -> tuple[Tensor, Tensor]:
        """The fixed-seed samples (images in [0, 1]) and their rewards, plain sampling without gradient."""
        n = self.hparams.grid_samples
        datamodule = self.trainer.datamodule
        positions = torch.arange(n) % datamodule.num_conditions
        seeds = GRID_SEED_OFFSET + torch.arange(n)
        cond = self.condition(positions)
        with self.base_precision():
            images = self.sampler.evaluate(self.sampler.initial_noise(seeds), cond)
        return images, self.score(images, positions, cond)

    def log_grid(self) -> float:
        """Image grid of the fixed seeds to TensorBoard; returns their mean reward (the eval reward)."""
        images, reward = self.fixed_samples()
        value = float(reward.mean())
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_image"):
            experiment.add_image("samples/fixed_seeds", image_grid(images, nrow=8), self.global_step)
            experiment.add_scalar("reward/eval_vs_step", value, self.global_step)
            if "seconds" in self.cost():
                experiment.add_scalar("reward/eval_vs_wallclock_ms", value, round(self.cost()["seconds"] * 1000))
        return value

    # ----- results and checkpoints ----------------------------------------------------------------
    def on_train_end(self) -> None:
        out = output_folder(self.trainer, self)  # on every rank: trainer.log_dir is a collective under DDP
        if not self.trainer.is_global_zero:
            return
        save_lora(self.denoiser.network, out / "lora", metadata={"model": self.sampler.spec.model,
                                                                 "policy": str(self.sampler.policy)})
        images, _ = self.fixed_samples()
        save_png(out / "grid.png", image_grid(images, nrow=8), scale=4)
        write_json(out / "history.json", {"config": {"sampler": self.sampler.spec.as_dict()} | {
            k: v for k, v in self.hparams.items() if k != "sampler"}, "steps": self.history})
        last = self.history[-1] if self.history else {}
        steps = sum("reward" in row for row in self.history)
        took = f", {last['seconds']:.1f} s" if "seconds" in last else ""
        announce(f"reward fine-tuning: {steps} steps, reward {last.get('reward', float('nan')):.4f}"
                 f", eval reward {last.get('eval_reward', float('nan')):.4f}{took}; LoRA in {out / 'lora'}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if "lora_" in k}
        checkpoint["reward_task"] = {"history": self.history}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("reward_task")
        if state is None:
            raise ValueError("the checkpoint was not written by RewardFinetuneModule (no reward_task state)")
        expected = {k for k in self.state_dict() if "lora_" in k}
        if set(checkpoint["state_dict"]) != expected:
            raise ValueError("the checkpoint's LoRA does not match this config's (other generator, rank or targets)")
        self.history = list(state["history"])

