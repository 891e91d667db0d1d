"""Evaluate an embedded model zoo (``--zoo digits`` or ``photos``) and write each model's MANIFEST.json.

On the zoo's held-out test images (seed 0): each classifier's accuracy; FID of ``--num-samples`` DDIM samples
(features: the first classifier's penultimate layer) beside the floor FID(train, test); each classifier's accuracy
on the samples by conditioning label.

    .venv/bin/python benchmarks/evaluate_zoo.py --out runs/zoo_eval.json \
        --manifest --wall-clock digits-ddpm=SECONDS digits-resnet=SECONDS digits-convnext=SECONDS
    .venv/bin/python benchmarks/evaluate_zoo.py --zoo photos --out runs/photos_eval.json \
        --manifest --wall-clock photos-ddpm=SECONDS photos-resnet=SECONDS photos-convnext=SECONDS
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as `python benchmarks/evaluate_zoo.py` without installing

from benchmarks.common import machine, sample_images  # noqa: E402
from lit_sdo.datamodules import DigitsDataModule, PhotoCropsDataModule  # noqa: E402
from lit_sdo.images import to_unit_range  # noqa: E402
from lit_sdo.io import write_json  # noqa: E402
from lit_sdo.metrics import accuracy, batched_outputs, feature_fid, per_class_accuracy  # noqa: E402
from lit_sdo.models import EMBEDDED_ROOT, load_classifier  # noqa: E402
from lit_sdo.models.manifest import read_manifest, write_manifest  # noqa: E402
from lit_sdo.models.sampler import Sampler, SamplerSpec  # noqa: E402


@dataclass(frozen=True)
class Zoo:
    """A family of shipped models and the defaults of its evaluation."""

    diffusion: str
    classifiers: tuple[str, ...]
    num_samples: int
    steps: int
    out: str


ZOOS = {
    "digits": Zoo("embedded:digits-ddpm", ("digits-resnet", "digits-convnext"), 2000, 50, "runs/zoo_eval.json"),
    "photos": Zoo("embedded:photos-ddpm", ("photos-resnet", "photos-convnext"), 500, 30, "runs/photos_eval.json"),
}


def test_data(zoo: str, image_size: int, holdout_per_class: int) -> tuple[Any, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor]:
    """(data module, training images, test images, test labels); images in [0, 1]."""
    if zoo == "digits":
        data = DigitsDataModule(image_size=16, seed=0)
    else:
        data = PhotoCropsDataModule(image_size=image_size, holdout_per_class=holdout_per_class, seed=0)
    test_images, test_labels = data.split_tensors("test")
    return data, to_unit_range(data.split_tensors("train")[0]), to_unit_range(test_images), test_labels


def data_description(zoo: str, config: dict[str, Any]) -> str:
    if zoo == "digits":
        return "sklearn digits 16×16, DigitsDataModule(seed=0) split 70/10/20 train/val/test"
    data = config["data"]["init_args"]
    return (f"PhotoCropsDataModule(image_size={data['image_size']}, seed={data['seed']}): random crops of 10 "
            "shipped photographs (lit_sdo.datamodules.PHOTOS); held-out strip = last 30 % of each long axis")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    sampler = Sampler(SamplerSpec(args.diffusion, num_steps=args.steps, guidance_scale=args.guidance_scale,
                                  policy="none"))
    generator = sampler.model
    data, train_images, test_images, test_labels = test_data(args.zoo, generator.image_size, args.holdout_per_class)
    if generator.num_classes != data.num_classes:
        raise ValueError(f"generator {args.diffusion} has {generator.num_classes} classes but the {args.zoo} data "
                         f"{data.num_classes}; evaluate a generator trained on that data module")
    classifiers = {name: load_classifier(f"embedded:{name}") for name in args.classifiers}
    feature_net = classifiers[args.classifiers[0]]
    labels = torch.arange(args.num_samples) % generator.num_classes
    noise = torch.randn((args.num_samples, *sampler.latent_shape), generator=torch.Generator().manual_seed(args.seed))
    samples, seconds = sample_images(sampler, noise, labels, args.batch_size)
    results: dict[str, Any] = {
        "diffusion": args.diffusion,
        "sampler": f"ddim-{args.steps}",
        "guidance_scale": args.guidance_scale,
        "num_samples": args.num_samples,
        "sampling_seconds": round(seconds, 1),
        "fid_features": f"embedded:{args.classifiers[0]} penultimate layer",
        f"{args.zoo}_fid_samples_vs_test": round(feature_fid(feature_net, samples, test_images), 3),
        f"{args.zoo}_fid_train_vs_test_floor": round(feature_fid(feature_net, train_images, test_images), 3),
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


def training_record(folder: Path, config_path: str, wall_clock: float | None, note: str | None) -> dict[str, Any]:
    """How the model in ``folder`` was trained: the facts its manifest already records (command, machine, wall
    clock, notes, and any field written beside them), since the machine evaluating it now need not be the one that
    trained it; a folder without a manifest gets the plain command with this process's thread count. A measured
    ``wall_clock`` or ``note`` replaces the recorded one."""
    record = {k: v for k, v in (read_manifest(folder) or {}).items() if k != "sha256"}
    record.setdefault("training_command",
                      f"OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python cli.py fit --config {config_path}")
    record.setdefault("training_machine", "not recorded")
    if wall_clock is not None:
        record["training_wall_clock_s"] = wall_clock
    if note is not None:
        record["training_notes"] = note
    return record


def write_manifests(args: argparse.Namespace, results: dict[str, Any], wall_clock: dict[str, float],
                    notes: dict[str, str], command: str) -> None:
    """Refresh one MANIFEST.json per model folder under ``--manifest-root``: the sha256 of its files and the
    metrics just measured, with the machine they were measured on, beside the training facts it records."""
    import yaml

    zoo = ZOOS[args.zoo]
    for name in (zoo.diffusion.removeprefix("embedded:"), *zoo.classifiers):
        config_path = f"configs/train/{name.replace('-', '_')}.yaml"  # its seed_everything is the seed
        folder = args.manifest_root / name
        if not folder.is_dir():
            continue
        config = yaml.safe_load(Path(config_path).read_text())
        if name == zoo.diffusion.removeprefix("embedded:"):
            metrics = {k: v for k, v in results.items() if k != "classifiers"}
            metrics["classifier_accuracy_on_samples"] = {
                c: {k: v for k, v in r.items() if "samples" in k} for c, r in results["classifiers"].items()}
        else:
            metrics = {k: v for k, v in results["classifiers"][name].items() if "samples" not in k}
        write_manifest(folder, {
            **training_record(folder, config_path, wall_clock.get(name), notes.get(name)),
            "name": f"embedded:{name}",
            "seed": config["seed_everything"],
            "data": data_description(args.zoo, config),
            "metrics": metrics,
            "metrics_command": command,
            "metrics_machine": machine(),
        })


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The options; the model, sample count, steps and output default to the chosen zoo's."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", choices=list(ZOOS), default="digits", help="which shipped models and data")
    parser.add_argument("--diffusion", default=None, help="the generator (default: the zoo's DDPM)")
    parser.add_argument("--classifiers", nargs="+", default=None,
                        help="embedded classifiers (default: the zoo's); the first gives the FID features")
    parser.add_argument("--num-samples", type=int, default=None)
    parser.add_argument("--holdout-per-class", type=int, default=100, help="photos: test crops per class")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", default=None)
    parser.add_argument("--manifest", action="store_true", help="also write <manifest-root>/<name>/MANIFEST.json")
    parser.add_argument("--manifest-root", type=Path, default=EMBEDDED_ROOT,
                        help="folder holding the model folders (default: the shipped data/models)")
    parser.add_argument("--wall-clock", nargs="*", default=[], metavar="NAME=SECONDS",
                        help="measured training time of each model, recorded in its manifest")
    parser.add_argument("--note", nargs="*", default=[], metavar="NAME=TEXT",
                        help="how a model's training deviated from its plain command, recorded in its manifest")
    args = parser.parse_args(argv)
    for key in ("diffusion", "classifiers", "num_samples", "steps", "out"):  # not given: the zoo's
        if getattr(args, key) is None:
            setattr(args, key, getattr(ZOOS[args.zoo], key))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.manual_seed(args.seed)
    results = evaluate(args)
    write_json(args.out, results)
    print(json.dumps(results, indent=2))  # noqa: T201
    if args.manifest:
        wall_clock = {k: float(v) for k, v in (item.split("=", 1) for item in args.wall_clock)}
        notes = dict(item.split("=", 1) for item in args.note)
        command = ".venv/bin/python benchmarks/evaluate_zoo.py " + " ".join(argv or sys.argv[1:])
        write_manifests(args, results, wall_clock, notes, command)


if __name__ == "__main__":
    main()
