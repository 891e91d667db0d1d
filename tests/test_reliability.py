"""The shipped jobs run as a user runs them: killed and resumed, across two DDP ranks, their records read back.

Black-box on purpose: every check goes through ``cli.py`` (a real subprocess where a process must die
or several ranks must meet, the in-process entry point ``cli.main`` elsewhere, to pay the imports once)
and reads only what a run leaves on disk: results.json, delta.safetensors, the LoRA, history.json, the
TensorBoard events and last.ckpt. The configs are the shipped ones with size-reducing overrides only.
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
ATTACK = ("configs/attack/digits.yaml", ["--data.init_args.per_class=1", "--model.init_args.num_steps=4"])
STYLE = ("configs/style/digits.yaml", ["--data.init_args.per_class=1", "--model.init_args.num_steps=4"])
REWARD = ("configs/reward/digits.yaml", ["--model.init_args.num_steps=4", "--data.init_args.samples_per_step=2",
                                         "--data.init_args.batch_size=1", "--model.init_args.grid_samples=2",
                                         "--model.init_args.grid_every_n_steps=2"])
NOT_RESUMABLE = ("latent jobs return no optimizer, so global_step stays 0 and ModelCheckpoint writes last.ckpt "
                 "once, at the end: a killed run leaves nothing to resume from")


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
    pytest.param("attack", ATTACK, marks=pytest.mark.xfail(strict=True, reason=NOT_RESUMABLE)),
    pytest.param("style", STYLE, marks=pytest.mark.xfail(strict=True, reason=NOT_RESUMABLE)),
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


@pytest.mark.xfail(strict=True, reason="delta.safetensors 'succeeded' counts samples the classifier got wrong before "
                                       "the attack; results.json 'success' does not")
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


@pytest.mark.xfail(strict=True, reason="train/success_rate (progress bar, TensorBoard) is the raw rate over all "
                                       "samples; the printed rate is over clean-correct samples")
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


@pytest.mark.xfail(strict=True, reason="a checkpoint of the same sample count but other (label, seed) pairs is "
                                       "accepted without a word")
def test_resume_with_another_sample_set_is_refused_in_one_line(tmp_path: Path) -> None:
    run_in_process(job_args(ATTACK, tmp_path, "--trainer.max_epochs=1", *QUIET))
    (ckpt,) = tmp_path.glob("attack_digits/version_0/checkpoints/last.ckpt")
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(ValueError, match="seed") as error:
        run_in_process(job_args(ATTACK, tmp_path, "--trainer.max_epochs=2", f"--ckpt_path={ckpt}",
                                "--data.init_args.seed=1", *QUIET))
    assert "\n" not in str(error.value)
    assert (tmp_path / "results.json").read_bytes() == before, "the refused resume overwrote the run's results"


# ----- every shipped task config on two DDP ranks, default output paths ----------------------------------------
DDP_EPOCHS = "--trainer.max_epochs=2"
FEW_LABELS = ["--data.init_args.num_classes=2", "--data.init_args.per_class=2"]  # 4 (label, seed) pairs
REWARD_SIZE = ["--model.init_args.num_steps=4", "--data.init_args.samples_per_step=4", "--data.init_args.batch_size=2",
               "--model.init_args.grid_samples=2", "--model.init_args.grid_every_n_steps=1"]
# name: (config, size-reducing overrides, extra overrides on one device, extra overrides on two ranks).
# Reward steps are samples_per_step = batch_size × accumulate_grad_batches × devices, as the configs say.
DDP_JOBS = {
    "attack": ("configs/attack/digits.yaml", ["--data.init_args.per_class=1", "--model.init_args.num_steps=4"], [], []),
    "edit": ("configs/edit/digits.yaml", ["--data.init_args.num_samples=4", "--model.init_args.num_steps=4"], [], []),
    "style": ("configs/style/digits.yaml", [*FEW_LABELS, "--model.init_args.num_steps=4"], [], []),
    "aesthetic": ("configs/aesthetic/digits.yaml", [*FEW_LABELS, "--model.init_args.num_steps=10"], [], []),
    "reward": ("configs/reward/digits.yaml", REWARD_SIZE, ["--trainer.accumulate_grad_batches=2"],
               ["--trainer.accumulate_grad_batches=1"]),
    "reward_class": ("configs/reward/digits_class.yaml", REWARD_SIZE, ["--trainer.accumulate_grad_batches=2"],
                     ["--trainer.accumulate_grad_batches=1"]),
}
TWO_RANKS = ["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"]
DDP_HANGS = ("the output folder is resolved on rank 0 only (setup's check, and again when results are written) and "
             "the default one comes from trainer.log_dir, a collective: rank 0 waits for a broadcast the other rank "
             "never joins, and fails once that rank has left")

# Each rank runs every job in turn, in one process (imports paid once per rank): the processes are started
# as torchrun would start them, so Lightning's launcher does not start them again. Lightning's own
# launcher (`cli.py fit ... --trainer.devices=2`) is exercised by tests/test_cli_attack.py.
RANK_DRIVER = """
import json, os, sys, traceback
from pathlib import Path
sys.path.insert(0, os.environ["LIT_SDO_ROOT"])
import cli
jobs, ports, report = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
for (name, args), port in zip(jobs, ports):
    os.environ["MASTER_PORT"] = str(port)
    try:
        cli.main(args)
        status = "ok"
    except BaseException as err:
        status = "".join(traceback.format_exception(err))[-3000:]
    (report / f"{name}.rank{os.environ['LOCAL_RANK']}").write_text(status)
