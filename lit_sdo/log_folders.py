"""The loggers' folders: checked before a run starts, and what a failed start created removed again.

Lightning creates ``<save_dir>/<name>/version_N/`` when the run starts (the saved config, the first
event file). An unwritable ``save_dir`` then fails deep inside the logger with a bare ``[Errno 13]``
that does not say it is the log folder, and a start that fails later leaves an empty ``version_N/``
behind, so the next run becomes ``version_N+1``. :class:`LogFolderGuard` says which folder it is, and
after a failure removes only what did not exist before the run and holds no checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch import Trainer


@dataclass
class _Root:
    """One logger's root folder (``<save_dir>/<name>``) as it was before the run."""

    path: Path
    first_created: Path | None  # the topmost folder the run had to create (None: the root existed)
    entries: set[str] = field(default_factory=set)  # what the root held before the run


class LogFolderGuard:
    """Remembers the loggers' folders before a run; see the module docstring."""

    def __init__(self) -> None:
        self.roots: list[_Root] = []

    def prepare(self, trainer: Trainer) -> None:
        """Record each logger's root, create it, and check it takes files; any failure is one line."""
        for logger in trainer.loggers:
            save_dir = getattr(logger, "save_dir", None)
            if save_dir is None:
                continue
            path = Path(getattr(logger, "root_dir", None) or save_dir)
            root = _Root(path, first_missing(path), set(os.listdir(path)) if path.is_dir() else set())
            self.roots.append(root)
            try:
                path.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryFile(dir=path):
                    pass
            except OSError as err:
                raise OSError(f"cannot write the log folder {path} (the logger's save_dir {save_dir}): "
                              f"{err.strerror or err}; choose a writable --trainer.logger.init_args.save_dir"
                              ) from err

    def remove_failed_start(self, trainer: Trainer | None) -> None:
        """After a failure: remove the run's new version folder and the folders made for it, unless it trained."""
        if trainer is not None and trainer.global_step > 0:
            return  # a run that optimised something keeps its logs
        log_dirs = {Path(d) for d in (getattr(lg, "log_dir", None) for lg in (trainer.loggers if trainer else []))
                    if d is not None}
        for root in self.roots:
            for log_dir in log_dirs:
                new = log_dir.parent == root.path and log_dir.name not in root.entries
                if new and log_dir.is_dir() and not any(log_dir.rglob("*.ckpt")):
                    shutil.rmtree(log_dir, ignore_errors=True)
            if root.first_created is not None:
                remove_empty_up_to(root.path, root.first_created)


def first_missing(path: Path) -> Path | None:
    """The topmost ancestor of ``path`` (or ``path`` itself) that does not exist yet."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def remove_empty_up_to(path: Path, top: Path) -> None:
    """Remove ``path`` and its parents up to ``top`` while they are empty."""
    for folder in (path, *path.parents):
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return
