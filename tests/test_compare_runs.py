"""``lit-sdo compare-runs``: the largest differences between two runs' outputs, timings left out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import cli
from lit_sdo.io import write_json, write_tensors


def write_run(folder: Path, delta: float, loss: float, seconds: float, key: str = "loss") -> None:
    write_tensors(folder / "delta.safetensors", {"delta": torch.full((2,), delta)})
    write_json(folder / "results.json", {"samples": [{key: loss, "seconds": seconds}],
                                         "aggregate": {"success_rate": 0.5}})


def test_reports_the_largest_differences_and_ignores_timings(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "old", 1.0, 2.0, seconds=1.0)
    write_run(tmp_path / "new", 1.5, 2.25, seconds=9.0)
    cli.main(["compare-runs", "--old", str(tmp_path / "old"), "--new", str(tmp_path / "new"),
              "--out", str(tmp_path / "cmp.json")])
    printed = json.loads(capsys.readouterr().out)
    assert printed["tensors_max_abs_diff"] == 0.5
    assert printed["records_max_abs_diff"] == {"samples": 0.25, "aggregate": 0.0}  # seconds differ by 8: skipped
    assert json.loads((tmp_path / "cmp.json").read_text())["tensors"] == {"delta.safetensors:delta": 0.5}


def test_renamed_keys_are_compared_and_unmatched_keys_listed(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "old", 1.0, 2.0, seconds=1.0, key="guided_loss")
    write_run(tmp_path / "new", 1.0, 3.0, seconds=1.0, key="optimized_loss")
    cli.main(["compare-runs", "--old", str(tmp_path / "old"), "--new", str(tmp_path / "new")])
    unmatched = json.loads(capsys.readouterr().out)
    assert unmatched["records_max_abs_diff"]["samples"] == 0.0
    assert unmatched["keys_only_one_side"] == ["guided_loss", "optimized_loss"]
    cli.main(["compare-runs", "--old", str(tmp_path / "old"), "--new", str(tmp_path / "new"),
              "--rename", "{guided: optimized}"])
    assert json.loads(capsys.readouterr().out)["records_max_abs_diff"]["samples"] == 1.0


def test_a_different_number_of_samples_is_an_infinite_difference() -> None:
    from lit_sdo.compare import largest_difference

    assert largest_difference([1.0, 2.0], [1.0], set()) == math.inf
    assert largest_difference({"a": math.nan}, {"a": math.nan}, set()) == 0.0


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither results.json nor history.json"):
        cli.main(["compare-runs", "--old", str(tmp_path / "empty"), "--new", str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        cli.main(["compare-runs", "--old", str(tmp_path / "missing"), "--new", str(tmp_path / "empty")])