"""


def free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cpu_ticks(pids: list[int]) -> int:
    """User + system CPU ticks of the live processes among ``pids``."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total


def run_two_ranks(jobs: list[tuple[str, list[str]]], cwd: Path, window_s: float = 30, timeout: float = 900) -> str:
    """Run ``jobs`` on two ranks; kill both once they used under 1 % of a core over ``window_s`` (a hang: ranks
    blocked in a collective only wake for keep-alives, about one tick in 5 s). Returns the ranks' logs."""
    report = cwd / "report"
    report.mkdir(parents=True)
    env = ENV | {"LIT_SDO_ROOT": str(ROOT), "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2", "NODE_RANK": "0"}
    argv = [json.dumps(jobs), json.dumps(free_ports(len(jobs))), str(report)]
    logs = [cwd / f"rank{rank}.log" for rank in range(2)]
    processes = []
    for rank, log in enumerate(logs):
        with log.open("w") as sink:
            processes.append(subprocess.Popen([sys.executable, "-c", RANK_DRIVER, *argv], cwd=cwd, stdout=sink,
                                              stderr=subprocess.STDOUT,
                                              env=env | {"RANK": str(rank), "LOCAL_RANK": str(rank)}))
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    history: list[tuple[float, int]] = []  # (time, CPU ticks of both ranks)
    try:
        while any(p.poll() is None for p in processes):
            time.sleep(1)
            now = time.monotonic()
            history.append((now, cpu_ticks([p.pid for p in processes])))
            old = [ticks for t, ticks in history if t <= now - window_s]
            idle = bool(old) and history[-1][1] - old[-1] < 0.01 * window_s * ticks_per_s
            if idle or now - history[0][0] > timeout:
                (report / "stalled").write_text(f"under 1 % CPU for {window_s:.0f} s after "
                                                f"{now - history[0][0]:.0f} s")
                break
    finally:
        for p in processes:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    return "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in logs)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every job of DDP_JOBS on one device (in this process) and on two ranks, each in its own empty folder."""
    root = tmp_path_factory.mktemp("ddp")
    for name, (config, size, one, _) in DDP_JOBS.items():
        (root / "one" / name).mkdir(parents=True)
        with contextlib.chdir(root / "one" / name):
            run_in_process(["fit", "--config", str(ROOT / config), *size, DDP_EPOCHS, *one, *QUIET])
    jobs = [(name, ["fit", "--config", str(ROOT / config), *size, DDP_EPOCHS, *two, *TWO_RANKS, *QUIET])
            for name, (config, size, _, two) in DDP_JOBS.items()]
    logs = run_two_ranks(jobs, root / "two")
    return {"root": root, "logs": logs}


def default_folder(base: Path, config: str) -> Path:
    """Where a run of ``config`` started in ``base`` writes by default: runs/<logger name>/version_0."""
    import yaml

    logger = yaml.safe_load((ROOT / config).read_text())["trainer"]["logger"]["init_args"]
    return base / logger["save_dir"] / logger["name"] / "version_0"


def assert_records_close(two: Any, one: Any, tol: float, where: str = "") -> None:
    """Equal structure, equal integers / flags / text, floats within ``tol`` (relative and absolute)."""
    if isinstance(one, dict):
        assert isinstance(two, dict) and two.keys() == one.keys(), where
        for key in one:
            assert_records_close(two[key], one[key], tol, f"{where}.{key}")
    elif isinstance(one, list):
        assert isinstance(two, list) and len(two) == len(one), where
        for i, (a, b) in enumerate(zip(two, one, strict=True)):
            assert_records_close(a, b, tol, f"{where}[{i}]")
    elif isinstance(one, float):
        assert two == pytest.approx(one, rel=tol, abs=tol), where
    else:
        assert two == one, where


DDP_TOLERANCE = 1e-5  # float32 rounding of other batch sizes per rank; measured: 5e-7 relative, 2.2e-6 on δ


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=DDP_HANGS))
                                  for name in DDP_JOBS])
def test_shipped_config_on_two_ddp_ranks_equals_one_device(name: str, ddp_runs: dict[str, Any]) -> None:
    root = ddp_runs["root"]
    report = root / "two" / "report"
    status = [(report / f"{name}.rank{rank}").read_text() if (report / f"{name}.rank{rank}").is_file() else None
              for rank in range(2)]
    stalled = (report / "stalled").read_text() if (report / "stalled").is_file() else ""
    assert status == ["ok", "ok"], f"two ranks: {status} {stalled}\n{ddp_runs['logs']}"
    config = DDP_JOBS[name][0]
    one, two = default_folder(root / "one" / name, config), default_folder(root / "two", config)
    expected, got = outputs(one), outputs(two)
    assert_records_close(got["records"], expected["records"], DDP_TOLERANCE, name)
    assert got["tensors"].keys() == expected["tensors"].keys()
    for key, value in expected["tensors"].items():
        if value.is_floating_point():
            torch.testing.assert_close(got["tensors"][key], value, rtol=DDP_TOLERANCE, atol=DDP_TOLERANCE)
        else:
            assert torch.equal(got["tensors"][key], value), key
