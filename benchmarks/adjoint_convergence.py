"""How close AdjointDPM's gradient (policy ``adjoint``) comes to the exact one as its solver steps grow.

The adjoint runs on an N-step DDIM schedule; its gradient w.r.t. x_T is compared, in float64, with
- the exact gradient of the same probability-flow ODE: full backprop through diffusers' Euler chain on
  ``--reference-steps`` geometric σ levels between the same two ends (Euler on the ODE, DDIM's own
  coordinates, converging to the ODE's flow map);
- full backprop through the N-step DDIM chain itself (what ``full`` in gradient_cost.py computes).
The loss is <w, x₀> with a fixed random w. Run ``python benchmarks/adjoint_convergence.py --help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import MODELS, build_setup, cosine, input_gradient, markdown_table, measure  # noqa: E402
from lit_sdo.sampling import GradientPolicy, build_scheduler, sample  # noqa: E402
from lit_sdo.sampling.flow_ode import probability_flow  # noqa: E402


def gradient(denoiser, scheduler, x: Tensor, cond: Tensor | None, w: Tensor, policy: GradientPolicy | str,
             output_scale: float = 1.0) -> tuple[Tensor, float]:
    """(d <w, output_scale·x₀> / d x, seconds) of one sampling run."""
    grad, cost = measure(lambda: input_gradient(
        lambda x: (sample(denoiser, scheduler, x, cond, policy=policy).sample * output_scale * w).sum(), x))
    return grad, cost["seconds"]


def run(model: str, steps: int, reference_steps: int, solvers: dict[str, list[int]], batch: int) -> list[str]:
    setup = build_setup(model, "cpu", batch, "latent", dtype=torch.float64)
    ddim = build_scheduler("ddim", steps, setup.scheduler_config)
    sigmas = probability_flow(ddim).sigmas  # (N + 1,) levels of the DDIM run
    fine = build_scheduler("euler", 1, setup.scheduler_config)
    geometric = torch.logspace(sigmas[0].log10(), sigmas[-2].log10(), reference_steps, dtype=torch.float64)
    fine.set_timesteps(sigmas=geometric.tolist() + [float(sigmas[-1])])
    w = torch.randn(setup.x_T.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    # The Euler chain samples y = x·√(1+σ₀²) and returns y at the last level; DDIM returns y/√(1+σ_end²).
    scale_in, scale_out = float((1 + sigmas[0] ** 2).sqrt()), float(1 / (1 + sigmas[-1] ** 2).sqrt())
    exact, exact_seconds = gradient(setup.denoiser, fine, setup.x_T * scale_in, setup.cond, w, "full", scale_out)
    chain, chain_seconds = gradient(setup.denoiser, ddim, setup.x_T, setup.cond, w, "full")
    rows = []
    for solver, substeps in solvers.items():
        for m in substeps:
            grad, seconds = gradient(setup.denoiser, ddim, setup.x_T, setup.cond, w,
                                     GradientPolicy("adjoint", solver=solver, substeps=m))
            rows.append([solver, m, steps * m, f"{seconds:.2f}", f"{cosine(grad, exact):.5f}",
                         f"{cosine(grad, chain):.5f}"])
            print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    return [f"{model}, batch {batch}, DDIM N = {steps}, float64; exact ODE gradient: full backprop through "
            f"{reference_steps} Euler steps ({exact_seconds:.1f} s); full DDIM backprop {chain_seconds:.1f} s",
            *markdown_table(["solver", "substeps", "solver steps", "seconds", "cosine to the exact ODE gradient",
                             "cosine to full DDIM"], rows, "lrrrrr")]


def parse_solvers(text: str) -> dict[str, list[int]]:
    """``euler:1,2,4;rk4:1,2`` -> {"euler": [1, 2, 4], "rk4": [1, 2]}."""
    solvers = {}
    for part in filter(None, text.split(";")):
        name, _, counts = part.partition(":")
        solvers[name] = [int(c) for c in counts.split(",")] if counts else [1]
    return solvers


def main(argv: Sequence[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="digits-ddpm", choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps N of the adjoint's schedule")
    parser.add_argument("--reference-steps", type=int, default=200, help="Euler steps of the exact reference")
    parser.add_argument("--solvers", default="euler:1,2,4,8;midpoint:1,2;rk4:1,2",
                        help="solver:substeps,... separated by ';'")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = run(args.model, args.steps, args.reference_steps, parse_solvers(args.solvers), args.batch)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
