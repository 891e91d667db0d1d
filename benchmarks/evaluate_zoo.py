"""Evaluate the embedded model zoo and write each shipped model's MANIFEST.

Measures (images in [0, 1], the digits test split of DigitsDataModule(seed=0)):
- each classifier's test accuracy;
- digits-FID (features: penultimate layer of the feature classifier, the shipped ResNet) of
  ``--num-samples`` DDIM samples vs the test split, next to the floor FID(train split, test split);
- each classifier's accuracy on the generated samples by conditioning label.

    .venv/bin/python benchmarks/evaluate_zoo.py --out runs/zoo_eval.json \
        --manifest --wall-clock digits-ddpm=SECONDS digits-resnet=SECONDS digits-convnext=SECONDS
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lit_sdo.datamodules import DigitsDataModule
from lit_sdo.images import to_unit_range
from lit_sdo.io import write_json
from lit_sdo.metrics import accuracy, batched_outputs, feature_fid, per_class_accuracy
from lit_sdo.models import EMBEDDED_ROOT, load_classifier, load_diffusion
from lit_sdo.sampling import build_scheduler, sample

# How each shipped model was made: the exact command and the seed (seed_everything in its config).
TRAINING = {
    "digits-ddpm": "configs/train/digits_ddpm.yaml",
    "digits-resnet": "configs/train/digits_resnet.yaml",
    "digits-convnext": "configs/train/digits_convnext.yaml",
}


@torch.no_grad()
def generate(model_name: str, num_samples: int, num_steps: int, guidance_scale: float, seed: int,
             batch_size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``num_samples`` DDIM samples in [0, 1] with labels 0..9 cycling, and the seconds it took."""
    model = load_diffusion(model_name, guidance_scale=guidance_scale)
    scheduler = build_scheduler("ddim", num_steps, base_config=model.scheduler_config)
    labels = torch.arange(num_samples) % model.num_classes
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_samples, *model.denoiser.sample_shape), generator=generator)  # x_T
    start = time.perf_counter()
    images = [to_unit_range(model.denoiser.decode(sample(model.denoiser, scheduler, noise[i:i + batch_size],
                                                          labels[i:i + batch_size], policy="none").sample))
              for i in range(0, num_samples, batch_size)]
    return torch.cat(images), labels, time.perf_counter() - start


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    data = DigitsDataModule(image_size=16, seed=0)
    train, test = data.split_tensors("train"), data.split_tensors("test")
    train_images, test_images, test_labels = to_unit_range(train[0]), to_unit_range(test[0]), test[1]
    classifiers = {name: load_classifier(f"embedded:{name}") for name in args.classifiers}
    feature_net = classifiers[args.classifiers[0]]

    samples, labels, seconds = generate(args.diffusion, args.num_samples, args.steps, args.guidance_scale,
                                        args.seed, args.batch_size)
    results: dict[str, Any] = {
        "diffusion": args.diffusion,
        "sampler": f"ddim-{args.steps}",
        "guidance_scale": args.guidance_scale,
        "num_samples": args.num_samples,
        "sampling_seconds": round(seconds, 1),
        "fid_features": f"embedded:{args.classifiers[0]} penultimate layer",
        "digits_fid_samples_vs_test": round(feature_fid(feature_net, samples, test_images), 3),
        "digits_fid_train_vs_test_floor": round(feature_fid(feature_net, train_images, test_images), 3),
        "classifiers": {},
    }
    for name, classifier in classifiers.items():
        test_logits = batched_outputs(classifier, test_images)
        sample_logits = batched_outputs(classifier, samples)
        results["classifiers"][name] = {
            "test_accuracy": round(accuracy(test_logits, test_labels), 4),
            "test_size": len(test_labels),
            "accuracy_on_samples": round(accuracy(sample_logits, labels), 4),
            "accuracy_on_samples_by_label": [round(a, 4) for a in per_class_accuracy(sample_logits, labels, 10)],
        }
    return results


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifests(results: dict[str, Any], wall_clock: dict[str, float], notes: dict[str, str],
                    command: str) -> None:
    """One MANIFEST (JSON) per shipped model: files + sha256, training command, seed, time, metrics."""
    import yaml

    for name, config_path in TRAINING.items():
        folder = EMBEDDED_ROOT / name
        if not folder.is_dir():
            continue
        config = yaml.safe_load(Path(config_path).read_text())
        if name == "digits-ddpm":
            metrics = {k: v for k, v in results.items() if k != "classifiers"}
            metrics["classifier_accuracy_on_samples"] = {
                c: {k: v for k, v in r.items() if "samples" in k} for c, r in results["classifiers"].items()}
        else:
            metrics = {k: v for k, v in results["classifiers"][name].items() if "samples" not in k}
        manifest = {
            "name": f"embedded:{name}",
            "files": {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "MANIFEST"},
            # One thread per run: on 2 cores shared with other jobs, torch's 2 threads each oversubscribe.
            "training_command": f"OMP_NUM_THREADS=1 .venv/bin/python cli.py fit --config {config_path}",
            "training_notes": notes.get(name),
            "seed": config["seed_everything"],
            "data": "sklearn digits 16×16, DigitsDataModule(seed=0) split 70/10/20 train/val/test",
            "training_wall_clock_s": wall_clock.get(name),
            "training_machine": "2 shared CPU cores (other jobs running), no GPU",
            "metrics": metrics,
            "metrics_command": command,
        }
        write_json(folder / "MANIFEST", manifest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", default="embedded:digits-ddpm")
    parser.add_argument("--classifiers", nargs="+", default=["digits-resnet", "digits-convnext"],
                        help="embedded classifiers; the first gives the digits-FID features")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", default="runs/zoo_eval.json")
    parser.add_argument("--manifest", action="store_true", help="also write data/models/<name>/MANIFEST")
    parser.add_argument("--wall-clock", nargs="*", default=[], metavar="NAME=SECONDS",
                        help="measured training time of each model, recorded in its MANIFEST")
    parser.add_argument("--note", nargs="*", default=[], metavar="NAME=TEXT",
                        help="how a model's training deviated from its plain command, recorded in its MANIFEST")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    results = evaluate(args)
    write_json(args.out, results)
    print(json.dumps(results, indent=2))  # noqa: T201
    if args.manifest:
        wall_clock = {k: float(v) for k, v in (item.split("=", 1) for item in args.wall_clock)}
        notes = dict(item.split("=", 1) for item in args.note)
        command = ".venv/bin/python benchmarks/evaluate_zoo.py " + " ".join(argv or sys.argv[1:])
        write_manifests(results, wall_clock, notes, command)


if __name__ == "__main__":
    main()
