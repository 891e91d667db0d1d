"""Compare the outputs of two runs of a job: did a new version of the code, another machine or another device
count change what the job wrote?

For every ``*.safetensors`` file under both folders, the largest |Δ| of each tensor; for results.json (latent
optimisation) the per-sample records and the aggregate, for history.json (reward fine-tuning) the per-step rows,
without the wall-clock and memory keys (they are measurements of the run, not its results). Keys only one side
has are listed, not compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lit_sdo.io import read_tensors, writable_folder, write_json

TIMING_KEYS = {"seconds", "cpu_seconds", "peak_bytes", "seconds_per_step", "peak_mib_per_step"}


def run_tensors(folder: Path) -> dict[str, Any]:
    """Every tensor the run wrote, keyed ``file:name``, in float64."""
    return {f"{path.relative_to(folder)}:{name}": value.double() for path in sorted(folder.rglob("*.safetensors"))
            for name, value in read_tensors(path).items()}


def run_records(folder: Path) -> dict[str, Any]:
    """Per-sample rows and aggregate (results.json) or per-step rows (history.json)."""
    if (folder / "results.json").is_file():
        results = json.loads((folder / "results.json").read_text())
        return {"samples": results["samples"], "aggregate": results["aggregate"]}
    if (folder / "history.json").is_file():
        return {"steps": json.loads((folder / "history.json").read_text())["steps"]}
    raise FileNotFoundError(f"{folder} holds neither results.json nor history.json; pass a run's output folder")


def largest_difference(old: Any, new: Any, only_in: set[str], path: str = "") -> float:
    """max |Δ| over the numbers both sides have, timing keys skipped (0.0 when all are equal; NaN = NaN; inf for
    lists of different lengths or unequal non-numbers)."""
    if isinstance(old, dict) and isinstance(new, dict):
        only_in.update(f"{path}{k}" for k in old.keys() ^ new.keys())
        shared = [k for k in old if k in new and k not in TIMING_KEYS]
        return max([largest_difference(old[k], new[k], only_in, f"{path}{k}.") for k in shared], default=0.0)
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return math.inf
        return max([largest_difference(a, b, only_in, path) for a, b in zip(old, new, strict=True)], default=0.0)
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        return 0.0 if math.isnan(old) and math.isnan(new) else abs(float(old) - float(new))
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
    return [renamed(item, renames) for item in value] if isinstance(value, list) else value


def compare_runs(old: str | Path, new: str | Path, rename: dict[str, str] | None = None,
                 out: str | Path | None = None) -> dict[str, Any]:
    """Compare two runs' output folders; print the largest differences as JSON.

    Args:
        old: the first run's output folder (``model.init_args.output_dir``).
        new: the second run's.
        rename: key substrings the old run named otherwise, e.g. ``{guided: optimized}``.
        out: also write the comparison, every tensor's difference included, to this JSON file.
    """
    for folder in (old, new):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder} is not a folder; pass two runs' output folders")
    if out is not None:  # an unwritable --out fails now, not after the comparison
        writable_folder(Path(out).parent)
    a, b = run_tensors(Path(old)), run_tensors(Path(new))
    tensor_delta = {k: float((a[k] - b[k]).abs().max()) if a[k].shape == b[k].shape else math.inf
                    for k in a if k in b}
    only_in: set[str] = set()
    rec_old, rec_new = renamed(run_records(Path(old)), rename or {}), run_records(Path(new))
    parts = {key: largest_difference(rec_old[key], rec_new[key], only_in) for key in rec_old if key in rec_new}
    result = {"tensors_max_abs_diff": max(tensor_delta.values(), default=None), "tensors": tensor_delta,
              "records_max_abs_diff": parts, "tensor_files_only_one_side": sorted(a.keys() ^ b.keys()),
              "keys_only_one_side": sorted(only_in)}
    print(json.dumps({k: v for k, v in result.items() if k != "tensors"}, indent=1))  # noqa: T201 - its output
    if out is not None:
        write_json(out, result)
    return result
