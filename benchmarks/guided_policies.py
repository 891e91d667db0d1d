"""Side by side: the three guided-generation tasks with SDO, full backprop, and per-step x̂₀ guidance.

For each task (configs/<task>/digits.yaml, the same inputs for every method):
- ``sdo`` and ``full``: the CLI job (latent optimisation, gradient at the first step vs through every step);
  its results.json gives the task metrics of the best image per sample and the seconds per optimisation step;
  any other policy string the same way (``adjoint``: AdjointDPM, ``doodl``: DOODL, ``sdo-tail=4``: SDO with an
  exact tail); a policy the task's sampler cannot run prints the library's one-line reason as its row;
- ``xhat ρ``: FreeDoM/DPS-style guidance of the same loss through the one-step x̂₀ estimate, one sampling pass
  (:func:`lit_sdo.sampling.xhat_guidance.xhat_guided_sample`), for each guidance step ρ given.
Memory per optimisation step: CUDA ``max_memory_allocated`` on a GPU; on CPU the peak of the bytes autograd
holds for backward during one step, forward and backward (the part the methods differ in), counted by the
jobs' own meter (:class:`lit_sdo.callbacks.SavedTensorMeter`: a storage counts once, until its graph frees it,
weights excluded), so the graphs that AdjointDPM and DOODL rebuild step by step in backward count at their
largest, not summed. ``--memory-only`` prints that column alone, from one gradient per row (seconds).
The table goes to the "## Guided generation" section of ``--results`` (default
runs/guided_policies.md; ``--results benchmarks/RESULTS.md`` updates the shipped table).

    python benchmarks/guided_policies.py [--tasks edit style aesthetic] [--samples 10] [--opt-steps N]
        [--policies sdo full adjoint doodl sdo-tail=4] [--memory-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
from benchmarks.policy_rows import memory_cell, reason_row, unavailable_reason  # noqa: E402
from lit_sdo.callbacks import SavedTensorMeter  # noqa: E402
from lit_sdo.io import write_markdown_section  # noqa: E402
from lit_sdo.tasks.xhat_baseline import xhat_guided_images  # noqa: E402

TASK_METRICS = {  # the task metric first; then what else the task reports
    "edit": ["loss", "clip_score", "ssim_to_reference", "label_agreement"],
    "style": ["loss", "label_agreement"],
    "aesthetic": ["loss", "aesthetic_score", "measured_stroke_width", "label_agreement"],
}


def data_overrides(task: str, samples: int) -> list[str]:
    if task == "edit":
        return [f"--data.init_args.num_samples={samples}", f"--data.init_args.batch_size={samples}"]
    return ["--data.init_args.num_classes=10", f"--data.init_args.per_class={max(samples // 10, 1)}",
            f"--data.init_args.batch_size={max(samples // 10, 1) * 10}"]


def common_overrides(args: argparse.Namespace, task: str) -> list[str]:
    out = data_overrides(task, args.samples)
    if args.num_steps is not None and task != "style":  # style runs the shortcut model's own 8 steps
        out.append(f"--model.init_args.sampler.num_steps={args.num_steps}")
    if args.model is not None:
        out.append(f"--model.init_args.sampler.model={args.model}")
    return out


def config_path(task: str) -> Path:
    return ROOT / f"configs/{task}/digits.yaml"


def optimisation_steps(task: str, args: argparse.Namespace) -> int:
    """--opt-steps, or the task config's ``trainer.max_epochs`` (the paper's count: 50 / 150 / 100)."""
    if args.opt_steps is not None:
        return args.opt_steps
    return int(yaml.safe_load(config_path(task).read_text())["trainer"]["max_epochs"])


def run_policy(task: str, policy: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """One latent-optimisation run through the CLI; returns its aggregate results."""
    cli.main(["fit", "--config", str(config_path(task)), *common_overrides(args, task),
              f"--model.init_args.sampler.policy={policy}", f"--model.init_args.output_dir={out_dir}",
              f"--trainer.max_epochs={optimisation_steps(task, args)}", "--trainer.enable_progress_bar=false",
              "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
              f"--trainer.logger.init_args.save_dir={out_dir}"])
    return json.loads((out_dir / "results.json").read_text())["aggregate"]


def build_module(task: str, args: argparse.Namespace) -> tuple[Any, Any]:
    built = cli.build_cli(["--config", str(config_path(task)), *common_overrides(args, task)],
                          run=False)
    return built.model, built.datamodule


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


def run_xhat(task: str, scale: float, module: Any, datamodule: Any) -> dict[str, Any]:
    """Per-step x̂₀ guidance over every sample; the same metrics as the CLI job's aggregate."""
    sums: dict[str, float] = {}
    count, seconds = 0, 0.0
    for batch in datamodule.train_dataloader():
        started = time.perf_counter()
        guided = xhat_guided_images(module, batch, scale)
        seconds += time.perf_counter() - started
        with torch.no_grad():
            x_start, cond = module.start_latent(batch), module.condition(batch)
            original = module.sampler.generate(x_start, cond, policy="none")
            for name, images in (("original", original), ("optimized", guided)):
                measured = module.objective.measure(images, batch)
                for measure in module.measures:
                    measured |= measure(images, batch)
                for key, value in measured.items():
                    if value.dim() == 1:  # per-sample numbers (not feature rows)
                        sums[f"{key}_{name}_mean"] = sums.get(f"{key}_{name}_mean", 0.0) + float(value.float().sum())
        count += len(batch["index"])
    return {k: v / count for k, v in sums.items()} | {"seconds_per_run": seconds, "num_samples": count}


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def print_memory_tables(args: argparse.Namespace) -> None:
    """The MiB / step column alone, per task: one gradient per policy row and per x̂₀ pass (no optimisation)."""
    for task in args.tasks:
        module, datamodule = build_module(task, args)
        batch = next(iter(datamodule.train_dataloader()))
        lines = ["| method | MiB / step |", "|---|---|"]
        for policy in args.policies:
            reason = unavailable_reason(module.sampler, policy)
            lines.append(f"| {policy} | {reason or memory_cell(policy, step_memory(module, batch, policy))} |")
        if args.xhat_scales:
            lines.append(f"| x̂₀ guidance | {step_memory(module, batch, 'xhat'):.2f} |")
        print(f"\n### {task} (configs/{task}/digits.yaml), {args.samples} inputs\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["edit", "style", "aesthetic"], choices=list(TASK_METRICS))
    parser.add_argument("--samples", type=int, default=10, help="inputs per task (digits; multiples of 10)")
    parser.add_argument("--opt-steps", type=int, default=None,
                        help="optimisation steps of sdo / full (default: each config's, the paper's 50 / 150 / 100)")
    parser.add_argument("--num-steps", type=int, default=None,
                        help="sampling steps of edit/aesthetic (default: the config's)")
    parser.add_argument("--policies", nargs="+", default=["sdo", "full", "adjoint", "doodl", "sdo-tail=4"],
                        help="policy strings (lit_sdo.sampling.parse_policy), passed to the job unchanged")
    parser.add_argument("--model", default=None, help="another diffusion model (default: the config's)")
    parser.add_argument("--xhat-scales", nargs="*", type=float, default=[0.05, 0.2], help="ρ values for x̂₀ guidance")
    parser.add_argument("--memory-only", action="store_true",
                        help="print only each row's MiB / step (one gradient per row; no optimisation, no --results)")
    parser.add_argument("--results", default=str(ROOT / "runs/guided_policies.md"),
                        help="markdown file whose section is replaced (the shipped one: benchmarks/RESULTS.md)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.memory_only:
        print_memory_tables(args)
        return
    sections = []
    for task in args.tasks:
        keys = TASK_METRICS[task]
        header = ("| method | " + " | ".join(f"{k} (orig → guided)" for k in keys)
                  + " | s / opt. step | opt. steps | total s | MiB / step |\n|" + "---|" * (len(keys) + 5))
        lines = [header]
        module, datamodule = build_module(task, args)
        batch = next(iter(datamodule.train_dataloader()))
        with tempfile.TemporaryDirectory() as tmp:
            for policy in args.policies:
                reason = unavailable_reason(module.sampler, policy)
                if reason is not None:
                    lines.append(reason_row(policy, reason, len(keys) + 5))
                    continue
                r = run_policy(task, policy, args, Path(tmp) / policy)
                cells = [f"{fmt(r.get(f'{k}_original_mean'))} → {fmt(r.get(f'{k}_optimized_mean'))}" for k in keys]
                sec = r["seconds_per_step"]
                steps = optimisation_steps(task, args)
                lines.append(f"| {policy} | " + " | ".join(cells) + f" | {sec:.3f} | {steps} | "
                             f"{sec * steps:.1f} | {memory_cell(policy, step_memory(module, batch, policy))} |")
        for scale in args.xhat_scales:
            r = run_xhat(task, scale, module, datamodule)
            cells = [f"{fmt(r.get(f'{k}_original_mean'))} → {fmt(r.get(f'{k}_optimized_mean'))}" for k in keys]
            lines.append(f"| x̂₀ guidance ρ={scale} | " + " | ".join(cells) + f" | – | 1 pass | "
                         f"{r['seconds_per_run']:.1f} | {step_memory(module, batch, 'xhat'):.2f} |")
        table = "\n".join(lines)
        print(f"\n### {task}\n{table}")
        sections.append(f"### {task} (configs/{task}/digits.yaml)\n\n{table}")
    command = "python benchmarks/guided_policies.py " + " ".join(sys.argv[1:])
    body = (f"Command: `{command.strip()}` (CPU, 2 shared cores, OMP_NUM_THREADS=1; {args.samples} inputs per task, "
            "Adam optimisation steps for every policy row as in each table; every number below is printed by that "
            "command). Each metric is the mean over inputs of the unguided image → the guided one (best loss per "
            "sample for the policy rows). 'loss' is the task's objective (edit: λ·text distance + (1−λ)·MSE to the "
            "reference; style: Gram distance; aesthetic: |score − 10|). The aesthetic score is the embedded "
            "stroke-width stand-in (digits-thickness), NOT an aesthetic model. MiB / step: peak CPU bytes autograd "
            "holds for backward in one optimisation step, its backward included (x̂₀ guidance: its largest sampling "
            "step).\n\n" + "\n\n".join(sections))
    write_markdown_section(args.results, "Guided generation", body)


if __name__ == "__main__":
    main()
