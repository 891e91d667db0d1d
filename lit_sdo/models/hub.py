"""Name resolution: ``embedded:<name>``, a local folder, or a Hugging Face hub id found in the local cache.

Nothing is ever downloaded: hub ids are looked up with ``local_files_only=True``. Every failure is one
line that names the model, says it is not available locally and how to provide it.
"""

from __future__ import annotations

import os
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
# Shipped weights live in the repository's top-level data/models/ (override: LIT_SDO_MODELS).
EMBEDDED_ROOT = Path(os.environ.get("LIT_SDO_MODELS", Path(__file__).resolve().parents[2] / "data" / "models"))


def embedded_names() -> list[str]:
    """Names of the shipped models (folders of ``EMBEDDED_ROOT``)."""
    if not EMBEDDED_ROOT.is_dir():
        return []
    return sorted(p.name for p in EMBEDDED_ROOT.iterdir() if p.is_dir())


def not_available(name: str, what: str) -> FileNotFoundError:
    """The one-line error for a model that is not on this machine."""
    return FileNotFoundError(
        f"{what} {name!r} is not available locally (no such folder, and not in the Hugging Face cache; nothing is "
        f"downloaded here): download it on a machine with internet access (e.g. `hf download {name} --local-dir "
        f"DIR`), copy DIR here and pass the folder path instead of the name"
    )


def resolve_folder(name: str, what: str = "model") -> Path:
    """The local folder holding model ``name``: embedded, a path, or a hub id already in the HF cache."""
    if name.startswith(EMBEDDED_PREFIX):
        short = name[len(EMBEDDED_PREFIX):]
        folder = EMBEDDED_ROOT / short
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} {name!r} is not shipped; embedded models are: "
                                    f"{', '.join('embedded:' + n for n in embedded_names()) or 'none found'} "
                                    f"(in {EMBEDDED_ROOT})")
        return folder
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise FileNotFoundError(f"{what} folder {name!r} does not exist; pass an existing folder or a hub id")
    return _cached_snapshot(name, what)


def _cached_snapshot(repo_id: str, what: str) -> Path:
    """A hub repository from the local cache only; any hub error becomes :func:`not_available`."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - offline, missing, malformed id: the user needs the same one line
        raise not_available(repo_id, what) from None
