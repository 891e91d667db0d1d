"""Compare the outputs of two runs of a job (e.g. the same command on two versions of the code).

For every ``*.safetensors`` file under both folders: the largest |Δ| of each tensor; for results.json
(latent optimisation) the per-sample records and the aggregate, for history.json (reward fine-tuning)
the per-step rows, without the wall-clock and memory keys (they are measurements, not results). Keys
only one side has are listed, not compared; ``--rename guided=optimized`` compares keys that a version
of the code named otherwise (a substring of OLD's keys replaced).

    python benchmarks/compare_runs.py OLD_FOLDER NEW_FOLDER [--rename OLD=NEW ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_sdo.io import read_tensors  # noqa: E402

TIMING = {"seconds", "cpu_seconds", "peak_bytes", "seconds_per_step", "peak_mib_per_step"}


def tensors(folder: Path) -> dict[str, Any]:
    return {f"{path.relative_to(folder)}:{name}": value.double() for path in sorted(folder.rglob("*.safetensors"))
            for name, value in read_tensors(path).items()}


def records(folder: Path) -> dict[str, Any]:
    """Per-sample rows and aggregate (results.json) or per-step rows (history.json), timing removed."""
    if (folder / "results.json").is_file():
        results = json.loads((folder / "results.json").read_text())
        return {"samples": results["samples"], "aggregate": results["aggregate"]}
    if (folder / "history.json").is_file():
        return {"steps": json.loads((folder / "history.json").read_text())["steps"]}
    raise FileNotFoundError(f"{folder} holds neither results.json nor history.json")


def largest_difference(old: Any, new: Any, only_in: set[str], path: str = "") -> float:
    """max |Δ| over the numbers both sides have (0.0 when every shared number is equal); NaN = NaN."""
    if isinstance(old, dict) and isinstance(new, dict):
        only_in.update(f"{path}{k}" for k in old.keys() ^ new.keys())
        shared = [k for k in old if k in new and k not in TIMING]
        return max([largest_difference(old[k], new[k], only_in, f"{path}{k}.") for k in shared], default=0.0)
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return math.inf
        return max([largest_difference(a, b, only_in, path) for a, b in zip(old, new, strict=True)], default=0.0)
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        if math.isnan(old) and math.isnan(new):
            return 0.0
        return abs(float(old) - float(new))
    return 0.0 if old == new else math.inf


def renamed(value: Any, renames: dict[str, str]) -> Any:
    """``value`` with every dict key's substrings replaced by ``renames`` (old -> new), recursively."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            for old, new in renames.items():
                key = key.replace(old, new)
            out[key] = renamed(item, renames)
        return out
    if isinstance(value, list):
        return [renamed(item, renames) for item in value]
    return value


def compare(old: Path, new: Path, renames: dict[str, str] | None = None) -> dict[str, Any]:
    a, b = tensors(old), tensors(new)
    tensor_delta = {k: float((a[k] - b[k]).abs().max()) if a[k].shape == b[k].shape else math.inf
                    for k in a if k in b}
    only_in: set[str] = set()
    rec_old, rec_new = renamed(records(old), renames or {}), records(new)
    parts = {key: largest_difference(rec_old[key], rec_new[key], only_in) for key in rec_old if key in rec_new}
    return {"tensors_max_abs_diff": max(tensor_delta.values(), default=None), "tensors": tensor_delta,
            "records_max_abs_diff": parts, "tensor_files_only_one_side": sorted(a.keys() ^ b.keys()),
            "keys_only_one_side": sorted(only_in)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW", help="key substrings OLD calls otherwise")
    parser.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = parser.parse_args(argv)
    result = compare(args.old, args.new, dict(item.split("=", 1) for item in args.rename))
    summary = {k: v for k, v in result.items() if k != "tensors"}
    print(json.dumps(summary, indent=1))  # noqa: T201 - the script's output
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
