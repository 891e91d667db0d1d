"""How close SDO's attack gradient is to the exact one, on a given generator + classifier pair.

For the same samples, prints the cosine between each policy's gradient of the attack loss w.r.t. x_T
(SDO with the graph at step k, DRaFT-style last-K) and the exact gradient (``full``), averaged over the
samples whose clean generation the classifier labels y (elsewhere the margin loss is flat), the gradient
norms, and the share of those samples that ONE FGSM step of size τ along each gradient's sign fools.
Why: the attack succeeds when the cheap gradient points where the exact one does; on the digits DDPM it
does not (their 64-dim data subspace), on full-rank natural-image crops it should (see RESULTS.md).

    python benchmarks/attack_gradient_alignment.py [--samples 20] [--steps 30]
    python benchmarks/attack_gradient_alignment.py --model embedded:photos-ddpm --classifier embedded:photos-resnet
    python benchmarks/attack_gradient_alignment.py --model embedded:digits-flow --steps 32
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from lit_sdo.images import to_unit_range
from lit_sdo.models import build_sampler, load_diffusion
from lit_sdo.objectives import ClassifierObjective
from lit_sdo.sampling import GradientPolicy, noise_for_seeds, sample


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
    args = parser.parse_args(argv)

    generator = load_diffusion(args.model)
    objective = ClassifierObjective(args.classifier, loss="margin")
    classifier = objective.classifier
    num_classes = generator.num_classes or classifier.num_classes
    if num_classes > classifier.num_classes:
        raise ValueError(f"generator {args.model} has {num_classes} classes but classifier {args.classifier} "
                         f"only {classifier.num_classes}; pick a classifier trained on the generator's classes")
    is_shortcut = generator.is_shortcut  # flow matching: Eq. 18's identity skip
    denoiser, scheduler = build_sampler(generator, "shortcut" if is_shortcut else "ddim", args.steps)
    labels = torch.arange(args.samples) % num_classes
    x_t = noise_for_seeds(range(args.seed, args.seed + args.samples), denoiser.sample_shape)
    batch = {"label": labels}

    def images(x: torch.Tensor, policy: GradientPolicy | str) -> torch.Tensor:
        return to_unit_range(denoiser.decode(sample(denoiser, scheduler, x, labels, policy=policy).sample))

    def gradient(policy: GradientPolicy | str) -> torch.Tensor:
        x = x_t.clone().requires_grad_(True)
        loss = objective(images(x, policy), batch).sum()
        if not loss.requires_grad:  # last_k detaches every step before the last K: no path back to x_T
            return torch.zeros_like(x_t)
        return torch.autograd.grad(loss, x)[0]

    with torch.no_grad():
        clean_correct = classifier(images(x_t, "none")).argmax(1) == labels
    exact = gradient("full")
    print(f"{args.model} + {args.classifier}, {args.steps} steps, {args.samples} samples, "  # noqa: T201
          f"{int(clean_correct.sum())} clean-correct")
    print(f"| gradient | mean cosine to exact (clean-correct) | mean norm "  # noqa: T201
          f"| clean-correct fooled by one FGSM step (τ={args.eps}) |")
    print("|---|---:|---:|---:|")  # noqa: T201
    cases = {"full (exact)": exact} | {name: gradient(policy) for name, policy in policies(args.steps).items()}
    for name, grad in cases.items():
        # Over clean-correct samples: the margin loss is flat (exact gradient 0) where the class is already wrong.
        cosine = F.cosine_similarity(grad.flatten(1), exact.flatten(1))[clean_correct].mean()
        with torch.no_grad():
            fooled = classifier(images(x_t - args.eps * grad.sign(), "none")).argmax(1) != labels
        share = fooled[clean_correct].float().mean() if clean_correct.any() else torch.tensor(float("nan"))
        print(f"| {name} | {cosine:.3f} | {grad.flatten(1).norm(dim=1).mean():.2f} | {share:.0%} |")  # noqa: T201


if __name__ == "__main__":
    main()
