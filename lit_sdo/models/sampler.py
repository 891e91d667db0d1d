"""The one owner of a sampling run: which generator, scheduler, steps, guidance, gradient policy, precision and
seeds, and the one place that turns conditions, reference images and latents into images in [0, 1].

    spec = SamplerSpec(model="embedded:digits-ddpm", num_steps=30, policy="sdo-tail=4")
    sampler = Sampler(spec)
    x_T = sampler.start_latent(labels, seeds=[0, 1])
    images = sampler.generate(x_T, sampler.condition(labels), policy_key=step)  # (B, C, H, W) in [0, 1]

Tasks ask the sampler for images; they never read its fields back out to pass them in again.

Seeds (one scheme for every task):

- **noise seed, per sample**: x_T of a sample is drawn from its own seed (:meth:`Sampler.initial_noise`), so a
  sample's noise does not depend on its batch, device or rank;
- **run seed** (``SamplerSpec.seed``): everything random in a run that is not a sample's x_T derives from it:
  the stochastic schedulers' noise (DDPM, LCM: one generator seeded with it for every sampling run, so every
  optimisation step sees the same sampler) and the gradient policy's draws (SDO's random k, the truncation
  depth): a generator seeded with ``seed * 1_000_003 + policy_key``, where the caller names which sampling run
  this is (the optimisation step; a micro-batch's first noise seed), so a resumed or distributed run draws what
  the uninterrupted one drew. The policy never draws from the scheduler's generator or torch's global RNG, so
  forward values never depend on the policy.

Precision (one rule): every no-grad model call of :meth:`Sampler.generate` runs in the spec's precision, whatever
the policy (the graph-keeping calls and the scheduler arithmetic stay float32); what is computed once and kept
or reported runs in float32: :meth:`Sampler.evaluate` (results, the best-δ tracker's offers, eval rewards) and
the start latent (:meth:`Sampler.start_latent`: DDIM inversion, the run down to an intermediate step).
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_sdo.images import to_unit_range
from lit_sdo.models.diffusion import build_sampler, load_diffusion
from lit_sdo.models.diffusion_model import DiffusionModel
from lit_sdo.sampling import (
    GradientPolicy,
    Precision,
    SampleOutput,
    as_policy,
    noise_for_seeds,
    sample,
    start_step_for,
)
from lit_sdo.sampling.baselines import check_baseline
from lit_sdo.sampling.inversion import invert_ddim
from lit_sdo.sampling.precision import check_supported
from lit_sdo.sampling.xhat_guidance import xhat_guided_sample

POLICY_SEED_STRIDE = 1_000_003  # a prime: run seed s and key j give s * stride + j, distinct for keys < stride
POLICY_OPTION_DEFAULTS: dict[str, object] = {"k": 0, "last_k": 1, "tail": 0}


@dataclass(init=False)
class SamplerSpec:
    """How a task samples its generator: plain settings (YAML, checkpoints) and ONE gradient policy.

    Args:
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
            :func:`lit_sdo.sampling.parse_policy`), or a :class:`~lit_sdo.sampling.GradientPolicy`.
        k: SDO's graph step (0 = the first step run: the paper's Fig. 4), or ``random`` (Fig. 5); overrides
            the policy string's ``k`` when not 0.
        last_k: K of the ``last_k`` policy; overrides the policy string's when not 1.
        tail: for ``sdo``, how many final model calls also keep their graph (SDO with an exact tail);
            overrides the policy string's when not 0.
        start_timestep: start from the latent at this timestep (e.g. 600 of 1000) instead of x_T.
        seed: the run seed: the stochastic schedulers' noise (DDPM, LCM) and the policy's random draws derive
            from it (see the module docstring); each sample's x_T comes from its own noise seed.
        policy_seed: the run seed's former name for the policy's draws; accepted when equal to ``seed``.
        precision: dtype of the no-grad model calls of a sampling run (``fp32``, ``bf16``, ``fp16``); the
            graph-keeping call, the scheduler arithmetic and every evaluation stay float32.
        precision_cast: ``autocast`` (no second copy of the weights) or ``copy`` (a low-precision weight copy).
        channels_last: run the no-grad calls on NHWC inputs.
        compile: ``torch.compile`` the no-grad call (the first call pays the compilation).
    """

    model: str
    scheduler: str
    num_steps: int
    guidance_scale: float
    policy: GradientPolicy | str  # always a GradientPolicy once built; a string only on its way in (YAML)
    start_timestep: int | None
    seed: int
    precision: Literal["fp32", "bf16", "fp16"]
    precision_cast: Literal["autocast", "copy"]
    channels_last: bool
    compile: bool

    def __init__(self, model: str = "embedded:digits-ddpm", scheduler: str = "ddim", num_steps: int = 30,
                 guidance_scale: float = 1.0, policy: GradientPolicy | str = "sdo",
                 k: int | Literal["random"] = 0, last_k: int = 1, tail: int = 0, start_timestep: int | None = None,
                 seed: int = 0, policy_seed: int | None = None, precision: Literal["fp32", "bf16", "fp16"] = "fp32",
                 precision_cast: Literal["autocast", "copy"] = "autocast", channels_last: bool = False,
                 compile: bool = False) -> None:
        if policy_seed is not None and policy_seed != seed:
            raise ValueError(f"policy_seed={policy_seed} differs from seed={seed}: the policy's draws and the "
                             f"scheduler's noise derive from the one run seed; drop policy_seed and set seed")
        self.model, self.scheduler, self.num_steps, self.guidance_scale = model, scheduler, num_steps, guidance_scale
        self.policy = gradient_policy(policy, {"k": k, "last_k": last_k, "tail": tail})
        self.start_timestep, self.seed = start_timestep, seed
        self.precision, self.precision_cast = precision, precision_cast
        self.channels_last, self.compile = channels_last, compile
        Precision(dtype=precision, cast=precision_cast)  # one-line errors for unknown names, at the edge

    def no_grad_precision(self) -> Precision | None:
        """How the no-grad calls of a sampling run go; None is the plain float32 call."""
        if (self.precision, self.channels_last, self.compile) == ("fp32", False, False):
            return None
        return Precision(dtype=self.precision, cast=self.precision_cast, channels_last=self.channels_last,
                         compile=self.compile)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values for results files: the policy in its string form (what a YAML file would say)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {"policy": self.policy.label}


def gradient_policy(policy: GradientPolicy | str, options: dict[str, object]) -> GradientPolicy:
    """The one policy of a spec: ``policy`` (parsed from its string form), then each of ``k`` / ``last_k`` /
    ``tail`` that differs from its default (so ``policy: sdo-tail=4`` keeps its tail and ``k: random`` still
    applies to ``policy: sdo``, as existing configs and command lines expect)."""
    parsed = as_policy(policy)
    if parsed.seed != 0:
        raise ValueError(f"policy {parsed.label!r} sets seed={parsed.seed}: a sampler's policy draws derive from its "
                         f"run seed; drop the policy's seed and set the sampler's seed: {parsed.seed}")
    changed = {name: value for name, value in options.items() if value != POLICY_OPTION_DEFAULTS[name]}
    return dataclasses.replace(parsed, **changed) if changed else parsed


# Tasks keep the spec in their hyper-parameters, so checkpoints hold it; plain fields and the (frozen, plain)
# policy only, so it is safe for Lightning's weights_only resume (``fit --ckpt_path``) to rebuild.
torch.serialization.add_safe_globals([SamplerSpec, GradientPolicy])


class Sampler(nn.Module):
    """A loaded generator with its N-step scheduler, gradient policy, precision and seeds (an ``nn.Module``:
    it moves with the task that holds it). Its denoiser is frozen; what trains is what the task adds (δ, LoRA).

    Built with its policy, so a policy the run cannot take (a tail or last_k longer than the run, a baseline on
    a scheduler it cannot run) is refused here, before any work.

    Args:
        spec: the sampler's settings.
        model: an already loaded generator (library use); None loads ``spec.model``.
    """

    def __init__(self, spec: SamplerSpec, model: DiffusionModel | None = None) -> None:
        super().__init__()
        self.spec = spec
        loaded_scale = None if model is None else getattr(model.denoiser, "guidance_scale", 1.0)
        if model is not None and loaded_scale != spec.guidance_scale:
            # guidance is built into the loaded adapter, so a spec that says otherwise would be silently ignored
            raise ValueError(f"generator {model.name!r} was loaded with guidance_scale="
                             f"{loaded_scale:g} but the spec says {spec.guidance_scale:g}; load it "
                             f"with load_diffusion({model.name!r}, guidance_scale={spec.guidance_scale:g}) or set "
                             "the spec's guidance_scale to match")
        self.model = model if model is not None else load_diffusion(spec.model,
                                                                    guidance_scale=spec.guidance_scale)
        denoiser, self.scheduler = build_sampler(self.model, spec.scheduler, spec.num_steps)
        self.denoiser = denoiser.requires_grad_(False)
        self.precision = spec.no_grad_precision()
        self.start_step = 0 if spec.start_timestep is None else self._start_step(spec.start_timestep)
        check_baseline(self.scheduler, self.policy, self.start_step)  # e.g. doodl on a stochastic scheduler
        self.policy.check_steps(self.steps_run)  # e.g. sdo-tail=12 on a 10-step run
        self._prompt_cache: dict[str, Tensor] = {}  # prompt -> text embedding (L, D)

    def _start_step(self, timestep: int) -> int:
        train_steps = self.scheduler.config.get("num_train_timesteps", 1000)
        if not 0 <= timestep < train_steps:
            raise ValueError(f"start_timestep={timestep} is outside the schedule [0, {train_steps}) of "
                             f"{self.model.name}; pass e.g. start_timestep: {int(0.6 * train_steps)}")
        return start_step_for(self.scheduler, timestep)

    # ----- what the run is --------------------------------------------------------------------------
    @property
    def policy(self) -> GradientPolicy:
        """The spec's gradient policy (read-only: a sampler is built with its policy, and checked for it)."""
        return self.spec.policy

    @property
    def steps_run(self) -> int:
        """Model calls per sampling run (N minus the skipped start steps)."""
        return len(self.scheduler.timesteps) - self.start_step

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample's latent: what δ and x_T are shaped like."""
        return tuple(self.denoiser.sample_shape)  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def check_precision(self, device: torch.device | str) -> None:
        """One-line error for a precision ``device`` has no kernels for: a job calls it before any work."""
        if self.precision is not None:
            check_supported(self.precision, device)

    # ----- seeds --------------------------------------------------------------------------------------
    def initial_noise(self, seeds: Sequence[int] | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """x_T from per-sample seeds, independent of device, batch and rank (drawn in float32, then cast)."""
        seeds = seeds.tolist() if isinstance(seeds, Tensor) else list(seeds)
        return noise_for_seeds(seeds, self.latent_shape, device=self.device).to(dtype)

    def _noise_generator(self) -> torch.Generator:
        """The stochastic schedulers' noise: the same for every sampling run of the job."""
        return torch.Generator(self.device).manual_seed(self.spec.seed)

    def policy_generator(self, policy_key: int) -> torch.Generator:
        """The policy's draws for the sampling run named ``policy_key``: a function of the run seed and the key."""
        return torch.Generator().manual_seed(self.spec.seed * POLICY_SEED_STRIDE + policy_key)

    # ----- conditions, references, latents -------------------------------------------------------------
    def condition(self, labels: Tensor | None = None, prompts: Sequence[str] | None = None) -> Tensor | None:
        """What the denoiser is conditioned on: prompt embeddings (B, L, D) for text generators (empty prompts
        where none are given, one per label), class labels (B,) for class-conditional ones, else None; a
        generator ignores what it does not take (a digit edit's prompts are for its objective).

        Each prompt is embedded once per sampler (cached), in one call for the prompts it has not seen."""
        if self.model.encode_prompt is None:
            return None if labels is None or self.model.num_classes is None else labels.to(self.device)
        if prompts is None:
            if labels is None:
                raise ValueError(f"generator {self.model.name} is text-conditioned: pass prompts (or labels to "
                                 "count empty prompts)")
            prompts = [""] * len(labels)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            for prompt, embedding in zip(missing, self.model.encode_prompt(missing), strict=True):
                self._prompt_cache[prompt] = embedding
        return torch.stack([self._prompt_cache[p] for p in prompts]).to(self.device)  # (B, L, D)

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> the sampler's space (VAE latents for latent models, the images for pixel ones)."""
        return self.denoiser.encode(images)

    def decode(self, latents: Tensor) -> Tensor:
        """The sampler's space -> images in [-1, 1] (keeps the graph), the inverse of :meth:`encode`."""
        return self.denoiser.decode(latents)

    @torch.no_grad()
    def start_latent(self, cond: Tensor | None, *, seeds: Sequence[int] | Tensor | None = None,
                     images: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The latent a run starts from, at the start step: reference ``images`` in [-1, 1] encoded and
        DDIM-inverted to it, else x_T from per-sample ``seeds``, run without gradient down to it when the start
        step is > 0. Float32 model calls: the start latent is computed once and shared by every step."""
        if images is not None:
            return invert_ddim(self.denoiser, self.scheduler, self.encode(images), cond, start_step=self.start_step)
        if seeds is None:
            raise ValueError("start_latent needs per-sample seeds (x_T) or reference images (DDIM-inverted)")
        noise = self.initial_noise(seeds, dtype=dtype)
        return self.trajectory(noise, cond)[self.start_step] if self.start_step > 0 else noise

    def trajectory(self, x: Tensor, cond: Tensor | None) -> list[Tensor]:
        """Every latent of a plain float32 sampling run from x_T: [x_T, after step 0, ...] (no gradient)."""
        with torch.no_grad():
            out = sample(self.denoiser, self.scheduler, x, cond, policy="none", return_trajectory=True,
                         generator=self._noise_generator())
        return out.trajectory  # type: ignore[return-value]

    # ----- images -------------------------------------------------------------------------------------
    def generate(self, x: Tensor, cond: Tensor | None, policy: GradientPolicy | str | None = None, *,
                 policy_key: int = 0) -> Tensor:
        """Latent at the start step -> image in [0, 1], through the sampler and the decoder, with a graph where
        the policy keeps one and the spec's precision for every no-grad model call.

        Args:
            x: the start latent (B, C, H, W) (x_T + δ, an inverted reference + δ, ...).
            cond: from :meth:`condition`.
            policy: another policy for this call (benchmarks that compare policies on one sampler); None is the
                spec's.
            policy_key: which sampling run of the job this is (the optimisation step, a micro-batch's first
                noise seed): the policy's random draws derive from the run seed and this key.
        """
        return self._image(self._run(x, cond, policy, policy_key).sample, x.dtype)

    def loss_images(self, x: Tensor, cond: Tensor | None, policy: GradientPolicy | str | None = None, *,
                    policy_key: int = 0) -> list[Tensor]:
        """:meth:`generate`'s image first, then any other image the policy's loss is over: a job's loss for its
        gradient is the mean of its loss at each. Only DOODL over both EDICT images (``doodl``, ``images=both``,
        the default) has a second one, its y₀; every other policy differentiates the one image."""
        out = self._run(x, cond, policy, policy_key)
        latents = [out.sample] if out.partner is None else [out.sample, out.partner]
        return [self._image(z, x.dtype) for z in latents]

    def _run(self, x: Tensor, cond: Tensor | None, policy: GradientPolicy | str | None, policy_key: int
             ) -> SampleOutput:
        return sample(self.denoiser, self.scheduler, x, cond, policy=self.policy if policy is None else policy,
                      start_step=self.start_step, generator=self._noise_generator(),
                      policy_generator=self.policy_generator(policy_key), precision=self.precision)

    def _image(self, latent: Tensor, dtype: torch.dtype) -> Tensor:
        return to_unit_range(self.decode(latent).to(dtype))  # autocast may decode in bf16

    @torch.no_grad()
    def evaluate(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """Latent at the start step -> image in [0, 1] by plain float32 sampling (policy ``none``, whatever the
        spec's precision): what results, the best-δ tracker and eval rewards measure, so a report never depends
        on the precision an optimisation ran in."""
        out = sample(self.denoiser, self.scheduler, x, cond, policy="none", start_step=self.start_step,
                     generator=self._noise_generator())
        return to_unit_range(self.decode(out.sample).to(x.dtype))

    def xhat_guided(self, x: Tensor, cond: Tensor | None, loss_fn: Callable[[Tensor], Tensor],
                    scale: float) -> Tensor:
        """Images in [0, 1] from ``x`` with FreeDoM/DPS-style guidance (:mod:`lit_sdo.sampling.xhat_guidance`):
        at every step, ``scale`` × the gradient of ``loss_fn`` (images in [0, 1] -> loss (B,)) at its x̂₀ estimate."""
        x0 = xhat_guided_sample(self.denoiser, self.scheduler, x, cond,
                                lambda x0_hat: loss_fn(to_unit_range(self.decode(x0_hat))), scale=scale,
                                start_step=self.start_step, generator=self._noise_generator())
        with torch.no_grad():
            return to_unit_range(self.decode(x0))
