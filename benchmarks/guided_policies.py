"""Side by side: the three guided-generation tasks with SDO, full backprop, and per-step x̂₀ guidance.

For each task (configs/<task>/digits.yaml, the same inputs for every method): each policy string as a CLI job
(:mod:`benchmarks.policy_sweep`; results.json gives the metrics and seconds per step), and FreeDoM/DPS-style
guidance through the one-step x̂₀ estimate for each ρ. Memory per step: CUDA's allocator peak, or on CPU the peak
bytes autograd holds for backward (:class:`lit_sdo.callbacks.SavedTensorMeter`, weights excluded), so the graphs
AdjointDPM and DOODL rebuild in backward count at their largest, not summed. The table goes to the
"## Guided generation" section of ``--results``.

    python benchmarks/guided_policies.py [--tasks edit style aesthetic] [--samples 10] [--opt-steps N]
        [--policies sdo full adjoint doodl sdo-tail=4] [--memory-only]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import policy_sweep as sweep  # noqa: E402
from benchmarks.common import fmt_or_dash, markdown_table  # noqa: E402
from lit_sdo.callbacks import SavedTensorMeter  # noqa: E402
from lit_sdo.tasks.xhat_baseline import xhat_guided_images  # noqa: E402

TASK_METRICS = {  # the task metric first; then what else the task reports
    "edit": ["loss", "clip_score", "ssim_to_reference", "label_agreement"],
    "style": ["loss", "label_agreement"],
    "aesthetic": ["loss", "aesthetic_score", "measured_stroke_width", "label_agreement"],
}


def config_path(task: str) -> str:
    return str(ROOT / f"configs/{task}/digits.yaml")


def job_overrides(args: argparse.Namespace, task: str) -> list[str]:
    """The inputs (``--samples`` of them) and sampler of every run of ``task``."""
    if task == "edit":
        out = [f"--data.init_args.num_samples={args.samples}", f"--data.init_args.batch_size={args.samples}"]
    else:
        per_class = max(args.samples // 10, 1)
        out = ["--data.init_args.num_classes=10", f"--data.init_args.per_class={per_class}",
               f"--data.init_args.batch_size={per_class * 10}"]
    if args.num_steps is not None and task != "style":  # style runs the shortcut model's own 8 steps
        out.append(f"--model.init_args.sampler.num_steps={args.num_steps}")
    if args.model is not None:
        out.append(f"--model.init_args.sampler.model={args.model}")
    return out + sweep.device_overrides(args)


def optimisation_steps(task: str, args: argparse.Namespace) -> int:
    """--opt-steps, or the task config's ``trainer.max_epochs`` (the paper's count: 50 / 150 / 100)."""
    if args.opt_steps is not None:
        return args.opt_steps
    return int(yaml.safe_load(Path(config_path(task)).read_text())["trainer"]["max_epochs"])


def step_memory(module: Any, batch: dict[str, Any], policy: str) -> float:
    """MiB for one optimisation step: CUDA peak, or on CPU the peak bytes autograd holds for backward."""
    x_start, cond = module.start_latent(batch), module.condition(batch)
    delta = torch.zeros_like(x_start, requires_grad=True)
    meter = SavedTensorMeter.excluding_weights_of(module)
    if x_start.is_cuda:
        torch.cuda.reset_peak_memory_stats()
    with meter.hooks():
        if policy == "xhat":  # the largest per-step graph: one model call and the loss of its x̂₀
            xhat_guided_images(module, batch, scale=0.0)
        else:
            images = module.sampler.generate(x_start + delta, cond, policy)
            module.objective(images, batch).sum().backward()
    if x_start.is_cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return meter.peak / 2**20  # x̂₀ guidance: its largest sampling step (each frees its graph)


def run_xhat(scale: float, module: Any, datamodule: Any) -> dict[str, Any]:
    """Per-step x̂₀ guidance over every sample; the same metrics as the CLI job's aggregate."""
    sums: dict[str, float] = {}
    count, seconds = 0, 0.0
    for batch in datamodule.train_dataloader():
        started = time.perf_counter()
        guided = xhat_guided_images(module, batch, scale)
        seconds += time.perf_counter() - started
        with torch.no_grad():
            original = module.sampler.generate(module.start_latent(batch), module.condition(batch), policy="none")
            for name, images in (("original", original), ("optimized", guided)):
                measured = module.objective.measure(images, batch)
                for measure in module.measures:
                    measured |= measure(images, batch)
                for key, value in measured.items():
                    if value.dim() == 1:  # per-sample numbers (not feature rows)
                        sums[f"{key}_{name}_mean"] = sums.get(f"{key}_{name}_mean", 0.0) + float(value.float().sum())
        count += len(batch["index"])
    return {k: v / count for k, v in sums.items()} | {"seconds_per_run": seconds, "num_samples": count}


