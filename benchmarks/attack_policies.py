"""Side by side: the digits attack with each gradient policy on the same samples (paper Table 5).

Runs the CLI job (configs/attack/digits.yaml) once per policy, reads each results.json and prints
success rate, SSIM/L2, LPIPS (when its weights exist), digits-FID and wall-clock per optimisation
step. The paper's baselines are policies too (``adjoint``: AdjointDPM, ``doodl``: DOODL; ``sdo-tail=4``: SDO
with an exact tail); a policy the sampler cannot run prints the library's one-line reason as its row. The
table is written to ``--results`` (default runs/attack_policies.md; ``--results
benchmarks/RESULTS.md`` updates the shipped table).

    python benchmarks/attack_policies.py [--policies sdo full checkpoint last_k=1 adjoint doodl sdo-tail=4]
        [--per-class 10] [--eps 0.1] [--override=--model.init_args.sampler.num_steps=4]
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
from benchmarks.policy_rows import job_sampler, reason_row, unavailable_reason  # noqa: E402
from lit_sdo.io import write_markdown_section  # noqa: E402

CONFIG = str(ROOT / "configs/attack/digits.yaml")


def run_policy(policy: str, args: argparse.Namespace, out_dir: Path) -> dict:
    """One attack run through the CLI; returns its aggregate results."""
    overrides = [f"--model.init_args.sampler.policy={'last_k' if policy.startswith('last_k') else policy}",
                 f"--model.init_args.output_dir={out_dir}", f"--data.init_args.per_class={args.per_class}",
                 f"--trainer.max_epochs={args.steps}", "--trainer.enable_progress_bar=false",
                 f"--model.init_args.eps={args.eps}",
                 f"--trainer.logger.init_args.save_dir={out_dir}",
                 f"--trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", *args.override]
    if policy.startswith("last_k"):
        overrides.append(f"--model.init_args.sampler.last_k={policy.split('=')[1] if '=' in policy else 1}")
    cli.main(["fit", "--config", CONFIG, *overrides])
    return json.loads((out_dir / "results.json").read_text())["aggregate"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+",
                        default=["sdo", "full", "checkpoint", "last_k=1", "adjoint", "doodl", "sdo-tail=4"])
    parser.add_argument("--per-class", type=int, default=10, help="attacked samples per digit class")
    parser.add_argument("--steps", type=int, default=30, help="optimisation steps")
    parser.add_argument("--eps", type=float, default=0.1, help="L∞ budget τ (the paper's: 0.1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the runs' accelerator")
    parser.add_argument("--results", default=str(ROOT / "runs/attack_policies.md"),
                        help="markdown file whose section is replaced (the shipped one: benchmarks/RESULTS.md)")
    parser.add_argument("--override", action="extend", nargs="+", default=[],
                        help="more CLI overrides for every run, one per flag with '=' (it starts with --): "
                             "--override=--model.init_args.sampler.num_steps=4 --override=...")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    sampler = job_sampler(CONFIG, args.override)
    reasons = {p: r for p in args.policies if (r := unavailable_reason(sampler, p)) is not None}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies:
            if policy not in reasons:
                rows[policy] = run_policy(policy, args, Path(tmp) / policy.replace("=", ""))
    sdo_time = rows.get("sdo", {}).get("seconds_per_step")
    header = ("| policy | success rate | raw success | SSIM | L2 (rms) | LPIPS | digits-FID adv vs clean | "
              "s / opt. step | time vs sdo |\n|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for policy in args.policies:
        if policy in reasons:
            lines.append(reason_row(policy, reasons[policy], 9))
            continue
        r = rows[policy]
        lpips = "n/a (no AlexNet weights)" if r["lpips_mean"] is None else f"{r['lpips_mean']:.3f}"
        ratio = f"{r['seconds_per_step'] / sdo_time:.2f}×" if sdo_time else "-"
        fid = "n/a (< 2 samples)" if r["fid_adv_vs_clean"] is None else f"{r['fid_adv_vs_clean']:.2f}"
        lines.append(f"| {policy} | {r['success_rate']:.1%} ({r['num_success']}/{r['num_clean_correct']}) | "
                     f"{r['raw_success_rate']:.1%} | {r['ssim_mean']:.3f} | {r['l2_mean']:.4f} | {lpips} | "
                     f"{fid} | {r['seconds_per_step']:.3f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    command = "python benchmarks/attack_policies.py " + " ".join(sys.argv[1:])
    where = "CPU, 2 cores" if args.device == "cpu" else "CUDA"
    body = (f"Command: `{command.strip()}` ({where}; {args.per_class * 10} samples, {args.steps} optimisation "
            f"steps, DDIM-30, τ = {args.eps:g}, SGD lr 0.1).\n\n{table}\n\nPaper, Table 5 (ImageNet, ResNet50): "
            "SDO 96.32 % / LPIPS 0.023 / FID 58.2; AdjointDPM 52.54 % / 0.098 / 85.3; DOODL 51.61 % / 0.084 / 70.4.")
    budget = "" if args.eps == 0.1 else f", τ = {args.eps:g}"
    write_markdown_section(args.results, f"Attack: gradient policies side by side{budget}", body)


if __name__ == "__main__":
    main()
