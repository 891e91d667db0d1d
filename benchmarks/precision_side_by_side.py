"""Attack and aesthetic guidance with float32 vs mixed-precision SDO gradients, side by side.

Both jobs optimise a δ with SDO gradients (k = 0) through :func:`lit_sdo.sampling.sample`, passing its
``precision`` (the no-grad skip calls in bf16 or fp16; the graph step, objective and optimiser in
float32). The outcome is always scored on a float32 generation of the final δ, so a precision is judged
by the δ it finds, not by its own forward. Precisions run interleaved per seed set; two seed sets give
the run-to-run noise a precision's difference must be compared with.

- attack: the classifier-bypass attack of Sec. 5.1.4 (embedded digits DDPM -> digits ResNet, margin
  loss, SGD on δ, ‖δ‖∞ ≤ eps, best δ = first success): success rate, final margin loss;
- aesthetic: |a(x₀) − 10| from t = 600 with Adam (Table 4's setting on the digits stand-in): final loss.

    python benchmarks/precision_side_by_side.py --precisions fp32,bf16 --seed-sets 0,1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lit_sdo.images import to_unit_range  # noqa: E402
from lit_sdo.io import write_json  # noqa: E402
from lit_sdo.models import build_sampler, load_classifier, load_diffusion  # noqa: E402
from lit_sdo.models.aesthetic import load_aesthetic  # noqa: E402
from lit_sdo.objectives import AestheticObjective, ClassifierObjective  # noqa: E402
from lit_sdo.optim import PerSampleOptimizer, project_linf  # noqa: E402
from lit_sdo.sampling import Precision, noise_for_seeds, sample, start_step_for  # noqa: E402
from lit_sdo.sampling.precision import check_supported  # noqa: E402

Generate = Callable[[Tensor, Precision | None], Tensor]  # latent, precision -> images in [0, 1]


def optimise(generate: Generate, loss_fn: Callable[[Tensor], Tensor], delta: Tensor, steps: int, optimizer: str,
             lr: float, precision: Precision | None, eps: float | None = None) -> Tensor:
    """``steps`` SDO gradient steps on δ (B, C, H, W) of the per-sample ``loss_fn``; returns the final δ."""
    optim = PerSampleOptimizer(tuple(delta.shape), optimizer, lr).to(delta.device)  # type: ignore[arg-type]
    rows = torch.arange(delta.shape[0], device=delta.device)
    for _ in range(steps):
        leaf = delta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(generate(leaf, precision)).sum(), leaf)
        optim.step(delta, grad, rows)
        if eps is not None:
            delta = project_linf(delta, eps)
    return delta


def attack_job(args: argparse.Namespace, seeds: list[int], precision: Precision | None) -> dict[str, float]:
    """PGD-style SDO attack; success and loss of the final δ, re-generated in float32."""
    model = load_diffusion("embedded:digits-ddpm")
    classifier = load_classifier("embedded:digits-resnet").requires_grad_(False).to(args.device)
    denoiser, scheduler = build_sampler(model, "ddim", args.sampling_steps)
    denoiser.requires_grad_(False).to(args.device)
    labels = (torch.tensor(seeds) % 10).to(args.device)
    x_T = noise_for_seeds(seeds, denoiser.sample_shape, device=args.device)  # (B, 1, 16, 16)
    objective = ClassifierObjective(loss="margin")

    def generate(delta: Tensor, prec: Precision | None) -> Tensor:
        out = sample(denoiser, scheduler, x_T + delta, labels, policy="sdo", precision=prec)
        return to_unit_range(denoiser.decode(out.sample))

    def loss_fn(images: Tensor) -> Tensor:
        return objective(classifier(images), labels)

    delta = optimise(generate, loss_fn, torch.zeros_like(x_T), args.attack_steps, "sgd", 0.1, precision, args.eps)
    with torch.no_grad():
        clean_logits = classifier(generate(torch.zeros_like(x_T), None))
        logits = classifier(generate(delta, None))
    clean_correct = clean_logits.argmax(1) == labels
    fooled = (logits.argmax(1) != labels) & clean_correct
    return {"success_rate": float(fooled.sum() / clean_correct.sum().clamp(min=1)),
            "loss": float(objective(logits, labels).mean())}


def aesthetic_job(args: argparse.Namespace, seeds: list[int], precision: Precision | None) -> dict[str, float]:
    """|a(x₀) − 10| from t = 600 with Adam; loss of the final δ, re-generated in float32."""
    model = load_diffusion("embedded:digits-ddpm")
    denoiser, scheduler = build_sampler(model, "ddim", args.sampling_steps)
    denoiser.requires_grad_(False).to(args.device)
    objective = AestheticObjective(load_aesthetic("embedded:digits-thickness", device=args.device), target=10.0)
    labels = (torch.tensor(seeds) % 10).to(args.device)
    start = start_step_for(scheduler, 600)
    with torch.no_grad():  # seeded x_T run down to t = 600 in float32
        x_T = noise_for_seeds(seeds, denoiser.sample_shape, device=args.device)
        run = sample(denoiser, scheduler, x_T, labels, policy="none", return_trajectory=True)
    x_start = run.trajectory[start]  # (B, 1, 16, 16)

    def generate(delta: Tensor, prec: Precision | None) -> Tensor:
        out = sample(denoiser, scheduler, x_start + delta, labels, policy="sdo", start_step=start, precision=prec)
        return to_unit_range(denoiser.decode(out.sample))

    delta = optimise(generate, objective, torch.zeros_like(x_start), args.guided_steps, "adam", 0.01, precision)
    with torch.no_grad():
        return {"loss": float(objective(generate(delta, None)).mean()),
                "start_loss": float(objective(generate(torch.zeros_like(x_start), None)).mean())}


JOBS = {"attack": attack_job, "aesthetic": aesthetic_job}


def parse_precision(name: str, allow_emulated: bool) -> Precision | None:
    return None if name == "fp32" else Precision(name, allow_emulated=allow_emulated)  # type: ignore[arg-type]


def run(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    records = []
    for job in args.jobs:
        for s, first_seed in enumerate(args.seed_sets):
            seeds = list(range(first_seed, first_seed + args.samples))
            order = args.precisions if s % 2 == 0 else args.precisions[::-1]  # interleaved, alternating
            for name in order:
                wall, cpu = time.perf_counter(), time.process_time()
                result = JOBS[job](args, seeds, parse_precision(name, args.allow_emulated))
                result |= {"job": job, "precision": name, "seed_set": first_seed,
                           "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
                log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
                records.append(result)
    return records


def summary(records: list[dict[str, Any]]) -> str:
    """Per job and precision: each metric per seed set, and the seed-set spread (run-to-run noise)."""
    lines = ["| job | precision | metric | per seed set | mean | cpu s (mean) |", "|---|---|---|---|---:|---:|"]
    for job in dict.fromkeys(r["job"] for r in records):
        for name in dict.fromkeys(r["precision"] for r in records):
            rows = [r for r in records if r["job"] == job and r["precision"] == name]
            for metric in ("success_rate", "loss"):
                if metric not in rows[0]:
                    continue
                values = [r[metric] for r in rows]
                lines.append(f"| {job} | {name} | {metric} | {', '.join(f'{v:.4f}' for v in values)} | "
                             f"{statistics.mean(values):.4f} | {statistics.mean(r['cpu_seconds'] for r in rows):.1f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--jobs", default="attack,aesthetic", help=f"comma-separated; from {', '.join(JOBS)}")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated; from fp32, bf16, fp16")
    parser.add_argument("--seed-sets", default="0,1000", help="first seed of each seed set")
    parser.add_argument("--samples", type=int, default=10, help="samples per seed set (labels = seed mod 10)")
    parser.add_argument("--sampling-steps", type=int, default=30, help="DDIM steps N")
    parser.add_argument("--attack-steps", type=int, default=10, help="SDO gradient steps of the attack")
    parser.add_argument("--guided-steps", type=int, default=10, help="Adam steps of the aesthetic guidance")
    parser.add_argument("--eps", type=float, default=0.1, help="attack's L∞ bound on δ")
    parser.add_argument("--allow-emulated", action="store_true",
                        help="run bf16/fp16 on a CPU without kernels for them (slow; numerics only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.jobs = [j for j in args.jobs.split(",") if j]
    if not args.jobs or not set(args.jobs) <= set(JOBS):
        parser.error(f"--jobs {','.join(args.jobs)} must be from {', '.join(JOBS)}")
    args.precisions = [p for p in args.precisions.split(",") if p]
    try:
        for name in args.precisions:
            precision = parse_precision(name, args.allow_emulated)
            if precision is not None:
                check_supported(precision, args.device)
    except ValueError as err:
        parser.error(f"--precisions: {err}")
    args.seed_sets = [int(s) for s in args.seed_sets.split(",") if s]
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    records = run(args, log)
    print(summary(records))
    if args.json is not None:
        write_json(args.json, records)
    return records


if __name__ == "__main__":
    main()
