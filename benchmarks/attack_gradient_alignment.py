"""Why SDO's attack is weak on the embedded digits DDPM: its gradient against the exact one.

For the same samples, prints the cosine between the SDO gradient of the attack loss w.r.t. x_T (graph at
step k) and the exact gradient (``full``), the gradient norms, and the share of samples that a single
FGSM step of size τ along each gradient's sign fools.

    python benchmarks/attack_gradient_alignment.py [--samples 20] [--steps 30]
    python benchmarks/attack_gradient_alignment.py --generator embedded:digits-flow --steps 32
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from lit_sdo.images import to_unit_range
from lit_sdo.models import build_sampler, load_diffusion
from lit_sdo.objectives import ClassifierObjective
from lit_sdo.sampling import GradientPolicy, noise_for_seeds, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30, help="sampling steps")
    parser.add_argument("--eps", type=float, default=0.1, help="FGSM step τ")
    parser.add_argument("--generator", default="embedded:digits-ddpm",
                        help="a diffusion model (DDIM sampler) or a shortcut / flow model (its own sampler)")
    args = parser.parse_args()

    generator = load_diffusion(args.generator)
    is_shortcut = generator.is_shortcut  # flow matching: Eq. 18's identity skip
    denoiser, scheduler = build_sampler(generator, "shortcut" if is_shortcut else "ddim", args.steps)
    objective = ClassifierObjective("embedded:digits-resnet", loss="margin")
    classifier = objective.classifier
    labels = torch.arange(args.samples) % 10
    batch = {"label": labels}
    x_t = noise_for_seeds(range(args.samples), denoiser.sample_shape)

    def images(x: torch.Tensor, policy: GradientPolicy | str) -> torch.Tensor:
        return to_unit_range(denoiser.decode(sample(denoiser, scheduler, x, labels, policy=policy).sample))

    def gradient(policy: GradientPolicy | str) -> torch.Tensor:
        x = x_t.clone().requires_grad_(True)
        return torch.autograd.grad(objective(images(x, policy), batch).sum(), x)[0]

    exact = gradient("full")
    print(f"{args.generator}, {args.steps} steps, {args.samples} samples")
    print(f"| gradient | mean cosine to exact | mean norm | fooled by one FGSM step (τ={args.eps}) |")
    print("|---|---:|---:|---:|")
    cases = {"full (exact)": exact} | {f"sdo k={k}": gradient(GradientPolicy("sdo", k=k))
                                        for k in (0, args.steps // 3, args.steps - 1)}
    for name, grad in cases.items():
        cosine = F.cosine_similarity(grad.flatten(1), exact.flatten(1)).mean()
        with torch.no_grad():
            fooled = (classifier(images(x_t - args.eps * grad.sign(), "none")).argmax(1) != labels).float().mean()
        print(f"| {name} | {cosine:.3f} | {grad.flatten(1).norm(dim=1).mean():.2f} | {fooled:.0%} |")


if __name__ == "__main__":
    main()
