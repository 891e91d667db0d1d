"""Evaluate the embedded photo-crop models and (with --manifest) write each one's MANIFEST.

Measures (images in [0, 1]; held-out crops of PhotoCropsDataModule(seed=0), from the strip of each
photograph that training never sees):
- each classifier's accuracy on the held-out test crops;
- photos-FID (features: penultimate layer of the first classifier) of DDIM samples vs the test crops, next
  to the floor FID(fresh training crops, test crops);
- each classifier's accuracy on the generated samples by conditioning label.

    .venv/bin/python benchmarks/evaluate_photos.py --out runs/photos_eval.json \
        --manifest --wall-clock photos-ddpm=SECONDS photos-resnet=SECONDS photos-convnext=SECONDS
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.evaluate_zoo import generate, sha256
from lit_sdo.datamodules import PhotoCropsDataModule
from lit_sdo.images import to_unit_range
from lit_sdo.io import write_json
from lit_sdo.metrics import accuracy, batched_outputs, feature_fid, per_class_accuracy
from lit_sdo.models import EMBEDDED_ROOT, load_classifier, load_diffusion

# How each shipped model was made: its training config (seed_everything gives the seed).
TRAINING = {
    "photos-ddpm": "configs/train/photos_ddpm.yaml",
    "photos-resnet": "configs/train/photos_resnet.yaml",
    "photos-convnext": "configs/train/photos_convnext.yaml",
}


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    generator = load_diffusion(args.diffusion)
    data = PhotoCropsDataModule(image_size=generator.image_size, holdout_per_class=args.holdout_per_class, seed=0)
    if generator.num_classes != data.num_classes:
        raise ValueError(f"generator {args.diffusion} has {generator.num_classes} classes but the photo crops "
                         f"{data.num_classes}; evaluate a generator trained on PhotoCropsDataModule's photographs")
    test_images, test_labels = data.split_tensors("test")
    test_images, train_images = to_unit_range(test_images), to_unit_range(data.split_tensors("train")[0])
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
        "photos_fid_samples_vs_test": round(feature_fid(feature_net, samples, test_images), 3),
        "photos_fid_train_vs_test_floor": round(feature_fid(feature_net, train_images, test_images), 3),
        "classifiers": {},
    }
    for name, classifier in classifiers.items():
        sample_logits = batched_outputs(classifier, samples)
        results["classifiers"][name] = {
            "test_accuracy": round(accuracy(batched_outputs(classifier, test_images), test_labels), 4),
            "test_size": len(test_labels),
            "accuracy_on_samples": round(accuracy(sample_logits, labels), 4),
            "accuracy_on_samples_by_label": [round(a, 4) for a in
                                             per_class_accuracy(sample_logits, labels, data.num_classes)],
        }
    return results


def write_manifests(results: dict[str, Any], wall_clock: dict[str, float], notes: dict[str, str],
                    command: str, root: Path) -> None:
    """One MANIFEST (JSON) per model folder under ``root``, in the digits MANIFEST's format."""
    import yaml

    for name, config_path in TRAINING.items():
        folder = root / name
        if not folder.is_dir():
            continue
        config = yaml.safe_load(Path(config_path).read_text())
        if name == "photos-ddpm":
            metrics = {k: v for k, v in results.items() if k != "classifiers"}
            metrics["classifier_accuracy_on_samples"] = {
                c: {k: v for k, v in r.items() if "samples" in k} for c, r in results["classifiers"].items()}
        else:
            metrics = {k: v for k, v in results["classifiers"][name].items() if "samples" not in k}
        data = config["data"]["init_args"]
        write_json(folder / "MANIFEST", {
            "name": f"embedded:{name}",
            "files": {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "MANIFEST"},
            "training_command": f"OMP_NUM_THREADS=1 .venv/bin/python cli.py fit --config {config_path}",
            "training_notes": notes.get(name),
            "seed": config["seed_everything"],
            "data": f"PhotoCropsDataModule(image_size={data['image_size']}, seed={data['seed']}): random crops of 10 "
                    "shipped photographs (lit_sdo.datamodules.PHOTOS); held-out strip = last 30 % of each long axis",
            "training_wall_clock_s": wall_clock.get(name),
            "training_machine": "2 shared CPU cores (load average 10-16 from other jobs), no GPU",
            "metrics": metrics,
            "metrics_command": command,
        })


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", default="embedded:photos-ddpm")
    parser.add_argument("--classifiers", nargs="+", default=["photos-resnet", "photos-convnext"],
                        help="embedded classifiers; the first gives the photos-FID features")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--holdout-per-class", type=int, default=100, help="test crops per class (FID reference)")
    parser.add_argument("--steps", type=int, default=30, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", default="runs/photos_eval.json")
    parser.add_argument("--manifest", action="store_true", help="also write <manifest-root>/<name>/MANIFEST")
    parser.add_argument("--manifest-root", type=Path, default=EMBEDDED_ROOT,
                        help="folder holding the model folders (default: the shipped data/models)")
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
        command = ".venv/bin/python benchmarks/evaluate_photos.py " + " ".join(argv or sys.argv[1:])
        write_manifests(results, wall_clock, notes, command, args.manifest_root)


if __name__ == "__main__":
    main()
