"""A SIGTERM (a cluster preempting the job) stops ``fit`` at the end of its step with a checkpoint and exit code
143; resuming from that checkpoint gives the uninterrupted run's results.

Two levels: a tiny LightningModule in this process that sends itself SIGTERM in the first micro-batch of an
accumulated step (Lightning alone would stop right after that micro-batch and exit 0), and the shipped attack
and reward jobs started as a user starts them, sent SIGTERM from outside once they have saved a checkpoint,
and resumed with the command their exit line prints (as tests/test_reliability.py does with SIGKILL). Under DDP
a SIGTERM to rank 0 alone must stop both ranks at the same step (a rank left behind hangs the other).

Bit for bit by construction: the resumed run restores δ / the LoRA and the optimiser state exactly and then
runs the same operations on the same shapes in the same order as the uninterrupted one, one thread each.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from test_reliability import ATTACK, ENV, MAX_EPOCHS, QUIET, REWARD, ROOT, job_args, outputs, run_in_process
from torch.utils.data import DataLoader, TensorDataset

from lit_sdo.preemption import CHECKPOINT_NAME, EXIT_CODE, Preemption, resume_command

EPOCHS = 4
BATCHES = 4  # per epoch, two optimiser steps of two accumulated micro-batches


class Quadratic(L.LightningModule):
    """Adam on a quadratic; sends this process SIGTERM in batch ``kill_at`` = (epoch, batch index)."""

    def __init__(self, kill_at: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.kill_at = kill_at
        self.batches_run: list[tuple[int, int]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.batches_run.append((self.current_epoch, batch_idx))
        if (self.current_epoch, batch_idx) == self.kill_at:
            signal.raise_signal(signal.SIGTERM)
        (x,) = batch
        return ((x @ self.weight) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        x = torch.randn(2 * BATCHES, 3, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x), batch_size=2)


def fit(module: Quadratic, root: Path, ckpt_path: Path | None = None) -> None:
    trainer = L.Trainer(max_epochs=EPOCHS, accumulate_grad_batches=2, default_root_dir=root, logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Preemption(["fit", "--config", "job.yaml"])])
    trainer.fit(module, ckpt_path=ckpt_path)


def test_sigterm_mid_step_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = Quadratic(kill_at=(1, 0))
    with pytest.raises(SystemExit) as stop:
        fit(module, tmp_path / "stopped")
    assert stop.value.code == EXIT_CODE
    assert module.batches_run[-1] == (1, BATCHES - 1), "the epoch under way was not finished"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the SIGTERM handler outlived the run"
    ckpt = tmp_path / "stopped" / "checkpoints" / CHECKPOINT_NAME
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (2, BATCHES)  # two epochs of two optimiser steps each
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "SIGTERM" in line]
    assert line == (f"[lit_sdo] stopped by SIGTERM after epoch 2 of {EPOCHS} (optimiser step {BATCHES}); "
                    f"checkpoint {ckpt}; resume with: "
                    f"lit-sdo fit --config job.yaml --ckpt_path={ckpt}")

    resumed, straight = Quadratic(), Quadratic()
    fit(resumed, tmp_path / "resumed", ckpt_path=ckpt)
    fit(straight, tmp_path / "straight")
    assert resumed.batches_run[0] == (2, 0)
    assert torch.equal(resumed.weight, straight.weight)


def test_sigterm_in_the_last_step_lets_the_run_finish(tmp_path: Path) -> None:
    """A finished fit's checkpoint resumes to nothing (Lightning skips on_train_end): better to finish."""
    module = Quadratic(kill_at=(EPOCHS - 1, 0))
    fit(module, tmp_path)
    assert module.batches_run[-1] == (EPOCHS - 1, BATCHES - 1)
    assert not (tmp_path / "checkpoints" / CHECKPOINT_NAME).exists()


def test_the_resume_command_replaces_a_ckpt_path_given_before() -> None:
    given = ["fit", "--config", "a b.yaml", "--ckpt_path", "old.ckpt", "--ckpt_path=older.ckpt", "--x=1"]
    assert resume_command(given, Path("runs/new.ckpt")) == (
        "lit-sdo fit --config 'a b.yaml' --x=1 --ckpt_path=runs/new.ckpt")


def terminate_after_first_checkpoint(args: list[str], out: Path, timeout: float = 600) -> tuple[int, str]:
    """Start the CLI as a user would, SIGTERM its first process once a last.ckpt exists (as Kubernetes signals a
    container's first process); its exit code and output. A run still going ``timeout`` s later fails the test."""
    log = out.with_suffix(".log")
    with log.open("w") as sink:  # a session of its own: DDP ranks are cleaned up with it
        process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=ENV,
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if any(out.glob("*/version_*/checkpoints/last.ckpt")):
                os.kill(process.pid, signal.SIGTERM)
                try:
                    return process.wait(timeout=timeout), log.read_text()
                except subprocess.TimeoutExpired:
                    pytest.fail(f"still running {timeout} s after SIGTERM; log: {log.read_text()[-2000:]}")
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    pytest.fail(f"no checkpoint appeared while the run was going (exit code {process.returncode}); "
                f"log: {log.read_text()[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("job", [pytest.param(ATTACK, id="attack"), pytest.param(REWARD, id="reward")])
def test_a_terminated_job_resumes_with_its_printed_command_to_the_uninterrupted_results(
        job: tuple[str, list[str]], tmp_path: Path) -> None:
    epochs = f"--trainer.max_epochs={MAX_EPOCHS}"
    straight = tmp_path / "straight"
    run_in_process(job_args(job, straight, epochs, *QUIET))

    stopped = tmp_path / "stopped"
    code, log = terminate_after_first_checkpoint(job_args(job, stopped, epochs, *QUIET), stopped)
    assert code == EXIT_CODE, log[-2000:]
    (line,) = [line for line in log.splitlines() if "stopped by SIGTERM" in line]
    match = re.search(r"checkpoint (\S+); resume with: (lit-sdo fit .*)$", line)
    assert match, line
    ckpt = Path(match.group(1))
    assert ckpt.name == CHECKPOINT_NAME and ckpt.is_file()
    epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
    assert 0 < epoch < MAX_EPOCHS, f"stopped after step {epoch} of {MAX_EPOCHS}: nothing to resume"
    published = [name for name in ("results.json", "history.json") if (stopped / name).exists()]
    assert not published, f"a stopped run published {published}"

    run_in_process(shlex.split(match.group(2))[1:])
    expected, resumed = outputs(straight), outputs(stopped)
    assert resumed["records"] == expected["records"]
    assert resumed["tensors"].keys() == expected["tensors"].keys()
    for key, value in expected["tensors"].items():
        assert torch.equal(resumed["tensors"][key], value), f"{key} differs after SIGTERM + resume"


@pytest.mark.slow
def test_a_sigterm_to_rank_zero_stops_every_ddp_rank_at_the_same_step(tmp_path: Path) -> None:
    """Kubernetes signals only the container's first process: the other rank learns at the step's end."""
    two_ranks = ["--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"]
    code, log = terminate_after_first_checkpoint(
        job_args(ATTACK, tmp_path, f"--trainer.max_epochs={MAX_EPOCHS}", *QUIET, *two_ranks), tmp_path, timeout=180)
    assert code == EXIT_CODE, log[-2000:]
    assert len([line for line in log.splitlines() if "stopped by SIGTERM" in line]) == 1, "one line, from rank 0"
    (ckpt,) = tmp_path.glob(f"*/version_0/checkpoints/{CHECKPOINT_NAME}")
    assert 0 < torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] < MAX_EPOCHS
