"""Digits-FID vs sampling steps for the shortcut model and its flow-matching baseline.

Both shipped models (same DiT, batch and step budget) sample the SAME noise at N = 1, 2, 4, ..., 128 steps:
shortcut steps (d = 1/N) against Euler steps of the flow velocity; digits-FID as ``benchmarks/evaluate_zoo.py``.
Writes ``--out``, the "## Shortcut models" section of ``--results`` and ``--plot`` (all under runs/ by default):

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.shortcut_fid --gradient-cost \
        --results benchmarks/RESULTS.md --plot docs/shortcut_fid.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import input_gradient, markdown_table, measure, sample_images, save_plot  # noqa: E402
from lit_sdo.datamodules import DigitsDataModule  # noqa: E402
from lit_sdo.images import to_unit_range  # noqa: E402
from lit_sdo.io import write_json, write_markdown_section  # noqa: E402
from lit_sdo.metrics import feature_fid  # noqa: E402
from lit_sdo.models import load_classifier, load_diffusion  # noqa: E402
from lit_sdo.models.sampler import Sampler, SamplerSpec  # noqa: E402
from lit_sdo.models.shortcut import ShortcutDiT  # noqa: E402
from lit_sdo.sampling import GradientPolicy, sample  # noqa: E402
from lit_sdo.sampling.shortcut import build_shortcut_sampler  # noqa: E402

SECTION = "## Shortcut models"


def gradient_cost(network: ShortcutDiT, steps: list[int], batch: int, repeats: int) -> list[dict[str, Any]]:
    """Seconds per gradient of sum(x₀) w.r.t. x_T through N-step shortcut sampling, per policy."""
    network = network.requires_grad_(False)
    noise = torch.randn(batch, network.in_channels, network.sample_size, network.sample_size,
                        generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch) % network.num_classes
    rows = []
    for num_steps in steps:
        denoiser, scheduler = build_shortcut_sampler(network, num_steps)
        for policy in (GradientPolicy("sdo", k=0), GradientPolicy("full")):
            runs = [measure(lambda: input_gradient(lambda x: sample(denoiser, scheduler, x, labels,  # noqa: B023
                                                                    policy=policy).sample.sum(), noise))  # noqa: B023
                    for _ in range(repeats + 1)]  # the first run warms up
            grad, times = runs[-1][0], [cost["seconds"] for _, cost in runs]
            rows.append({"steps": num_steps, "policy": policy.name, "batch": batch,
                         "seconds_per_gradient": round(min(times[1:]), 4), "grad_norm": round(float(grad.norm()), 4)})
    return rows


def markdown(results: dict[str, Any], command: str) -> str:
    """The RESULTS.md section: FID table, floor, and the gradient-cost table when measured."""
    lines = [SECTION, "", f"Command: `{command}` (CPU, 2 shared cores, one thread)", "",
             f"Digits-FID (ResNet penultimate features) of {results['num_samples']} samples vs the "
             f"{results['test_size']}-image test split; floor FID(train, test) = {results['fid_floor']:.3f}. "
             f"Guidance scale {results['guidance_scale']}. Models: same DiT ({results['parameters']} parameters), "
             "batch and step budget (MANIFEST.json in data/models/digits-shortcut, data/models/digits-flow).", "",
             *markdown_table(["steps", "shortcut FID", "flow-matching FID", "shortcut wall s", "flow wall s"],
                             [[r["steps"], f"{r['shortcut_fid']:.3f}", f"{r['flow_fid']:.3f}",
                               f"{r['shortcut_seconds']:.1f}", f"{r['flow_seconds']:.1f}"] for r in results["fid"]],
                             "rrrrr")]
    lines += ["", *verdicts(results["fid"])]
    if results.get("gradient_cost"):
        lines += ["", "Gradient of sum(x₀) w.r.t. x_T through shortcut sampling (CPU, seconds per gradient, "
                  "best of repeats):", "",
                  *markdown_table(["steps", "policy", "batch", "s / gradient"],
                                  [[r["steps"], r["policy"], r["batch"], f"{r['seconds_per_gradient']:.4f}"]
                                   for r in results["gradient_cost"]], "rlrr")]
    return "\n".join(lines) + "\n"


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The target shape, checked on the table: 1-step far below flow's, most-steps no worse."""
    first, last = rows[0], rows[-1]
    ratio = first["flow_fid"] / first["shortcut_fid"]
    lines = [f"- {first['steps']} step(s): shortcut FID {first['shortcut_fid']:.3f} vs flow matching "
             f"{first['flow_fid']:.3f} ({ratio:.1f}× lower): {'met' if ratio >= 2 else 'NOT met'} (target: far below).",
             f"- {last['steps']} steps: shortcut FID {last['shortcut_fid']:.3f} vs flow matching "
             f"{last['flow_fid']:.3f}: "
             f"{'met' if last['shortcut_fid'] <= last['flow_fid'] else 'NOT met'} (target: no worse)."]
    worse = [r["steps"] for r in rows if r["shortcut_fid"] > r["flow_fid"]]
    if worse:
        lines.append(f"- Shortcut FID is above flow matching's at {', '.join(map(str, worse))} steps at this "
                     "training budget (a quarter of each shortcut batch goes to self-consistency targets).")
    return lines


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of RESULTS.md (up to the next '## ' heading), or append it."""
    write_markdown_section(path, SECTION.removeprefix("## "), section.removeprefix(SECTION))


def plot(results: dict[str, Any], path: Path) -> None:
    steps = [r["steps"] for r in results["fid"]]

    def draw(ax: Any) -> None:
        from matplotlib.ticker import NullFormatter

        ax.plot(steps, [r["shortcut_fid"] for r in results["fid"]], "o-", label="shortcut model")
        ax.plot(steps, [r["flow_fid"] for r in results["fid"]], "s--", label="flow matching (Euler)")
        ax.axhline(results["fid_floor"], color="grey", lw=0.8, ls=":", label="floor: train vs test")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_yticks([0.5, 1, 2, 4, 8], ["0.5", "1", "2", "4", "8"])
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(steps, [str(s) for s in steps])

    save_plot(path, draw, "sampling steps", "digits-FID (lower is better)",
              "Shortcut vs flow matching, 16×16 digits", (5, 3.4))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shortcut", default="data/models/digits-shortcut")
    parser.add_argument("--flow", default="data/models/digits-flow")
    parser.add_argument("--classifier", default="embedded:digits-resnet", help="digits-FID features")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="applied at d = 1/M only (paper)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--gradient-cost", action="store_true", help="also time SDO/full gradients at 1, 2, 4 steps")
    parser.add_argument("--out", default="runs/shortcut_fid.json")
    parser.add_argument("--results", default="runs/shortcut_fid.md",
                        help="markdown file whose section is replaced (the shipped one: benchmarks/RESULTS.md)")
    parser.add_argument("--plot", default="runs/shortcut_fid.png", help="the shipped one: docs/shortcut_fid.png")
    parser.add_argument("--render-only", action="store_true",
                        help="re-write the RESULTS.md section and the plot from --out without measuring again")
    args = parser.parse_args(argv)
    if args.render_only:
        results = json.loads(Path(args.out).read_text())
        write_section(Path(args.results), markdown(results, results["command"]))
        plot(results, Path(args.plot))
        return
    command = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.shortcut_fid " + " ".join(
        argv if argv is not None else sys.argv[1:])

    # the shortcut model samples with shortcut steps (d = 1/N), the flow-matching one (not step-conditioned) with Euler
    shortcut_model = load_diffusion(args.shortcut, guidance_scale=args.guidance_scale)
    flow_model = load_diffusion(args.flow, guidance_scale=args.guidance_scale)
    shortcut = shortcut_model.denoiser.network
    classifier = load_classifier(args.classifier)
    data = DigitsDataModule(image_size=shortcut.sample_size, seed=0)
    train_images, test_images = (to_unit_range(data.split_tensors(s)[0]) for s in ("train", "test"))
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.num_samples, shortcut.in_channels, shortcut.sample_size, shortcut.sample_size,
                        generator=generator)  # x_0 of the paper (t = 0), shared by every run
    labels = torch.arange(args.num_samples) % shortcut.num_classes

    results: dict[str, Any] = {
        "command": command, "num_samples": args.num_samples, "test_size": len(test_images),
        "guidance_scale": args.guidance_scale, "parameters": sum(p.numel() for p in shortcut.parameters()),
        "fid_floor": round(feature_fid(classifier, train_images, test_images), 3),
        "fid": [],
    }
    for num_steps in args.steps:
        row: dict[str, Any] = {"steps": num_steps}
        for name, model in (("shortcut", shortcut_model), ("flow", flow_model)):
            sampler = Sampler(SamplerSpec(model.name, scheduler="shortcut", num_steps=num_steps, policy="none"),
                              model=model)  # shortcut steps, or Euler steps of a flow-matching model's velocity
            images, seconds = sample_images(sampler, noise, labels, args.batch_size)
            row[f"{name}_fid"] = round(feature_fid(classifier, images, test_images), 3)
            row[f"{name}_seconds"] = round(seconds, 2)
        results["fid"].append(row)
        print(json.dumps(row), flush=True)  # noqa: T201
    if args.gradient_cost:
        results["gradient_cost"] = gradient_cost(shortcut, [1, 2, 4], batch=16, repeats=3)
    write_json(args.out, results)
    write_section(Path(args.results), markdown(results, command))
    plot(results, Path(args.plot))
    print(json.dumps(results, indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