def metric_cells(r: dict[str, Any], keys: list[str]) -> list[str]:
    """``original → guided`` of each metric."""
    return [f"{fmt_or_dash(r.get(f'{k}_original_mean'), '.4f')} → {fmt_or_dash(r.get(f'{k}_optimized_mean'), '.4f')}"
            for k in keys]


def task_table(task: str, args: argparse.Namespace) -> str:
    """The task's table: a row per policy (a CLI run each) and per x̂₀ guidance step ρ."""
    keys, steps = TASK_METRICS[task], optimisation_steps(task, args)
    job = sweep.build_job(config_path(task), job_overrides(args, task))
    module, batch = job.model, next(iter(job.datamodule.train_dataloader()))
    rows, reasons = sweep.run_policies(config_path(task), args.policies, job_overrides(args, task), sweep.aggregate,
                                 sampler=module.sampler, extra=lambda policy: [
                                     f"--trainer.max_epochs={steps}", "--trainer.enable_checkpointing=false",
                                     "--trainer.callbacks=[]"])

    def cells(policy: str, r: dict[str, Any]) -> list[str]:
        sec = r["seconds_per_step"]
        return [*metric_cells(r, keys), f"{sec:.3f}", str(steps), f"{sec * steps:.1f}",
                sweep.memory_cell(policy, step_memory(module, batch, policy))]

    lines = sweep.policy_table(["method", *(f"{k} (orig → guided)" for k in keys), "s / opt. step", "opt. steps",
                                "total s", "MiB / step"], args.policies, rows, reasons, cells)
    for scale in args.xhat_scales:
        r = run_xhat(scale, module, job.datamodule)
        lines.append(f"| x̂₀ guidance ρ={scale} | " + " | ".join(metric_cells(r, keys)) + f" | – | 1 pass | "
                     f"{r['seconds_per_run']:.1f} | {step_memory(module, batch, 'xhat'):.2f} |")
    return "\n".join(lines)


def print_memory_tables(args: argparse.Namespace) -> None:
    """The MiB / step column alone, per task: one gradient per policy row and per x̂₀ pass (no optimisation)."""
    for task in args.tasks:
        job = sweep.build_job(config_path(task), job_overrides(args, task))
        module, batch = job.model, next(iter(job.datamodule.train_dataloader()))
        rows = [[policy, sweep.unavailable_reason(module.sampler, policy) or
                 sweep.memory_cell(policy, step_memory(module, batch, policy))] for policy in args.policies]
        if args.xhat_scales:
            rows.append(["x̂₀ guidance", f"{step_memory(module, batch, 'xhat'):.2f}"])
        print(f"\n### {task} (configs/{task}/digits.yaml), {args.samples} inputs\n" +
              "\n".join(markdown_table(["method", "MiB / step"], rows)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_arguments(parser, ["sdo", "full", "adjoint", "doodl", "sdo-tail=4"], "guided_policies")
    parser.add_argument("--tasks", nargs="+", default=["edit", "style", "aesthetic"], choices=list(TASK_METRICS))
    parser.add_argument("--samples", type=int, default=10, help="inputs per task (digits; multiples of 10)")
    parser.add_argument("--opt-steps", type=int, default=None,
                        help="optimisation steps of sdo / full (default: each config's, the paper's 50 / 150 / 100)")
    parser.add_argument("--num-steps", type=int, default=None,
                        help="sampling steps of edit/aesthetic (default: the config's)")
    parser.add_argument("--model", default=None, help="another diffusion model (default: the config's)")
    parser.add_argument("--xhat-scales", nargs="*", type=float, default=[0.05, 0.2], help="ρ values for x̂₀ guidance")
    parser.add_argument("--memory-only", action="store_true",
                        help="print only each row's MiB / step (one gradient per row; no optimisation, no --results)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.memory_only:
        print_memory_tables(args)
        return
    sections = []
    for task in args.tasks:
        table = task_table(task, args)
        print(f"\n### {task}\n{table}")
        sections.append(f"### {task} (configs/{task}/digits.yaml)\n\n{table}")
    body = (f"(CPU, 2 shared cores, OMP_NUM_THREADS=1; {args.samples} inputs per task, "
            "Adam optimisation steps for every policy row as in each table; every number below is printed by that "
            "command). Each metric is the mean over inputs of the unguided image → the guided one (best loss per "
            "sample for the policy rows). 'loss' is the task's objective (edit: λ·text distance + (1−λ)·MSE to the "
            "reference; style: Gram distance; aesthetic: |score − 10|). The aesthetic score is the embedded "
            "stroke-width stand-in (digits-thickness), NOT an aesthetic model. MiB / step: peak CPU bytes autograd "
            "holds for backward in one optimisation step, its backward included (x̂₀ guidance: its largest sampling "
            "step).\n\n" + "\n\n".join(sections))
    sweep.publish(args.results, "Guided generation", body, "guided_policies", argv, args.started_on)


if __name__ == "__main__":
    main()
