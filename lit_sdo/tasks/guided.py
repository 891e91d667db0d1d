"""Guided generation (paper Sec. 5.1–5.2): text-guided editing, style guidance, aesthetic guidance.

Each task is a :class:`~lit_sdo.tasks.latent.LatentOptimizationModule` whose objective scores the
decoded x₀; they share :class:`GuidedModule`, which supplies the start latent — a real reference image
DDIM-inverted to the start step, or seeded noise run (without gradient) down to the start step — and
one results writer: each metric for the unguided ("original") and the guided image of every sample.

    lit-sdo fit --config configs/edit/digits.yaml       # Table 1: invert, then λ·text + (1−λ)·fidelity
    lit-sdo fit --config configs/style/digits.yaml      # Table 2: Gram style loss from t = 600
    lit-sdo fit --config configs/aesthetic/digits.yaml  # Table 4: |a(x₀) − 10| from t = 600
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_sdo import metrics
from lit_sdo.datamodules import digits_test_tensors, read_image_file
from lit_sdo.images import image_grid, to_unit_range
from lit_sdo.models import Classifier, load_classifier
from lit_sdo.models.aesthetic import load_aesthetic
from lit_sdo.models.text_image import layer_features, load_text_image
from lit_sdo.objectives import AestheticObjective, GramStyleObjective, TextEditObjective
from lit_sdo.optim import OptimizerName
from lit_sdo.sampling import noise_for_seeds, sample
from lit_sdo.sampling.inversion import invert_ddim
from lit_sdo.sampling.xhat_guidance import xhat_guided_sample
from lit_sdo.tasks.latent import LatentOptimizationModule


class GuidedModule(LatentOptimizationModule):
    """Shared plumbing of the guided-generation tasks (subclasses add an objective and metrics).

    Subclasses repeat every argument in their signature: ``save_hyperparameters`` under LightningCLI
    records only the outermost ``__init__``'s arguments, and the base reads ``hparams`` (e.g. ``eps``).

    Args (beyond :class:`LatentOptimizationModule`'s):
        classifier: scores label preservation (agreement of its prediction with the sample's label:
            the reference digit's class, or the conditioning class); None to skip.
        sampler_seed: seed of the sampler's own noise (stochastic schedulers such as LCM), fixed so every
            optimisation step sees the same sampler.
        grid_samples: samples shown in the results grid.
    """

    task = "guided"

    def __init__(self, generator: str = "embedded:digits-ddpm", scheduler: str = "ddim", num_steps: int = 50,
                 guidance_scale: float = 1.0, policy: str = "sdo", k: int | Literal["random"] = 0, last_k: int = 1,
                 start_timestep: int | None = None, eps: float | None = None, optimizer: OptimizerName = "adam",
                 lr: float = 0.01, output_dir: str | None = None, classifier: str | None = None,
                 sampler_seed: int = 0, grid_samples: int = 8) -> None:
        super().__init__(generator=generator, scheduler=scheduler, num_steps=num_steps,
                         guidance_scale=guidance_scale, policy=policy, k=k, last_k=last_k,
                         start_timestep=start_timestep, eps=eps, optimizer=optimizer, lr=lr, output_dir=output_dir)
        self.classifier: Classifier | None = None
        if classifier is not None:
            self.classifier = load_classifier(classifier).requires_grad_(False)
        self.save_hyperparameters()
        train_steps = self.scheduler.config.get("num_train_timesteps", 1000)
        if start_timestep is not None and not 0 <= start_timestep < train_steps:
            raise ValueError(f"start_timestep={start_timestep} is outside the schedule [0, {train_steps}) of "
                             f"{self.generator.name}; pass e.g. start_timestep: {int(0.6 * train_steps)}")
        self._start_cache: dict[int, Tensor] = {}  # sample index -> start latent (deterministic, so not saved)
        self._prompt_cache: dict[str, Tensor] = {}

    def frozen_modules(self) -> list[torch.nn.Module]:
        return list(self.children())  # every network here is frozen (δ is a parameter, not a module)

    def check_data(self, datamodule: Any) -> None:
        dataset = getattr(datamodule, "dataset", None)
        images = getattr(dataset, "images", None)
        if images is not None:
            size, channels = self.generator.image_size, self.generator.channels
            if tuple(images.shape[1:]) != (channels, size, size):
                raise ValueError(f"reference images are {tuple(images.shape[1:])} but generator {self.generator.name} "
                                 f"makes ({channels}, {size}, {size}); set data.init_args.image_size={size} and "
                                 f"channels={channels} to resize")
        labels = [int(y) for y in getattr(dataset, "labels", [])]
        n = self.generator.num_classes
        if n is not None and labels and not 0 <= min(labels) <= max(labels) < n:
            raise ValueError(f"labels {min(labels)}..{max(labels)} are out of range for class-conditional generator "
                             f"{self.generator.name} ({n} classes); use labelled references (e.g. source: digits)")

    # ----- the start latent and the condition -------------------------------------------------------
    def condition(self, batch: dict[str, Any]) -> Tensor | None:
        if self.generator.encode_prompt is not None:  # text-conditioned generator: the sample's prompt
            prompts = batch.get("prompt") or [""] * len(batch["index"])
            missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
            if missing:
                for p, e in zip(missing, self.generator.encode_prompt(missing), strict=True):
                    self._prompt_cache[p] = e
            return torch.stack([self._prompt_cache[p] for p in prompts]).to(self.device)
        if self.generator.num_classes is not None:
            return batch["label"]
        return None

    def encode_reference(self, images: Tensor) -> Tensor:
        """Reference images in [-1, 1] -> the sampler's space (VAE latents for latent models)."""
        vae = self.denoiser.vae
        if vae is None:
            return images
        return vae.encode(images).latent_dist.mean * getattr(vae.config, "scaling_factor", 1.0)

    @torch.no_grad()
    def start_latent(self, batch: dict[str, Any]) -> Tensor:
        """Reference image -> DDIM inversion to the start step; else seeded x_T run down to the start step."""
        rows = batch["index"].tolist()
        todo = [j for j, r in enumerate(rows) if r not in self._start_cache]
        if todo:
            cond = self.condition(batch)
            cond = None if cond is None else cond[todo]
            if "image" in batch:
                reference = self.encode_reference(batch["image"][todo].to(self.device))
                latents = invert_ddim(self.denoiser, self.scheduler, reference, cond, start_step=self.start_step)
            else:
                latents = noise_for_seeds(batch["seed"][todo].tolist(), self.denoiser.sample_shape, device=self.device)
                if self.start_step > 0:
                    run = sample(self.denoiser, self.scheduler, latents, cond, policy="none", return_trajectory=True,
                                 generator=self.sampler_generator())
                    latents = run.trajectory[self.start_step]
            for j, latent in zip(todo, latents, strict=True):
                self._start_cache[rows[j]] = latent
        return torch.stack([self._start_cache[r] for r in rows]).to(self.device)

    def sampler_generator(self) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(self.hparams.sampler_seed)

    def generate(self, x: Tensor, cond: Tensor | None, policy: Any) -> Tensor:
        out = sample(self.denoiser, self.scheduler, x, cond, policy=policy, start_step=self.start_step,
                     generator=self.sampler_generator())
        return to_unit_range(self.denoiser.decode(out.sample))

    def guide_per_step(self, batch: dict[str, Any], scale: float) -> Tensor:
        """The FreeDoM/DPS-style baseline on the same inputs: one sampling pass with per-step x̂₀ guidance
        of this task's loss (no δ, no optimisation loop); returns images in [0, 1]."""
        x_start, cond = self.start_latent(batch), self.condition(batch)

        def loss_fn(x0_hat: Tensor) -> Tensor:
            return self.loss_and_success(to_unit_range(self.denoiser.decode(x0_hat)), batch)[0]

        x0 = xhat_guided_sample(self.denoiser, self.scheduler, x_start, cond, loss_fn, scale=scale,
                                start_step=self.start_step, generator=self.sampler_generator())
        with torch.no_grad():
            return to_unit_range(self.denoiser.decode(x0))

    # ----- evaluation and results -------------------------------------------------------------------
    def score_images(self, images: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per-sample metrics (B,) of images in [0, 1]: the loss, label agreement, and the task's own."""
        scores = {"loss": self.loss_and_success(images, batch)[0]}
        if self.classifier is not None:
            scores["label_agreement"] = (self.classifier(images).argmax(1) == batch["label"]).float()
        return scores

    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, Any], offer_current: bool) -> None:
        x_start, cond, best = self.final_delta(batch, offer_current)
        record: dict[str, Tensor] = {"index": batch["index"], "label": batch["label"], "seed": batch["seed"]}
        if "image" in batch:
            record["reference"] = to_unit_range(batch["image"])
        for name, delta in (("original", torch.zeros_like(best)), ("guided", best)):
            images = self.generate(x_start + delta, cond, "none")
            record[name] = images
            record |= {f"{key}_{name}": value.float() for key, value in self.score_images(images, batch).items()}
        self._records.append(record)

    def write_results(self) -> None:
        records = self.gather_records()
        if not self.trainer.is_global_zero:
            return
        out_dir = self.output_folder()
        images = {k: records.pop(k) for k in ("reference", "style", "original", "guided") if k in records}
        per_sample_keys = [k for k, v in records.items() if v.dim() == 1]
        summary: dict[str, Any] = {"num_samples": len(records["label"])}
        summary |= {f"{k}_mean": float(records[k].float().mean()) for k in per_sample_keys
                    if k not in ("label", "seed")}
        samples = [{"index": i} | {k: records[k][i].item() for k in per_sample_keys}
                   for i in range(summary["num_samples"])]
        prompts = getattr(getattr(self.trainer.datamodule, "dataset", None), "prompts", None)
        if prompts is not None:
            for row in samples:
                row["prompt"] = prompts[row["index"]]
        n = self.hparams.grid_samples
        columns = [v[:n] for v in images.values()]
        grid = image_grid(torch.stack(columns, dim=1).flatten(0, 1), nrow=len(columns))
        self.publish({"task": self.task, "config": dict(self.hparams), "aggregate": summary, "samples": samples},
                     {"delta": self.tracker.best}, {"generator": self.hparams.generator, "task": self.task},
                     grid, f"{self.task}/{'|'.join(images)}")
        print(f"[lit_sdo] {self.task}: loss {summary['loss_original_mean']:.4f} -> {summary['loss_guided_mean']:.4f} "
              f"(unguided -> guided, mean of {summary['num_samples']}); results in {out_dir / 'results.json'}")


class EditModule(GuidedModule):
    """Text-guided editing (Table 1): DDIM-invert a real image to x_T, optimise x_T (SDO at the first step).

    Args (beyond :class:`GuidedModule`'s):
        text_image: ``embedded:digits-lit`` or a CLIP (transformers id or folder).
        lam: λ ∈ [0, 1]: loss = λ·(1 − cos(image, text)) + (1 − λ)·mean((x₀ − x_ref)²).
    """

    task = "edit"

    def __init__(self, generator: str = "embedded:digits-ddpm", text_image: str = "embedded:digits-lit",
                 lam: float = 0.5, scheduler: str = "ddim", num_steps: int = 50, guidance_scale: float = 1.0,
                 policy: str = "sdo", k: int | Literal["random"] = 0, last_k: int = 1,
                 start_timestep: int | None = None, optimizer: OptimizerName = "adam", lr: float = 0.01,
                 output_dir: str | None = None, classifier: str | None = None, sampler_seed: int = 0,
                 grid_samples: int = 8, eps: float | None = None) -> None:
        TextEditObjective(None, lam)  # type: ignore[arg-type] - λ is checked before any model is loaded
        super().__init__(generator=generator, scheduler=scheduler, num_steps=num_steps, guidance_scale=guidance_scale,
                         policy=policy, k=k, last_k=last_k, start_timestep=start_timestep, optimizer=optimizer,
                         lr=lr, output_dir=output_dir, classifier=classifier, sampler_seed=sampler_seed,
                         grid_samples=grid_samples, eps=eps)
        self.save_hyperparameters()
        self.objective = TextEditObjective(load_text_image(text_image), lam)

    def check_data(self, datamodule: Any) -> None:
        if getattr(getattr(datamodule, "dataset", None), "images", None) is None:
            raise ValueError("text-guided editing needs reference images: use data class_path lit_sdo.datamodules."
                             "ReferenceImageDataModule (source: digits, skimage:<names> or a folder)")
        super().check_data(datamodule)

    def loss_and_success(self, images: Tensor, batch: dict[str, Any]) -> tuple[Tensor, None]:
        return self.objective(images, batch["prompt"], to_unit_range(batch["image"])), None

    def score_images(self, images: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        reference = to_unit_range(batch["image"])
        model = self.objective.model
        scores = super().score_images(images, batch) | {
            "clip_score": metrics.clip_score(model.image_embeddings(images),
                                             self.objective.text(batch["prompt"], images.device)),
            "ssim_to_reference": metrics.ssim(images, reference),
            "l2_to_reference": metrics.lp_distances(images, reference)[0]}
        perceptual = metrics.lpips_distance(images, reference)
        if perceptual is not None:
            scores["lpips_to_reference"] = perceptual
        return scores


def load_style_image(spec: str, size: int, channels: int) -> Tensor:
    """``digits:<test index>`` or an image file -> (1, channels, size, size) in [0, 1]."""
    if spec.startswith("digits:"):
        images, _ = digits_test_tensors(size)
        index = int(spec.split(":", 1)[1])
        if not 0 <= index < len(images):
            raise ValueError(f"style_image={spec!r}: the digits test split has {len(images)} images")
        image = to_unit_range(images[index:index + 1])
    else:
        if not Path(spec).expanduser().is_file():
            raise FileNotFoundError(f"style image {spec!r} not found: pass style_image=<image file> or "
                                    "digits:<test index>")
        image = read_image_file(spec, channels)[None]
    if image.shape[1] != channels:
        image = image.expand(-1, channels, -1, -1) if channels == 3 else image.mean(1, keepdim=True)
    if tuple(image.shape[-2:]) != (size, size):
        warnings.warn(f"style image {spec!r} is {image.shape[-1]}×{image.shape[-2]}: resized to {size}×{size}",
                      stacklevel=2)
        image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return image.clamp(0, 1)


class StyleModule(GuidedModule):
    """Style guidance (Table 2): Gram-matrix loss on an encoder layer, latent optimised at t = 600.

    Args (beyond :class:`GuidedModule`'s):
        style_image: ``digits:<test index>`` or an image file.
        encoder: the image encoder whose layer gives the features (``embedded:digits-lit``, or a CLIP).
        layer: the encoder layer (paper: CLIP vision layer 3; embedded: image-tower block 1..3).
    """

    task = "style"

    def __init__(self, style_image: str = "digits:0", generator: str = "embedded:digits-ddpm",
                 encoder: str = "embedded:digits-lit", layer: int = 2, scheduler: str = "ddim", num_steps: int = 8,
                 guidance_scale: float = 1.0, policy: str = "sdo", k: int | Literal["random"] = 0, last_k: int = 1,
                 start_timestep: int | None = 600, optimizer: OptimizerName = "adam", lr: float = 0.01,
                 output_dir: str | None = None, classifier: str | None = None, sampler_seed: int = 0,
                 grid_samples: int = 8, eps: float | None = None) -> None:
        super().__init__(generator=generator, scheduler=scheduler, num_steps=num_steps, guidance_scale=guidance_scale,
                         policy=policy, k=k, last_k=last_k, start_timestep=start_timestep, optimizer=optimizer,
                         lr=lr, output_dir=output_dir, classifier=classifier, sampler_seed=sampler_seed,
                         grid_samples=grid_samples, eps=eps)
        self.save_hyperparameters()
        style = load_style_image(style_image, self.generator.image_size, self.generator.channels)
        self.encoder = load_text_image(encoder)
        self.objective = GramStyleObjective(lambda x: layer_features(self.encoder, x, layer), style)
        self.style = style

    def loss_and_success(self, images: Tensor, batch: dict[str, Any]) -> tuple[Tensor, None]:
        return self.objective(images), None

    def evaluate_batch(self, batch: dict[str, Any], offer_current: bool) -> None:
        super().evaluate_batch(batch, offer_current)
        self._records[-1]["style"] = self.style.to(self.device).expand_as(self._records[-1]["guided"])


class AestheticModule(GuidedModule):
    """Aesthetic guidance (Table 4): |a(x₀) − target| from t = 600, on generated or DDIM-inverted images.

    Args (beyond :class:`GuidedModule`'s):
        predictor: ``embedded:digits-thickness`` (a stroke-width stand-in, see lit_sdo.models.aesthetic) or
            the path of LAION's aesthetic MLP weights (then ``clip`` is needed).
        clip: CLIP for the LAION MLP (ViT-L/14 for the published weights).
        target: the score to reach (paper: 10).
    """

    task = "aesthetic"

    def __init__(self, generator: str = "embedded:digits-ddpm", predictor: str = "embedded:digits-thickness",
                 clip: str | None = None, target: float = 10.0, scheduler: str = "ddim", num_steps: int = 50,
                 guidance_scale: float = 1.0, policy: str = "sdo", k: int | Literal["random"] = 0, last_k: int = 1,
                 start_timestep: int | None = 600, optimizer: OptimizerName = "adam", lr: float = 0.01,
                 output_dir: str | None = None, classifier: str | None = None, sampler_seed: int = 0,
                 grid_samples: int = 8, eps: float | None = None) -> None:
        super().__init__(generator=generator, scheduler=scheduler, num_steps=num_steps, guidance_scale=guidance_scale,
                         policy=policy, k=k, last_k=last_k, start_timestep=start_timestep, optimizer=optimizer,
                         lr=lr, output_dir=output_dir, classifier=classifier, sampler_seed=sampler_seed,
                         grid_samples=grid_samples, eps=eps)
        self.save_hyperparameters()
        self.score = load_aesthetic(predictor, clip)
        self.objective = AestheticObjective(self.score, target)
        self.measures_thickness = predictor.endswith("digits-thickness")

    def loss_and_success(self, images: Tensor, batch: dict[str, Any]) -> tuple[Tensor, None]:
        return self.objective(images), None

    def score_images(self, images: Tensor, batch: dict[str, Any]) -> dict[str, Tensor]:
        scores = super().score_images(images, batch) | {"aesthetic_score": self.score(images)}
        if self.measures_thickness:  # the stand-in's ground truth: the measured stroke width
            scores["measured_stroke_width"] = metrics.stroke_thickness(images).to(images.device)
        return scores
