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


def test_baseline_report_lines(tmp_path: Path) -> None:
    from benchmarks import baseline_report

    fake = [{"policy": p, "steps": n, "seconds": s * n, "peak_mem_bytes": m * (n if p == "full" else 1),
             "grad_cosine": c}
            for p, s, m, c in [("none", 1.0, 1, None), ("sdo", 1.05, 10, 0.3), ("full", 3.0, 50, 1.0),
                               ("adjoint", 12.0, 15, 0.99), ("doodl", 19.0, 18, 0.999), ("last_k=1", 1.0, 9, 0.0),
                               ("sdo-tail=2", 1.5, 12, 0.6), ("sdo-tail=8", 2.5, 30, 0.93)]
            for n in (10, 50)]
    ratios = baseline_report.paper_ratio_lines(fake, "ddpm-256")
    assert "| 10 | adjoint/sdo | 11.43× | 11.56× | 1.50× | 1.53× |" in ratios
    targets = baseline_report.baseline_targets(fake)
    # last_k=1 is cheaper but gives x_T no gradient (cosine 0): the next is sdo-tail=2
    assert targets[0] == ("PASS  sdo the cheapest policy with an x_T gradient at N=10 (next: sdo-tail=2): "
                          "next costs 1.43x sdo")
    assert targets[-2].startswith("PASS  adjoint peak memory") and targets[-1].startswith("PASS  doodl")
    assert baseline_report.tail_frontier_lines(fake)[0].startswith("N=10: smallest sdo tail with cosine >= 0.9: m = 8")
    path = baseline_report.plot_frontier(fake, tmp_path / "frontier.png", "fake")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_policy_strings_are_benchmark_labels() -> None:
    args = gradient_cost.parse_args(["--policies", "sdo,adjoint,doodl,sdo-tail=4,adjoint-solver=rk4"])
    assert args.policies == ["none", "sdo", "adjoint", "doodl", "sdo-tail=4", "adjoint-solver=rk4"]
    assert gradient_cost.policy_for("sdo-tail=4").tail == 4
    with pytest.raises(SystemExit):
        gradient_cost.parse_args(["--policies", "adjoint-solver=heun"])
