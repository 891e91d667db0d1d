"""Every benchmark script's ``main`` at tiny size, so a library change that a script still calls the old way fails
here and not in the next long benchmark run (a broken script once sat unnoticed behind benchmarks/gpu_check.sh).

One test per script, end to end on tiny models (1-3 sampling steps, one optimisation step, a few samples); what the
numbers mean is tested elsewhere (test_benchmarks.py, test_benchmark_policy_rows.py, test_real_scale.py). The GPU
script's --dry-run runs each of its commands at tiny size on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_gradient_cost(tmp_path: Path) -> None:
    from benchmarks import gradient_cost

    records = gradient_cost.main(["--steps", "2", "--repeats", "1", "--batch", "1", "--policies", "sdo,adjoint",
                                  "--json", str(tmp_path / "cost.json")])
    assert [r["policy"] for r in records] == ["none", "sdo", "adjoint"]
    assert json.loads((tmp_path / "cost.json").read_text()) == records


def test_adjoint_convergence() -> None:
    from benchmarks import adjoint_convergence

    lines = adjoint_convergence.main(["--model", "small-unet", "--steps", "2", "--reference-steps", "3",
                                      "--solvers", "euler:1", "--batch", "1"])
    assert lines[-1].startswith("| euler | 1 | 2 |")


def test_attack_gradient_alignment(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import attack_gradient_alignment

    attack_gradient_alignment.main(["--samples", "2", "--steps", "2"])
    assert "| full (exact) | 1.000 |" in capsys.readouterr().out
    # the photo attack's pair: its shipped guidance reaches the sampler (the gradients' table changes with it)
    tables = {}
    for scale in ("1", "3"):
        attack_gradient_alignment.main(["--samples", "2", "--steps", "2", "--model", "embedded:photos-ddpm",
                                        "--classifier", "embedded:photos-resnet", "--guidance-scale", scale])
        tables[scale] = capsys.readouterr().out
    assert "2 steps, guidance 3, 2 samples" in tables["3"] and "| full (exact) | 1.000 |" in tables["3"]
    assert tables["1"].split("\n", 1)[1] != tables["3"].split("\n", 1)[1]


def test_evaluate_zoo_refreshes_metrics_and_keeps_the_training_facts(tmp_path: Path) -> None:
    """A manifest rewritten by an evaluation keeps how the model was trained (the evaluating machine need not be
    the training one) and any field written beside it; its metrics and digests are the new ones."""
    from benchmarks import evaluate_zoo
    from lit_sdo.models import EMBEDDED_ROOT
    from lit_sdo.models.manifest import check_manifest, read_manifest

    folder = tmp_path / "models" / "digits-resnet"
    shutil.copytree(EMBEDDED_ROOT / "digits-resnet", folder)
    shipped = read_manifest(folder)
    (folder / "MANIFEST.json").write_text(json.dumps({**shipped, "training_machine": "the training box",
                                                      "metrics": {"test_accuracy": -1.0}, "kept_field": 7}))
    evaluate_zoo.main(["--num-samples", "20", "--steps", "2", "--classifiers", "digits-resnet",
                       "--out", str(tmp_path / "zoo.json"), "--manifest", "--manifest-root", str(tmp_path / "models")])
    results = json.loads((tmp_path / "zoo.json").read_text())
    assert results["sampler"] == "ddim-2" and results["digits_fid_samples_vs_test"] > 0
    manifest = read_manifest(folder)
    assert manifest["training_machine"] == "the training box" and manifest["kept_field"] == 7
    assert manifest["training_command"] == shipped["training_command"]
    assert manifest["metrics"]["test_accuracy"] == results["classifiers"]["digits-resnet"]["test_accuracy"] > 0.5
    assert manifest["metrics_machine"].startswith(evaluate_zoo.machine().split(";")[0])
    check_manifest(folder)  # digests of the copied files


def test_shortcut_fid(tmp_path: Path) -> None:
    from benchmarks import shortcut_fid

    paths = {name: str(tmp_path / name) for name in ("out.json", "results.md", "plot.png")}
    shortcut_fid.main(["--steps", "1", "--num-samples", "20", "--batch-size", "20", "--gradient-cost",
                       "--out", paths["out.json"], "--results", paths["results.md"], "--plot", paths["plot.png"]])
    results = json.loads(Path(paths["out.json"]).read_text())
    assert [row["steps"] for row in results["fid"]] == [1] and len(results["gradient_cost"]) == 6
    assert shortcut_fid.SECTION in Path(paths["results.md"]).read_text()


FAKE_GUIDED_DIFFUSION = '''
"""guided-diffusion's two network classes, as lit_sdo's under the official argument names (a stand-in clone)."""
from lit_sdo.models.adm import ADMClassifier, ADMUNet


def ours(kwargs):
    kwargs = dict(kwargs, scale_shift=kwargs.pop("use_scale_shift_norm"))
    return dict(kwargs, split_heads_first=not kwargs.pop("use_new_attention_order"))


class UNetModel(ADMUNet):
    def __init__(self, **kwargs):
        super().__init__(**ours(kwargs))


class EncoderUNetModel(ADMClassifier):
    def __init__(self, **kwargs):
        super().__init__(**ours(kwargs))
'''


@pytest.fixture
def guided_diffusion_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder laid out as a clone of openai/guided-diffusion; the script's sys.path entry and import undone."""
    (tmp_path / "guided_diffusion").mkdir()
    (tmp_path / "guided_diffusion" / "__init__.py").write_text("")
    (tmp_path / "guided_diffusion" / "unet.py").write_text(FAKE_GUIDED_DIFFUSION)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("guided_diffusion")]:
        del sys.modules[name]


