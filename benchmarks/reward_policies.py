"""Side by side: LoRA reward fine-tuning of the embedded digits DDPM with each gradient policy.

Runs the CLI job (configs/reward/digits.yaml) once per policy for the same number of optimiser steps,
reads each history.json and prints the reward reached (eval reward on 16 fixed seeds, and the training
reward averaged over the last 5 steps), training wall-clock, and peak memory per step; then the time
SDO needs to reach AlignProp-uniform's final eval reward (paper Sec. 5.3: about 50 %; target ≤ 60 %).
Policy strings go to the job unchanged (``adjoint``: AdjointDPM, ``doodl``: DOODL, ``sdo-tail=4``: SDO with an
exact tail, ``last_k=2``, ...); a policy the sampler cannot run prints the library's one-line reason as its row.
The table goes to ``--results`` (default runs/reward_policies.md; ``--results benchmarks/RESULTS.md`` updates
the shipped table).

    OMP_NUM_THREADS=1 python benchmarks/reward_policies.py [--steps 40] [--policies sdo random_truncation last_k=1
        adjoint doodl sdo-tail=4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
from benchmarks.policy_rows import job_sampler, memory_cell, reason_row, unavailable_reason  # noqa: E402
from lit_sdo.io import write_markdown_section  # noqa: E402

LABELS = {"sdo": "sdo (k random)", "random_truncation": "random_truncation (AlignProp-uniform)",
          "last_k=1": "last_k=1 (AlignProp-1 / DRaFT-1)", "adjoint": "adjoint (AdjointDPM)", "doodl": "doodl (DOODL)",
          "sdo-tail=4": "sdo-tail=4 (k random + exact last 4 calls)"}


def sampler_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides that fix the job's sampler (shared by every run and the availability check)."""
    return [f"--model.init_args.sampler.num_steps={args.num_steps}",
            f"--model.init_args.sampler.model={args.model}", *args.override]


