"""Side by side: an attack job with each gradient policy on the same samples (paper Table 5).

Runs ``--config`` once per policy and τ (:mod:`benchmarks.policy_sweep`) and prints success rate, SSIM/L2, LPIPS,
FID of the adversarial images against the clean ones, time and peak memory per step; each τ's table goes to
``--results``, and several τ also draw success against image change and against time per step.

    python benchmarks/attack_policies.py [--policies sdo full adjoint doodl doodl+optimizer=doodl sdo-tail=4]
        [--per-class 10] [--eps 0.1] [--override=--model.init_args.sampler.num_steps=4]
    python benchmarks/attack_policies.py --config configs/attack/photos.yaml --eps 0.02 0.05 0.1 0.2 0.5 \
        --plot-dir docs --json runs/attack_tau_sweep.json     # the τ sweep: success against image change / time
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import policy_sweep as sweep  # noqa: E402
from benchmarks.common import save_plot  # noqa: E402
from lit_sdo.io import write_json  # noqa: E402

CONFIG = str(ROOT / "configs/attack/digits.yaml")
COLUMNS = ["policy", "success rate", "raw success", "SSIM", "L2 (rms)", "LPIPS", "FID adv vs clean",
           "s / opt. step", "time vs sdo", "peak MiB / step"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_arguments(parser, ["sdo", "full", "adjoint", "doodl", "doodl+optimizer=doodl", "sdo-tail=4"],
                        "attack_policies")
    parser.add_argument("--config", default=CONFIG, help="the attack config (configs/attack/photos.yaml: photos)")
    parser.add_argument("--per-class", type=int, default=10, help="attacked samples per class")
    parser.add_argument("--steps", type=int, default=30, help="optimisation steps")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1],
                        help="L∞ budgets τ (the paper's: 0.1); several draw the success-against-change curves")
    parser.add_argument("--plot-dir", type=Path, default=None,
                        help="with several --eps: write attack_success_vs_change.png and attack_success_vs_time.png")
    parser.add_argument("--json", type=Path, default=None,
                        help="every run's aggregate, by τ and policy, written after each run; runs it already "
                             "holds are kept, not rerun (an interrupted sweep resumes)")
    return parser.parse_args(argv)


def cells(rows: dict[str, dict]) -> Callable[[str, dict], list[str]]:
    """A policy row's cells from its results.json aggregate (time against sdo's when sdo ran)."""
    sdo_time = rows.get("sdo", {}).get("seconds_per_step")

    def row(policy: str, r: dict) -> list[str]:
        return [f"{r['success_rate']:.1%} ({r['num_success']}/{r['num_clean_correct']})",
                f"{r['raw_success_rate']:.1%}", f"{r['ssim_mean']:.3f}", f"{r['l2_mean']:.4f}",
                "n/a (no AlexNet weights)" if r["lpips_mean"] is None else f"{r['lpips_mean']:.3f}",
                "n/a (< 2 samples)" if r["fid_adv_vs_clean"] is None else f"{r['fid_adv_vs_clean']:.2f}",
                f"{r['seconds_per_step']:.3f}", f"{r['seconds_per_step'] / sdo_time:.2f}×" if sdo_time else "-",
                sweep.memory_cell(policy, r["peak_mib_per_step"])]
    return row


def plot_curves(runs: dict[float, dict[str, dict]], folder: Path, title: str) -> list[Path]:
    """Success rate against image change (1 − SSIM, one line per policy across τ: the distortion curve of attack
    papers) and against seconds per optimisation step (one marker per run), as two PNGs in ``folder``."""
    policies = list(dict.fromkeys(p for rows in runs.values() for p in rows))

    def draw(x_of: Callable[[dict], float], style: str) -> Callable[[Any], None]:
        def on(ax: Any) -> None:
            for policy in policies:
                points = [(x_of(rows[policy]), rows[policy]["success_rate"], eps)
                          for eps, rows in sorted(runs.items()) if policy in rows]
                ax.plot([x for x, _, _ in points], [y for _, y, _ in points], style, label=policy)
                for x, y, eps in points:
                    ax.annotate(f"τ={eps:g}", (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        return on

    success = "attack success rate (clean-correct samples)"
    return [save_plot(folder / "attack_success_vs_change.png", draw(lambda r: 1 - r["ssim_mean"], "o-"),
                            "image change: 1 − mean SSIM", success, title),
            save_plot(folder / "attack_success_vs_time.png", draw(lambda r: r["seconds_per_step"], "o"),
                            "seconds per optimisation step", success, title)]


def saved_runs(path: Path | None, settings: dict) -> dict[float, dict[str, dict]]:
    """The rows an earlier sweep saved to ``path`` by τ (none without the file); a file saved with other settings
    is refused in one line, since its rows would be mixed into these tables unnoticed."""
    if path is None or not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"--json {path} cannot be read as an earlier sweep's file ({err}): pass another --json, "
                         "or delete it to start over") from None
    if not isinstance(saved, dict) or saved.get("settings") != settings:
        raise SystemExit(f"{path} holds runs with settings {saved.get('settings')}, not {settings}: "
                         "pass another --json, or delete it to start over")
    return {float(eps): rows for eps, rows in saved["runs"].items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    job = Path(args.config).relative_to(ROOT) if Path(args.config).is_relative_to(ROOT) else Path(args.config)
    settings = {"config": str(job), "per_class": args.per_class, "steps": args.steps, "override": args.override}
    runs = saved_runs(args.json, settings)

    def save(eps: float, label: str, row: dict) -> None:
        runs.setdefault(eps, {})[label] = row
        if args.json is not None:
            write_json(args.json, {"settings": settings, "runs": {str(e): r for e, r in sorted(runs.items())}})

    if args.json is not None and not args.json.exists():  # an unwritable path fails now, not after the first run
        try:
            write_json(args.json, {"settings": settings, "runs": {}})
        except OSError as err:
            raise SystemExit(f"--json {args.json} cannot be written ({err.strerror}): pass a writable path") from None
    for eps in args.eps:
        # Every step differentiates every sample (stop_at_success off): the step time is the policy's cost, not
        # how soon it fools; successes and δ are the same either way (the first success is kept).
        overrides = [f"--data.init_args.per_class={args.per_class}", f"--trainer.max_epochs={args.steps}",
                     f"--model.init_args.eps={eps}", "--model.init_args.stop_at_success=false",
                     *sweep.device_overrides(args)]
        rows, reasons = sweep.run_policies(args.config, args.policies, overrides, sweep.aggregate,
                                           done=runs.get(eps), on_row=functools.partial(save, eps))
        table = "\n".join(sweep.policy_table(COLUMNS, args.policies, rows, reasons, cells(rows)))
        print(f"τ = {eps:g}\n{table}")
        where = "CPU, 2 cores" if args.device == "cpu" else "CUDA"
        body = (f"({where}; {job}, {args.per_class} samples per class, {args.steps} optimisation steps, τ = {eps:g}, "
                "SGD lr 0.1 unless the row names another optimiser, every sample stepped at every step; peak MiB: "
                f"the bytes autograd holds for backward, weights excluded).\n\n{table}\n\nPaper, Table 5 "
                "(ImageNet, ResNet50): SDO 96.32 % / LPIPS 0.023 / FID 58.2; AdjointDPM 52.54 % / 0.098 / 85.3; "
                "DOODL 51.61 % / 0.084 / 70.4.")
        name = "" if job.stem == "digits" else f" ({job.stem})"
        budget = "" if eps == 0.1 else f", τ = {eps:g}"
        sweep.publish(args.results, f"Attack{name}: gradient policies side by side{budget}", body, "attack_policies",
                      argv, args.started_on)
    if args.plot_dir is not None and len(runs) > 1:
        title = f"{job}, {args.per_class} per class, {args.steps} steps\n{args.started_on}"
        print("\n".join(map(str, plot_curves(runs, args.plot_dir, title))))


if __name__ == "__main__":
    main()