def test_adm_reference_check(guided_diffusion_clone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import adm_reference_check

    adm_reference_check.main(["--guided-diffusion", str(guided_diffusion_clone), "--size", "16",
                              "--model-channels", "64"])
    printed = capsys.readouterr().out
    assert printed.count("same names and shapes: True") == 2 and printed.count("max |official - lit_sdo| = 0 ") == 2


def test_real_scale_models(tmp_path: Path) -> None:
    from benchmarks import real_scale_models

    real_scale_models.main([str(tmp_path), "laion", "images"])
    assert (tmp_path / "laion" / ".complete").is_file()
    assert (tmp_path / "images" / "style.png").is_file()


def test_real_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import real_scale

    assert real_scale.main(["--check-only", "--only", "edit/celebahq", "--reward-cost", "--reward-steps", "2",
                            "--reward-policies", "sdo-random", "--cache", str(tmp_path), "--out", str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [["| edit/celebahq", "PASS"],
                                                      ["| reward/sd15_aesthetic_cost_sdo_random", "PASS"]]
    assert not any(tmp_path.iterdir())  # nothing built, nothing run


def test_attack_policies_resumes_from_its_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import attack_policies, policy_sweep

    tiny = ["--policies", "sdo", "--per-class", "1", "--steps", "1", "--json", str(tmp_path / "runs.json"),
            "--override=--model.init_args.sampler.num_steps=2", "--results", str(tmp_path / "a.md")]
    attack_policies.main(tiny)
    assert "| sdo | " in (tmp_path / "a.md").read_text()
    saved = json.loads((tmp_path / "runs.json").read_text())
    assert list(saved["runs"]) == ["0.1"] and list(saved["runs"]["0.1"]) == ["sdo"]

    def refuse(argv: list[str]) -> None:
        raise AssertionError(f"a saved run was rerun: {argv}")

    monkeypatch.setattr(policy_sweep.cli, "main", refuse)  # the saved sdo row must be reused, not rerun
    (tmp_path / "a.md").unlink()
    attack_policies.main(tiny)
    assert "| sdo | " in (tmp_path / "a.md").read_text()
    assert json.loads((tmp_path / "runs.json").read_text()) == saved
    with pytest.raises(SystemExit, match="holds runs with settings"):  # other settings: refused, file untouched
        attack_policies.main([*tiny, "--steps", "2"])
    assert json.loads((tmp_path / "runs.json").read_text()) == saved
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SystemExit, match="cannot be read as an earlier sweep's file"):
        attack_policies.main([*tiny, "--json", str(tmp_path / "broken.json")])
    with pytest.raises(SystemExit, match="cannot be written"):  # before any run (cli.main would refuse)
        attack_policies.main([*tiny, "--json", str(tmp_path / "a.md" / "runs.json")])


def test_attack_tau_sweep_draws_both_curves(tmp_path: Path) -> None:
    from benchmarks import attack_policies

    runs = {eps: {p: {"ssim_mean": 1 - eps * f, "success_rate": eps * f, "seconds_per_step": f}
                  for p, f in (("sdo", 1.0), ("full", 2.0))} for eps in (0.1, 0.2)}
    paths = attack_policies.plot_curves(runs, tmp_path, "tiny")
    assert [p.name for p in paths] == ["attack_success_vs_change.png", "attack_success_vs_time.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_guided_policies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import guided_policies

    tiny = ["--tasks", "aesthetic", "--samples", "10", "--num-steps", "2", "--policies", "sdo", "--xhat-scales", "0.05"]
    guided_policies.main([*tiny, "--opt-steps", "1", "--results", str(tmp_path / "g.md")])
    text = (tmp_path / "g.md").read_text()
    assert "| sdo | " in text and "| x̂₀ guidance ρ=0.05 | " in text
    guided_policies.main([*tiny, "--memory-only"])
    assert "| x̂₀ guidance | " in capsys.readouterr().out.split("### aesthetic (configs")[-1]


def test_reward_policies(tmp_path: Path) -> None:
    from benchmarks import reward_policies

    reward_policies.main(["--policies", "sdo", "--steps", "1", "--num-steps", "2", "--samples-per-step", "2",
                          "--batch-size", "1", "--eval-every", "1", "--override=--model.init_args.grid_samples=1",
                          "--results", str(tmp_path / "r.md")])
    assert "| sdo (k random) | 1 | " in (tmp_path / "r.md").read_text()


# The sections whose dry run takes seconds: table3 and precision start their scripts 2 and 8 times (about 1 and 3.5
# minutes on 2 busy cores); the same scripts with the same options run at tiny size in the tests above, and
# test_real_scale.py parses every full-size command line of every section.
@pytest.mark.slow  # the section's scripts start as processes: about 20 s each
@pytest.mark.parametrize("section", ["real_scale", "attack"])
def test_gpu_check_dry_run_runs_every_command_at_tiny_size(section: str, tmp_path: Path) -> None:
    env = os.environ | {"PY": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run", section], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0 and f"| {section} | PASS |" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
