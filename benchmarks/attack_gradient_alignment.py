"""How close SDO's attack gradient is to the exact one, on a given generator + classifier pair.

For the same samples, prints the cosine between each policy's gradient of the attack loss w.r.t. x_T
(SDO with the graph at step k, DRaFT-style last-K) and the exact gradient (``full``), averaged over the
samples whose clean generation the classifier labels y (elsewhere the margin loss is flat), the gradient
norms, and the share of those samples that ONE FGSM step of size τ along each gradient's sign fools.
Why: the attack succeeds when the cheap gradient points where the exact one does; on the shipped digits and
photo DDPMs it does not (cosine 0.33 and 0.24 at k = 0, RESULTS.md "Attack: why SDO is weak on the digits default").

    python benchmarks/attack_gradient_alignment.py [--samples 20] [--steps 30]
    python benchmarks/attack_gradient_alignment.py --model embedded:photos-ddpm --classifier embedded:photos-resnet \
        --guidance-scale 3    # the photo attack's generator at its shipped guidance
    python benchmarks/attack_gradient_alignment.py --model embedded:digits-flow --steps 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import input_gradient, markdown_table  # noqa: E402
from lit_sdo.models import load_diffusion  # noqa: E402
from lit_sdo.models.sampler import Sampler, SamplerSpec  # noqa: E402
from lit_sdo.objectives import ClassifierObjective  # noqa: E402
from lit_sdo.sampling import GradientPolicy  # noqa: E402


def policies(num_steps: int) -> dict[str, GradientPolicy]:
    """The cheap gradients compared with the exact one: SDO at the first, a middle and the last step, DRaFT-1."""
    cases = {f"sdo k={k}": GradientPolicy("sdo", k=k) for k in (0, num_steps // 3, num_steps - 1)}
    return cases | {"last_k K=1": GradientPolicy("last_k", last_k=1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20, help="samples; labels cycle over the classes")
    parser.add_argument("--steps", type=int, default=30, help="sampling steps")
    parser.add_argument("--eps", type=float, default=0.1, help="FGSM step τ")
    parser.add_argument("--model", default="embedded:digits-ddpm",
                        help="a diffusion model (DDIM sampler) or a shortcut / flow model (its own sampler)")
    parser.add_argument("--classifier", default="embedded:digits-resnet", help="the attacked classifier")
    parser.add_argument("--seed", type=int, default=0, help="first noise seed")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance (configs/attack/photos.yaml: 3, the generator's shipped scale)")
    args = parser.parse_args(argv)

    generator = load_diffusion(args.model, guidance_scale=args.guidance_scale)  # guidance wraps the denoiser
    objective = ClassifierObjective(args.classifier, loss="margin")
    classifier = objective.classifier
    num_classes = generator.num_classes or classifier.num_classes
    if num_classes > classifier.num_classes:
        raise ValueError(f"generator {args.model} has {num_classes} classes but classifier {args.classifier} "
                         f"only {classifier.num_classes}; pick a classifier trained on the generator's classes")
    # a shortcut / flow-matching model samples with its own scheduler (Eq. 18's identity skip), any other with DDIM
    spec = SamplerSpec(args.model, scheduler="shortcut" if generator.is_shortcut else "ddim", num_steps=args.steps,
                       guidance_scale=args.guidance_scale)
    sampler = Sampler(spec, model=generator)
    labels = torch.arange(args.samples) % num_classes
    x_T = sampler.initial_noise(range(args.seed, args.seed + args.samples))
    cond, batch = sampler.condition(labels), {"label": labels}

    def gradient(policy: GradientPolicy | str) -> torch.Tensor:
        return input_gradient(lambda x: objective(sampler.generate(x, cond, policy), batch).sum(), x_T)

    with torch.no_grad():
        clean_correct = classifier(sampler.evaluate(x_T, cond)).argmax(1) == labels
    exact = gradient("full")
    print(f"{args.model} + {args.classifier}, {args.steps} steps, guidance {args.guidance_scale:g}, "  # noqa: T201
          f"{args.samples} samples, {int(clean_correct.sum())} clean-correct")
    rows = []
    cases = {"full (exact)": exact} | {name: gradient(policy) for name, policy in policies(args.steps).items()}
    for name, grad in cases.items():
        # Over clean-correct samples: the margin loss is flat (exact gradient 0) where the class is already wrong.
        cosine = F.cosine_similarity(grad.flatten(1), exact.flatten(1))[clean_correct].mean()
        with torch.no_grad():
            fooled = classifier(sampler.evaluate(x_T - args.eps * grad.sign(), cond)).argmax(1) != labels
        share = fooled[clean_correct].float().mean() if clean_correct.any() else torch.tensor(float("nan"))
        rows.append([name, f"{cosine:.3f}", f"{grad.flatten(1).norm(dim=1).mean():.2f}", f"{share:.0%}"])
    print("\n".join(markdown_table(["gradient", "mean cosine to exact (clean-correct)", "mean norm",  # noqa: T201
                                    f"clean-correct fooled by one FGSM step (τ={args.eps})"], rows, "lrrr")))


if __name__ == "__main__":
    main()
