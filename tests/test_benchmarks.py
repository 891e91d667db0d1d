"""Smoke test of the gradient-cost benchmark (benchmarks/gradient_cost.py) on a tiny run.

The benchmark's targets (time and memory ratios) are checked by the benchmark itself on real sizes;
here: it runs end to end through the fresh-process memory path, writes the documented JSON records,
and its gradients agree with the exact float64 reference where they must (full, checkpoint) and not
where they cannot (truncation gives x_T no gradient).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gradient_cost  # noqa: E402


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    path = tmp_path_factory.mktemp("bench") / "gradient_cost.json"
    gradient_cost.main(["--steps", "3", "--repeats", "1", "--policies", "sdo,full,checkpoint,last_k=1",
                        "--json", str(path)])
    return json.loads(path.read_text())


def test_json_records(records: list[dict]) -> None:
    assert [r["policy"] for r in records] == ["none", "sdo", "full", "checkpoint", "last_k=1"]  # none always first
    for rec in records:
        assert set(gradient_cost.RECORD_KEYS) <= set(rec)
        assert rec["steps"] == 3
        assert rec["seconds"] > 0
        assert rec["peak_mem_bytes"] > 0  # measured in a fresh process, above its baseline
    by_policy = {r["policy"]: r for r in records}
    assert by_policy["none"]["ratio_to_sampling"] == 1.0
    assert by_policy["none"]["grad_cosine"] is None
    # full graph of 3 steps holds about three times the activations of SDO's single graph step
    assert by_policy["full"]["peak_mem_bytes"] > by_policy["sdo"]["peak_mem_bytes"]


def test_gradient_cosines(records: list[dict]) -> None:
    by_policy = {r["policy"]: r["grad_cosine"] for r in records}
    assert by_policy["full"] == pytest.approx(1.0, abs=1e-4)  # float32 full vs the float64 exact gradient
    assert by_policy["checkpoint"] == pytest.approx(1.0, abs=1e-4)
    assert by_policy["last_k=1"] == 0.0  # DRaFT-1 detaches step 0: no gradient reaches x_T
    assert 0.0 < by_policy["sdo"] < 1.0 - 1e-6  # an approximation, not the exact gradient


def test_cosine_and_targets() -> None:
    a = torch.tensor([1.0, 0.0])
    assert gradient_cost.cosine(a, a) == pytest.approx(1.0)
    assert gradient_cost.cosine(a, torch.tensor([0.0, 2.0])) == pytest.approx(0.0)
    assert gradient_cost.cosine(torch.zeros(2), a) == 0.0
    fake = [{"policy": p, "steps": n, "seconds": s, "peak_mem_bytes": m}
            for p, s, m in [("none", 1.0, 1), ("sdo", 1.05, 10), ("sdo-random", 1.2, 10), ("full", 3.0, 500),
                            ("checkpoint", 4.0, 20)] for n in (10, 50, 100)]
    lines = gradient_cost.check_targets(fake)
    assert lines[0].startswith("PASS") and lines[1].startswith("FAIL")  # 1.05x passes, 1.2x fails
    assert lines[-1].startswith("FAIL")  # constant full memory is not linear growth


def test_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        gradient_cost.parse_args(["--policies", "sdo,adjoin"])
    with pytest.raises(SystemExit):
        gradient_cost.parse_args(["--model", "sd3"])
    with pytest.raises(ValueError, match="allowed values"):
        gradient_cost.build_setup("sd3", "cpu", 1, "all")
