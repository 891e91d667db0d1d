"""One sampler spec for every task and the library API: which generator, which scheduler, how many steps,
which guidance and which gradient policy — and the one place that turns a latent into an image in [0, 1].

    spec = SamplerSpec(model="embedded:digits-ddpm", num_steps=30, policy="sdo")
    sampler = Sampler(spec)
    images = sampler.generate(sampler.initial_noise(seeds), labels)   # (B, C, H, W) in [0, 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_sdo.images import to_unit_range
from lit_sdo.models.diffusion import DiffusionModel, build_sampler, load_diffusion
from lit_sdo.sampling import GradientPolicy, Precision, noise_for_seeds, parse_policy, sample, start_step_for
from lit_sdo.sampling.baselines import check_baseline


@dataclass
class SamplerSpec:
    """How a task samples its generator.

    Attributes:
        model: the diffusion model for :func:`lit_sdo.models.load_diffusion` (``embedded:<name>``, a hub id
            in the local cache, or a folder). Not ``generator``: that name is a ``torch.Generator`` in
            :func:`lit_sdo.sampling.sample`.
        scheduler: ``ddim`` | ``ddpm`` | ``dpm`` | ``euler`` | ``lcm`` | ``flow_euler``, or ``shortcut`` for a
            shortcut / flow-matching model's own N-step sampler.
        num_steps: sampling steps N.
        guidance_scale: classifier-free guidance scale (1 = none).
        policy: gradient policy: ``sdo`` | ``full`` | ``checkpoint`` | ``last_k`` | ``random_truncation`` |
            ``adjoint`` (AdjointDPM) | ``doodl`` (DOODL) | ``none``, or its string form with options
            (``sdo-tail=4``, ``adjoint-solver=rk4-substeps=2``, ``doodl-mixing=0.9``; see
            :func:`lit_sdo.sampling.parse_policy`).
        k: SDO's graph step (0 = the first step run: the paper's Fig. 4), or ``random`` (Fig. 5).
        last_k: K of the ``last_k`` policy.
        tail: for ``sdo``, how many final model calls also keep their graph (SDO with an exact tail).
        precision: dtype of the no-grad model calls of an optimisation step (``fp32``, ``bf16``, ``fp16``); the
            graph-keeping call, the scheduler arithmetic and every evaluation stay float32.
        precision_cast: ``autocast`` (no second copy of the weights) or ``copy`` (a low-precision weight copy).
        channels_last: run the no-grad calls on NHWC inputs.
        compile: ``torch.compile`` the no-grad call (the first call pays the compilation).
        start_timestep: start from the latent at this timestep (e.g. 600 of 1000) instead of x_T.
        seed: seed of the sampler's own noise (stochastic schedulers: DDPM, LCM), fixed so every
            optimisation step sees the same sampler.
        policy_seed: seed of the policy's random draws (SDO's random k, the truncation depth).
    """

    model: str = "embedded:digits-ddpm"
    scheduler: str = "ddim"
    num_steps: int = 30
    guidance_scale: float = 1.0
    policy: str = "sdo"
    k: int | Literal["random"] = 0
    last_k: int = 1
    tail: int = 0
    start_timestep: int | None = None
    seed: int = 0
    policy_seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    precision_cast: Literal["autocast", "copy"] = "autocast"
    channels_last: bool = False
    compile: bool = False

    def gradient_policy(self) -> GradientPolicy:
        """The policy string with ``k`` / ``last_k`` / ``tail`` applied where they differ from their defaults."""
        policy = parse_policy(self.policy)
        options = {name: getattr(self, name) for name in ("k", "last_k", "tail")
                   if getattr(self, name) != getattr(SamplerSpec, name)}
        return dataclasses.replace(policy, **options) if options else policy

    def no_grad_precision(self) -> Precision | None:
        """How the no-grad calls of an optimisation step run; None is the plain float32 call."""
        if (self.precision, self.channels_last, self.compile) == ("fp32", False, False):
            return None
        return Precision(dtype=self.precision, cast=self.precision_cast, channels_last=self.channels_last,
                         compile=self.compile)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Tasks keep the spec in their hyper-parameters, so checkpoints hold it; plain fields only, so it is safe for
# Lightning's weights_only resume (``fit --ckpt_path``) to rebuild.
torch.serialization.add_safe_globals([SamplerSpec])


class Sampler(nn.Module):
    """A loaded generator with its N-step scheduler and gradient policy (an ``nn.Module``: it moves with
    the task that holds it). Its denoiser is frozen; what trains is what the task adds (δ, LoRA).

    Args:
        spec: the sampler's settings.
        model: an already loaded generator (library use); None loads ``spec.model``.
    """

    def __init__(self, spec: SamplerSpec, model: DiffusionModel | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.model = model if model is not None else load_diffusion(spec.model,
                                                                    guidance_scale=spec.guidance_scale)
        denoiser, self.scheduler = build_sampler(self.model, spec.scheduler, spec.num_steps)
        self.denoiser = denoiser.requires_grad_(False)
        self.policy = spec.gradient_policy()
        self.precision = spec.no_grad_precision()
        self.start_step = 0 if spec.start_timestep is None else self._start_step(spec.start_timestep)
        check_baseline(self.scheduler, self.policy, self.start_step)  # e.g. doodl on a stochastic scheduler
        self.policy.check_steps(self.steps_run)  # e.g. sdo-tail=12 on a 10-step run

    def _start_step(self, timestep: int) -> int:
        train_steps = self.scheduler.config.get("num_train_timesteps", 1000)
        if not 0 <= timestep < train_steps:
            raise ValueError(f"start_timestep={timestep} is outside the schedule [0, {train_steps}) of "
                             f"{self.model.name}; pass e.g. start_timestep: {int(0.6 * train_steps)}")
        return start_step_for(self.scheduler, timestep)

    @property
    def steps_run(self) -> int:
        """Model calls per sampling run (N minus the skipped start steps)."""
        return len(self.scheduler.timesteps) - self.start_step

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def initial_noise(self, seeds: Sequence[int] | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """x_T from per-sample seeds, independent of device, batch and rank (drawn in float32, then cast)."""
        seeds = seeds.tolist() if isinstance(seeds, Tensor) else list(seeds)
        return noise_for_seeds(seeds, self.denoiser.sample_shape, device=self.device).to(dtype)

    def noise_generator(self) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(self.spec.seed)

    def generate(self, x: Tensor, cond: Tensor | None, policy: GradientPolicy | str | None = None,
                 start_step: int | None = None, policy_generator: torch.Generator | None = None) -> Tensor:
        """Latent at the start step -> image in [0, 1], through the sampler and the decoder (gradient where
        the policy keeps it). ``policy`` None is the spec's, with the spec's precision for its no-grad calls;
        an explicit policy (evaluation: ``"none"``) runs in the module's own dtype."""
        out = sample(self.denoiser, self.scheduler, x, cond, policy=self.policy if policy is None else policy,
                     start_step=self.start_step if start_step is None else start_step,
                     generator=self.noise_generator(), policy_generator=policy_generator,
                     precision=self.precision if policy is None else None)
        return to_unit_range(self.denoiser.decode(out.sample).to(x.dtype))  # autocast may decode in bf16

    def trajectory(self, x: Tensor, cond: Tensor | None) -> list[Tensor]:
        """Every latent of a plain sampling run from x_T: [x_T, after step 0, ...] (no gradient)."""
        with torch.no_grad():
            out = sample(self.denoiser, self.scheduler, x, cond, policy="none", return_trajectory=True,
                         generator=self.noise_generator())
        return out.trajectory  # type: ignore[return-value]
