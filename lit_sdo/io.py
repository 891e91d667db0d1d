"""Result writers: every file the project writes goes through here, atomically.

A run killed mid-write must never leave a half-written results.json or weights file behind: each
writer writes to a temporary file in the target folder, then renames it over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def writable_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and check it is writable; one-line ``OSError`` saying what to do otherwise.

    Jobs call it when they start, so a bad output path stops the run before any work is done.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create output folder {folder}: {err.strerror}; choose a writable path") from None
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"output folder {folder} is not writable; choose a writable path")
    return folder


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it."""
    target = Path(path)
    writable_folder(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def keep_previous(path: str | os.PathLike[str]) -> Path | None:
    """Rename an existing ``path`` to ``<path>.previous-<n>`` (the first free n) so a new run never silently
    replaces an earlier run's results; returns the new name, or None when there was nothing to keep."""
    path = Path(path)
    if not path.exists():
        return None
    n = 1
    while path.with_name(f"{path.name}.previous-{n}").exists():
        n += 1
    kept = path.with_name(f"{path.name}.previous-{n}")
    os.replace(path, kept)
    return kept


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def write_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors, atomically (contiguous CPU copies)."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)
    return Path(path)


def read_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file with a one-line error when it is missing."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"tensor file {path} does not exist")
    return load_file(str(path))


def read_weights(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A user's weights file: ``.safetensors``, or a ``.pt``/``.pth``/``.bin`` torch file loaded with
    ``weights_only`` (no code runs); anything else is a one-line error naming the file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors of many kinds: the file is not a weights file
        raise ValueError(f"{path} is not a weights file torch can read safely ({type(err).__name__}); pass a "
                         ".safetensors or a .pt/.pth state dict") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_markdown_section(path: str | os.PathLike[str], heading: str, body: str) -> Path:
    """Replace (or append) the ``## heading`` section of a markdown file, atomically.

    Benchmarks each own one section of benchmarks/RESULTS.md and rewrite only that section.
    """
    target = Path(path)
    lines = target.read_text().splitlines() if target.exists() else ["# Results", ""]
    title = f"## {heading}"
    new_section = [title, "", *body.strip().splitlines(), ""]
    if title in lines:
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new_section
    else:
        lines += ["", *new_section] if lines and lines[-1] != "" else new_section
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n")
    return target