def run_policy(policy: str, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    """One fine-tuning run through the CLI; returns its per-step history."""
    steps = args.sdo_steps if policy == "sdo" and args.sdo_steps else args.steps
    overrides = [f"--model.init_args.sampler.policy={policy}", f"--model.init_args.output_dir={out_dir}",
                 f"--model.init_args.lr={args.lr}", f"--model.init_args.grid_every_n_steps={args.eval_every}",
                 f"--data.init_args.samples_per_step={args.samples_per_step}",
                 f"--data.init_args.batch_size={args.batch_size}",
                 f"--trainer.accumulate_grad_batches={args.samples_per_step // args.batch_size}",
                 f"--trainer.max_epochs={steps}", "--trainer.enable_progress_bar=false",
                 f"--trainer.logger.init_args.save_dir={out_dir}", "--trainer.enable_checkpointing=false",
                 "--trainer.callbacks=[lit_sdo.callbacks.StepCost, lit_sdo.callbacks.NaNStop]"]  # no checkpoints
    cli.main(["fit", "--config", args.config, *overrides, *sampler_overrides(args)])
    return json.loads((out_dir / "history.json").read_text())["steps"]


def summarise(history: list[dict]) -> dict:
    """Final rewards, wall-clock and memory of one run."""
    steps = [row for row in history if "reward" in row]
    evals = [row for row in history if "eval_reward" in row]
    last = steps[-5:]
    return {"steps": len(steps), "eval_start": evals[0]["eval_reward"], "eval_final": evals[-1]["eval_reward"],
            "train_final": sum(r["reward"] for r in last) / len(last), "seconds": steps[-1]["seconds"],
            "cpu_seconds": steps[-1]["cpu_seconds"], "seconds_per_step": steps[-1]["seconds"] / len(steps),
            "cpu_per_step": steps[-1]["cpu_seconds"] / len(steps),
            "peak_mib": max(r["peak_bytes"] for r in steps) / 2**20, "evals": evals}


def seconds_to_reach(evals: list[dict], target: float, clock: str) -> float | None:
    """Training seconds (``clock``: seconds or cpu_seconds) at the first eval point whose reward is at least
    ``target`` (None: never)."""
    return next((row[clock] for row in evals if row["eval_reward"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+",
                        default=["sdo", "random_truncation", "last_k=1", "adjoint", "doodl", "sdo-tail=4"],
                        help="policy strings (lit_sdo.sampling.parse_policy), passed to the job unchanged")
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per policy")
    parser.add_argument("--sdo-steps", type=int, default=None,
                        help="let sdo train longer than the others (time-to-reward when it has not caught up)")
    parser.add_argument("--num-steps", type=int, default=20, help="DDIM sampling steps")
    parser.add_argument("--samples-per-step", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--eval-every", type=int, default=4, help="eval reward on the fixed seeds every N steps")
    parser.add_argument("--model", default="embedded:digits-ddpm")
    parser.add_argument("--config", default=str(ROOT / "configs/reward/digits.yaml"),
                        help="the reward config (its reward is used as is)")
    parser.add_argument("--override", action="extend", nargs="+", default=[],
                        help="more CLI overrides for every run, one per flag with '=' (it starts with --): "
                             "--override=--model.init_args.sampler.num_steps=4 --override=...")
    parser.add_argument("--results", default=str(ROOT / "runs/reward_policies.md"),
                        help="markdown file whose section is replaced (the shipped one: benchmarks/RESULTS.md)")
    args = parser.parse_args()

    sampler = job_sampler(args.config, sampler_overrides(args))
    reasons = {p: r for p in args.policies if (r := unavailable_reason(sampler, p)) is not None}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in (p for p in args.policies if p not in reasons):
            rows[policy] = summarise(run_policy(policy, args, Path(tmp) / policy.replace("=", "")))
    lines = ["| policy | steps | eval reward start → final | train reward (last 5 steps) | training wall s (CPU s) | "
             "wall s / step (CPU s / step) | peak MiB held for backward / micro-batch |", "|---" * 7 + "|"]
    for policy in args.policies:
        if policy in reasons:
            lines.append(reason_row(LABELS.get(policy, policy), reasons[policy], 7))
            continue
        r = rows[policy]
        lines.append(f"| {LABELS.get(policy, policy)} | {r['steps']} | {r['eval_start']:.4f} → {r['eval_final']:.4f} | "
                     f"{r['train_final']:.4f} | {r['seconds']:.1f} ({r['cpu_seconds']:.1f}) | "
                     f"{r['seconds_per_step']:.2f} ({r['cpu_per_step']:.2f}) | {memory_cell(policy, r['peak_mib'])} |")
    verdict = ""
    if "sdo" in rows and "random_truncation" in rows:
        uniform, sdo = rows["random_truncation"], rows["sdo"]
        target = uniform["eval_final"]
        if target <= uniform["eval_start"]:
            verdict = (f"AlignProp-uniform did not raise the eval reward ({uniform['eval_start']:.4f} → {target:.4f}): "
                       "no time-to-reward comparison is possible at these settings.")
        elif seconds_to_reach(sdo["evals"], target, "seconds") is None:
            verdict = (f"SDO did NOT reach AlignProp-uniform's final eval reward {target:.4f} within {args.steps} "
                       f"steps (its best: {max(e['eval_reward'] for e in sdo['evals']):.4f}); target (≤ 60 % of "
                       "AlignProp-uniform's time) not met at this step budget.")
        else:
            parts = []
            for clock, name in (("seconds", "wall-clock"), ("cpu_seconds", "CPU time")):
                reached = seconds_to_reach(sdo["evals"], target, clock)
                share = reached / uniform[clock]
                parts.append(f"{name} {reached:.1f} s = {share:.0%} of AlignProp-uniform's {uniform[clock]:.1f} s "
                             f"(target ≤ 60 %: {'met' if share <= 0.6 else 'NOT met'})")
            verdict = f"SDO reached AlignProp-uniform's final eval reward {target:.4f} after " + "; ".join(parts) + "."
    if "sdo" in rows and "random_truncation" in rows and args.sdo_steps:
        at_equal = next(e["eval_reward"] for e in rows["sdo"]["evals"] if e["step"] >= args.steps)
        verdict += (f" At the same {args.steps} steps SDO's eval reward was {at_equal:.4f} (AlignProp-uniform "
                    f"{rows['random_truncation']['eval_final']:.4f}).")
    curves = "\n".join(f"- {LABELS.get(p, p)}: " + ", ".join(f"{e['step']}: {e['eval_reward']:.3f}"
                                                             for e in r["evals"]) for p, r in rows.items())
    table = "\n".join(lines)
    print(table)
    print(verdict)
    print(curves)
    command = "OMP_NUM_THREADS=1 python benchmarks/reward_policies.py " + " ".join(sys.argv[1:])
    reward = Path(args.config).name
    sdo_note = f" ({args.sdo_steps} for sdo)" if args.sdo_steps else ""
    body = (f"Command: `{command.strip()}` (CPU, 2 shared cores, one thread; {args.model}, the reward of "
            f"configs/reward/{reward}; LoRA r=4 on attention projections; AdamW lr {args.lr:g}; {args.steps} "
            f"optimiser steps{sdo_note} of {args.samples_per_step} samples ({args.batch_size} per micro-batch); "
            f"DDIM-{args.num_steps}; eval reward = mean over 16 fixed seeds every {args.eval_every} steps; training "
            "seconds exclude evaluation; CPU s = this process's CPU time, steadier than wall-clock on a machine "
            "shared with other jobs; memory = distinct non-weight tensors autograd keeps for backward, the "
            f"CPU stand-in for peak GPU memory).\n\n{table}\n\n{verdict}\n\nEval reward by step:\n\n{curves}\n\n"
            "Paper, Sec. 5.3 / Fig. 11 (SD 1.5, "
            "aesthetic and HPSv2 rewards): SDO needs about 50 % of AlignProp-uniform's runtime at equal reward; "
            "AlignProp-1 becomes unstable after some steps.")
    write_markdown_section(args.results, "LoRA reward fine-tuning", body)


if __name__ == "__main__":
    main()
