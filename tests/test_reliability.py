"""The shipped jobs run as a user runs them: killed and resumed, their records read back (DDP: test_reliability_ddp).

Black-box on purpose: every check goes through ``cli.py`` (a real subprocess where a process must die
or several ranks must meet, the in-process entry point ``cli.main`` elsewhere, to pay the imports once)
and reads only what a run leaves on disk: results.json, delta.safetensors, the LoRA, history.json, the
TensorBoard events and last.ckpt. The configs are the shipped ones with size-reducing overrides only.

Kill + resume is compared bit for bit, by construction: the checkpoint restores every number the remaining
steps read, and they run the same operations on the same shapes in the same order, with the same thread
count (conftest's OMP_NUM_THREADS=1 reaches the subprocess). Printed rates are compared to their rounding.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch

from lit_sdo.io import read_tensors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's cli.py, not an installed one

import cli  # noqa: E402

ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
MAX_EPOCHS = 6  # optimisation steps of the kill / resume runs
QUIET = ["--trainer.enable_progress_bar=false"]

# Size-reducing overrides of each shipped config (samples, sampling steps); output paths are added per test.
ATTACK = ("configs/attack/digits.yaml", ["--data.init_args.per_class=1", "--model.init_args.sampler.num_steps=4"])
STYLE = ("configs/style/digits.yaml", ["--data.init_args.per_class=1", "--model.init_args.sampler.num_steps=4"])
REWARD = ("configs/reward/digits.yaml", ["--model.init_args.sampler.num_steps=4", "--data.init_args.samples_per_step=2",
                                         "--data.init_args.batch_size=1", "--model.init_args.grid_samples=2",
                                         "--model.init_args.grid_every_n_steps=2"])


def job_args(job: tuple[str, list[str]], out: Path, *extra: str) -> list[str]:
    """``fit`` arguments of a shipped config writing everything (results, logs, checkpoints) under ``out``."""
    config, overrides = job
    return ["fit", "--config", str(ROOT / config), *overrides, f"--model.init_args.output_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}", *extra]


def run_in_process(args: list[str]) -> str:
    """Run the CLI in this process; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), mock.patch.object(sys, "argv", ["cli.py"]):  # not pytest's arguments
        cli.main(args)
    return printed.getvalue()


def outputs(out: Path) -> dict[str, Any]:
    """Everything a run's result depends on, without wall-clock: tensors by file and name, per-sample records."""
    tensors = {f"{path.relative_to(out)}:{name}": value for path in sorted(out.rglob("*.safetensors"))
               for name, value in read_tensors(path).items()}
    records: Any = None
    if (out / "results.json").is_file():
        records = json.loads((out / "results.json").read_text())["samples"]
    elif (out / "history.json").is_file():  # reward fine-tuning: per-step rewards
        timing = {"seconds", "cpu_seconds", "peak_bytes"}
        records = [{k: v for k, v in row.items() if k not in timing}
                   for row in json.loads((out / "history.json").read_text())["steps"]]
    assert tensors and records, f"no results under {out}"
    return {"tensors": tensors, "records": records}


def kill_after_first_checkpoint(args: list[str], out: Path, timeout: float = 600) -> Path:
    """Start the CLI as a user would, SIGKILL it as soon as a last.ckpt exists; returns that checkpoint."""
    log = out.with_suffix(".log")
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=ENV,
                                   stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            found = sorted(out.glob("*/version_*/checkpoints/last.ckpt"))
            if found:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return found[0]
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    pytest.fail(f"no checkpoint appeared while the run was going (exit code {process.returncode}); "
                f"log: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One uninterrupted tiny attack (the reference of several tests): its folder and what it printed."""
    out = tmp_path_factory.mktemp("attack") / "straight"
    printed = run_in_process(job_args(ATTACK, out, f"--trainer.max_epochs={MAX_EPOCHS}", *QUIET))
    return out, printed


RESUMABLE_JOBS = [
    pytest.param("attack", ATTACK),
    pytest.param("style", STYLE),
    pytest.param("reward", REWARD),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "job"), RESUMABLE_JOBS)
def test_killed_run_resumes_to_the_same_results_as_an_uninterrupted_one(
        name: str, job: tuple[str, list[str]], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    epochs = f"--trainer.max_epochs={MAX_EPOCHS}"
    if name == "attack":
        straight = request.getfixturevalue("attack_run")[0]
    else:
        straight = tmp_path / "straight"
        run_in_process(job_args(job, straight, epochs, *QUIET))

    killed = tmp_path / "killed"
    ckpt = kill_after_first_checkpoint(job_args(job, killed, epochs), killed)
    epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    assert epoch < MAX_EPOCHS - 1, f"the first checkpoint came after the last step (epoch {epoch}): nothing to resume"
    run_in_process(job_args(job, killed, epochs, f"--ckpt_path={ckpt}", *QUIET))

    expected, resumed = outputs(straight), outputs(killed)
    assert resumed["records"] == expected["records"]
    assert resumed["tensors"].keys() == expected["tensors"].keys()
    for key, value in expected["tensors"].items():
        assert torch.equal(resumed["tensors"][key], value), f"{key} differs after kill + resume"


def test_delta_file_and_results_json_agree_per_sample(attack_run: tuple[Path, str]) -> None:
    out, _ = attack_run
    samples = json.loads((out / "results.json").read_text())["samples"]
    assert any(s["clean_pred"] != s["label"] for s in samples), "precondition: a sample the classifier gets wrong clean"
    succeeded = read_tensors(out / "delta.safetensors")["succeeded"].tolist()
    assert succeeded == [s["success"] for s in samples]


def last_scalars(log_dir: Path) -> dict[str, float]:
    """The last value of every scalar in a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = log_dir.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: accumulator.Scalars(tag)[-1].value for tag in accumulator.Tags()["scalars"]}


def test_logged_success_rate_is_the_printed_one(attack_run: tuple[Path, str]) -> None:
    out, printed = attack_run
    aggregate = json.loads((out / "results.json").read_text())["aggregate"]
    assert aggregate["success_rate"] != aggregate["raw_success_rate"], "precondition: the two rates differ here"
    line = next(line for line in printed.splitlines() if "attack success rate" in line)
    rate = float(line.split("attack success rate ")[1].split("%")[0]) / 100
    assert rate == pytest.approx(aggregate["success_rate"], abs=5e-5)  # the print rounds to 0.01 %
    scalars = last_scalars(out / "attack_digits" / "version_0")
    logged = {tag: value for tag, value in scalars.items() if tag.endswith("/success_rate")}
    assert "train/success_rate" in logged
    for tag, value in logged.items():
        assert value == pytest.approx(aggregate["success_rate"], abs=1e-6), f"{tag} = {value} is not the printed rate"


def test_resume_with_another_sample_set_is_refused_in_one_line(tmp_path: Path) -> None:
    run_in_process(job_args(ATTACK, tmp_path, "--trainer.max_epochs=1", *QUIET))
    (ckpt,) = tmp_path.glob("attack_digits/version_0/checkpoints/last.ckpt")
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(ValueError, match="seed") as error:
        run_in_process(job_args(ATTACK, tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={ckpt}",
                                "--data.init_args.seed=1", *QUIET))
    assert "\n" not in str(error.value)
    assert (tmp_path / "results.json").read_bytes() == before, "the refused resume overwrote the run's results"
