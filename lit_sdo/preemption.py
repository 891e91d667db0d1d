"""A preempted ``fit`` (SIGTERM from SLURM or Kubernetes) stops at the end of its optimisation step with a
checkpoint, and the process exits non-zero with the command that resumes it.

Lightning 2.6 already catches SIGTERM: its signal connector sets ``trainer.received_sigterm`` and the loops raise
``SIGTERMException`` at the next batch end (after the epoch-end hooks and checkpoints when the signal came during
an epoch's last batch). For a cluster job three things are missing: a stop between two micro-batches of an
accumulated step loses that step (what was accumulated is in no checkpoint); nothing is saved unless a
ModelCheckpoint happened to save there; and ``SIGTERMException`` is a ``SystemExit`` without a code, so the
process exits 0 and the scheduler takes the job for finished. :class:`Preemption` holds the signal back from
Lightning until the end of the epoch (one optimisation step of every sample in each lit_sdo job), raises
Lightning's flag there, saves a checkpoint when Lightning's exception comes, and gives it exit code 143.
"""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import lightning.pytorch as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
CHECKPOINT_NAME = "preempted.ckpt"


class Preemption(L.Callback):
    """Stop ``fit`` on SIGTERM at the end of the current epoch, save ``preempted.ckpt`` and exit with code 143.

    ``command`` is the run's ``lit-sdo`` arguments: the exit line repeats them with ``--ckpt_path``. A SIGTERM
    during the last epoch lets the run finish (a checkpoint of a finished fit resumes to nothing: Lightning
    skips ``on_train_end``, where the results are written). Under DDP any rank's signal stops every rank at the
    same epoch end (one all-reduce per epoch).
    """

    def __init__(self, command: Sequence[str] = ()) -> None:
        self.command = list(command)
        self._requested = False
        self._holding = False  # our handler stands in for Lightning's
        self._handed_over = False  # Lightning's flag was raised by us, at the end of an epoch

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Lightning installs its SIGTERM handler right before the loops start: take its place for the run."""
        if threading.current_thread() is threading.main_thread():  # where Lightning installs its own
            signal.signal(signal.SIGTERM, self._hold)  # Lightning's teardown puts back what was there before it
            self._holding = True

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self._requested = True

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self._holding or ends_after_this_epoch(trainer):
            return
        if trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            # Lightning's own flag, on every rank at once: its fit loop raises SIGTERMException once this
            # epoch's hooks (the module's, the checkpoints') have run. Its handler would also broadcast and
            # signal the launcher's children, collectives that only match if each rank enters it exactly once.
            trainer._signal_connector.received_sigterm = True
            self._handed_over = True

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        from lit_sdo.callbacks import announce  # here: it imports every objective, which `lit-sdo --help` does not need

        exception.code = EXIT_CODE  # Lightning re-raises this SystemExit: the process exits with it
        if self._handed_over:
            path = checkpoint_folder(trainer) / CHECKPOINT_NAME
            trainer.save_checkpoint(path)  # every rank: a collective under DDP
            announce(f"stopped by SIGTERM after {progress(trainer)}; checkpoint {path}; "
                     f"resume with: {resume_command(self.command, path)}")
        else:  # Lightning stopped on its own: during evaluation, or before this callback took the signal
            newest = getattr(trainer.checkpoint_callback, "last_model_path", "")
            announce("stopped by SIGTERM before the end of a step; "
                     + (f"newest checkpoint {newest}; resume with: {resume_command(self.command, Path(newest))}"
                        if newest else "no checkpoint: run the command again"))


def ends_after_this_epoch(trainer: L.Trainer) -> bool:
    """Whether fit ends with the epoch now ending anyway: its epoch or step budget is spent, or it was stopped."""
    max_epochs = trainer.max_epochs
    last_epoch = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
    last_step = trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps
    return last_epoch or last_step or trainer.should_stop


def checkpoint_folder(trainer: L.Trainer) -> Path:
    """The ModelCheckpoint's folder, else ``checkpoints/`` in the logger's folder (as Lightning's default one)."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    return Path(dirpath) if dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


def progress(trainer: L.Trainer) -> str:
    """Where a stopped run is: its epochs (a latent job's epoch is one optimisation step of every sample), and the
    optimiser steps where an epoch holds several (a training job's)."""
    budget = f" of {trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
    steps = f" (optimiser step {trainer.global_step})" if trainer.global_step > trainer.current_epoch else ""
    return f"epoch {trainer.current_epoch}{budget}{steps}"


def resume_command(command: Sequence[str], checkpoint: Path) -> str:
    """``lit-sdo <command>`` with ``--ckpt_path`` set to ``checkpoint`` (replacing one given before)."""
    args, skip = [], False
    for arg in command:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            args.append(arg)
    return shlex.join(["lit-sdo", *args, f"--ckpt_path={checkpoint}"])
