"""A model folder's MANIFEST.json: the sha256 of every file beside it and how the model was made.

One format for every model folder (the shipped ones under data/models/ and every exported one):
``{"sha256": {file name: hex digest}, ...}`` plus free fields (training command, seed, metrics). The
loader checks the digests, so a changed or half-copied weight file is one line instead of a model that
silently differs. Folders written with the earlier ``MANIFEST`` file (digests under ``files``) are
refused with the command that converts them, since loading never writes into a shipped folder:

    python -m lit_sdo.models.manifest data/models/digits-resnet [more folders]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from lit_sdo.io import write_json

MANIFEST_FILE = "MANIFEST.json"
OLD_MANIFEST_FILE = "MANIFEST"  # the earlier format: digests under "files"
_checked: dict[tuple[str, tuple[tuple[str, int, int], ...]], bool] = {}  # folder + file stats -> verified


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` except the manifests, by name."""
    return {p.name: sha256_of(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in (MANIFEST_FILE, OLD_MANIFEST_FILE)}


def write_manifest(folder: str | Path, record: dict[str, Any]) -> Path:
    """Write ``folder``/MANIFEST.json: the digests of the files now in it, then ``record``'s fields."""
    folder = Path(folder)
    if "sha256" in record:
        raise ValueError("a manifest record must not carry its own 'sha256' field: the digests are computed here")
    return write_json(folder / MANIFEST_FILE, {"sha256": digests(folder), **record})


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's manifest (None when it has none); an earlier-format one is a one-line error."""
    folder = Path(folder)
    if (folder / MANIFEST_FILE).is_file():
        return json.loads((folder / MANIFEST_FILE).read_text())
    if (folder / OLD_MANIFEST_FILE).is_file():
        raise ValueError(f"{folder} has a {OLD_MANIFEST_FILE} in the earlier format; convert it to {MANIFEST_FILE} "
                         f"with: python -m lit_sdo.models.manifest {folder}")
    return None


def check_manifest(folder: str | Path) -> None:
    """Raise a one-line ValueError when a file differs from (or is missing against) the folder's manifest.
    Verified once per process and state of the files."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return
    state = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())
    if _checked.get((str(folder.resolve()), state)):
        return
    for name, digest in manifest["sha256"].items():
        path = folder / name
        if not path.is_file():
            raise ValueError(f"{path} is listed in {folder / MANIFEST_FILE} but missing; copy the whole folder")
        if sha256_of(path) != digest:
            raise ValueError(f"{path} does not match its sha256 in {folder / MANIFEST_FILE} (changed or incompletely "
                             "copied); restore it, or re-export the model to write a new manifest")
    _checked[(str(folder.resolve()), state)] = True


def convert(folder: str | Path) -> Path:
    """Rewrite an earlier-format ``MANIFEST`` as MANIFEST.json: the digests are recomputed from the files and
    must equal the recorded ones (otherwise the files changed since, and nothing is written)."""
    folder = Path(folder)
    old_path = folder / OLD_MANIFEST_FILE
    if not old_path.is_file():
        raise FileNotFoundError(f"{old_path} does not exist: nothing to convert")
    old = json.loads(old_path.read_text())
    recorded, now = old.pop("files"), digests(folder)
    if recorded != now:
        changed = sorted(k for k in recorded.keys() | now.keys() if recorded.get(k) != now.get(k))
        raise ValueError(f"{folder}: {', '.join(changed)} differ from the sha256 in its {OLD_MANIFEST_FILE}; "
                         "re-export the model instead of converting")
    written = write_manifest(folder, old)
    old_path.unlink()
    return written


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m lit_sdo.models.manifest FOLDER [FOLDER ...]")
    for folder in argv:
        print(f"[lit_sdo] wrote {convert(folder)}")  # noqa: T201 - the tool's one line per folder


if __name__ == "__main__":
    main(sys.argv[1:])
