"""The README's commands and every benchmark, run with their default paths in a fresh clone, change no tracked file.

Shipped weights (data/models), the docs' figures and benchmarks/RESULTS.md are in git; a command that a
user runs as documented must write its outputs elsewhere (runs/, or a path the user names). Each command
runs with size-reducing flags only, in one process inside the clone (imports paid once); after each, ``git
status`` must list no modified tracked file, and the clone is restored before the next command.

Left out (time, or weights that are not shipped): ``make demo`` / ``make test`` (they install a venv),
``tensorboard``, DDP / torchrun launches (tests/test_reliability.py), the configs for downloaded models
(imagenet_dit, celebahq, lcm, sd15_*, shortcut/*), reward/digits_class.yaml (same code path as
reward/digits.yaml), ``python -m lit_sdo.tasks.train_text_image`` (29 s of CPU even at ``--epochs 1``;
its ``--out`` defaults to runs/text_image) and full-size training runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

ATTACK = ["--config", "configs/attack/digits.yaml", "--data.init_args.per_class=1",
          "--model.init_args.sampler.num_steps=2", "--trainer.max_epochs=1"]
FEW_LABELS = ["--data.init_args.num_classes=1", "--data.init_args.per_class=1", "--trainer.max_epochs=1"]
TRAIN = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=0"]

# (id, how it is started: "cli" = `lit-sdo ...`, "module" = `python -m ...`, "script" = `python <file>`, argv).
COMMANDS: list[tuple[str, str, list[str]]] = [
    ("fit attack", "cli", ["fit", *ATTACK]),
    ("test attack", "cli", ["test", *ATTACK, "--ckpt_path", "runs/attack_digits/version_0/checkpoints/last.ckpt"]),
    ("fit edit", "cli", ["fit", "--config", "configs/edit/digits.yaml", "--data.init_args.num_samples=2",
                         "--model.init_args.sampler.num_steps=2", "--trainer.max_epochs=1"]),
    ("fit style", "cli", ["fit", "--config", "configs/style/digits.yaml", *FEW_LABELS,
                          "--model.init_args.sampler.num_steps=2"]),
    ("fit aesthetic", "cli", ["fit", "--config", "configs/aesthetic/digits.yaml", *FEW_LABELS,
                              "--model.init_args.sampler.num_steps=4"]),
    ("fit reward", "cli", ["fit", "--config", "configs/reward/digits.yaml", "--model.init_args.sampler.num_steps=2",
                           "--data.init_args.samples_per_step=2", "--data.init_args.batch_size=1",
                           "--model.init_args.grid_samples=1", "--trainer.max_epochs=1"]),
    ("lora grid", "cli", ["lora-grid", "--lora+=runs/reward_digits/version_0/lora:1.0", "--seeds=[0]",
                          "--num_steps=2"]),
    ("predict sample grid", "cli", ["predict", "--config", "configs/sample/digits.yaml",
                                    "--model.init_args.samples_per_class=1", "--model.init_args.num_steps=2"]),
    ("train ddpm", "cli", ["fit", "--config", "configs/train/digits_ddpm.yaml", *TRAIN]),
    ("train resnet", "cli", ["fit", "--config", "configs/train/digits_resnet.yaml", *TRAIN]),
    ("train convnext", "cli", ["fit", "--config", "configs/train/digits_convnext.yaml", *TRAIN]),
    ("train shortcut", "cli", ["fit", "--config", "configs/train/digits_shortcut.yaml", "--trainer.max_steps=2"]),
    ("train flow", "cli", ["fit", "--config", "configs/train/digits_flow.yaml", "--trainer.max_steps=2"]),
    ("benchmark shortcut_fid", "module", ["benchmarks.shortcut_fid", "--steps", "1", "--num-samples", "20",
                                          "--batch-size", "20"]),
    ("benchmark evaluate_zoo", "script", ["benchmarks/evaluate_zoo.py", "--num-samples", "20", "--steps", "2"]),
    ("benchmark attack_policies", "script", ["benchmarks/attack_policies.py", "--policies", "sdo", "--per-class", "1",
                                             "--steps", "1"]),
    ("benchmark guided_policies", "script", ["benchmarks/guided_policies.py", "--tasks", "aesthetic", "--samples",
                                             "10", "--opt-steps", "1", "--num-steps", "4", "--policies", "sdo",
                                             "--xhat-scales", "0.05"]),
    ("benchmark reward_policies", "script", ["benchmarks/reward_policies.py", "--policies", "sdo", "--steps", "1",
                                             "--num-steps", "2", "--samples-per-step", "2", "--batch-size", "1",
                                             "--eval-every", "1"]),
    ("benchmark attack_gradient_alignment", "script", ["benchmarks/attack_gradient_alignment.py", "--samples", "2",
                                                       "--steps", "2"]),
    ("benchmark gradient_cost", "module", ["benchmarks.gradient_cost", "--steps", "2", "--repeats", "1",
                                           "--policies", "sdo"]),
]
TIMEOUT_S = 900  # all commands together: about 2 minutes on an idle 2-core machine
KNOWN: dict[str, str] = {}  # command id -> reason, for a known defect (strict xfail)

# Runs inside the clone: each command as its entry point would run it (sys.argv set, SystemExit caught),
# then the tracked files it changed, then `git checkout` so the next command starts clean.
DRIVER = r"""
import json, resource, runpy, subprocess, sys, time, traceback
from pathlib import Path
clone = Path.cwd()
sys.path.insert(0, str(clone))
import lit_sdo
assert Path(lit_sdo.__file__).resolve().is_relative_to(clone), f"lit_sdo from {lit_sdo.__file__}, not the clone"
report = {}
for name, kind, argv in json.loads(sys.argv[1]):
    sys.argv = [argv[0] if kind != "cli" else "lit-sdo", *argv[(kind != "cli"):]]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    error, started, cpu = None, time.perf_counter(), time.process_time() + children.ru_utime + children.ru_stime
    try:
        if kind == "cli":
            import cli
            cli.main()
        elif kind == "module":
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit:
        error = None if exit.code in (None, 0) else f"exit code {exit.code}"
    except BaseException as err:
        error = "".join(traceback.format_exception_only(err)).strip()[-500:]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() + children.ru_utime + children.ru_stime - cpu  # with worker processes
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    subprocess.run(["git", "checkout", "--", "."], check=True)
    report[name] = {"error": error, "changed": changed, "seconds": round(time.perf_counter() - started, 1),
                    "cpu_seconds": round(cpu, 1)}
    (clone / "no-tracked-changes.json").write_text(json.dumps(report))  # after each command: a crash keeps the rest
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Clone this checkout's committed HEAD, run every command in it; per command: error and changed files."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    clone = tmp_path_factory.mktemp("clone") / "lit_sdo"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", head.strip()], cwd=clone, check=True)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(clone), "MPLBACKEND": "Agg"}
    log = clone.parent / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(COMMANDS)], cwd=clone, env=env,
                                  stdout=sink, stderr=subprocess.STDOUT)
        try:
            driver.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:  # commands not reached fail below, the others still count
            driver.kill()
            driver.wait()
    path = clone / "no-tracked-changes.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["_log"] = f"exit code {driver.returncode} (timeout {TIMEOUT_S} s); {log}:\n{log.read_text()[-3000:]}"
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN[name]))
                                  if name in KNOWN else name for name, _, _ in COMMANDS])
def test_command_with_default_paths_changes_no_tracked_file(name: str, report: dict[str, Any]) -> None:
    assert name in report, f"{name} did not run: {report['_log']}"
    assert report[name]["error"] is None, f"{name} failed: {report[name]['error']}\n{report['_log'][-1500:]}"
    assert report[name]["changed"] == [], f"{name} changed tracked files: {report[name]['changed']}"
