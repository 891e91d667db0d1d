"""Name resolution: ``embedded:<name>``, a local folder, or a Hugging Face hub id found in the local cache.

Nothing is ever downloaded: hub ids are looked up with ``local_files_only=True``. Every failure is one
line that names the model and says how to provide it: a name that cannot be a hub id (``/x``, ``./x``,
``a/b/c``, ``folder:x``) is a path, so a missing one is "folder not found", never a download hint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)

EMBEDDED_PREFIX = "embedded:"
# Shipped weights live in the repository's top-level data/models/ (override: LIT_SDO_MODELS).
EMBEDDED_ROOT = Path(os.environ.get("LIT_SDO_MODELS", Path(__file__).resolve().parents[2] / "data" / "models"))


def embedded_names() -> list[str]:
    """Names of the shipped models (folders of ``EMBEDDED_ROOT``)."""
    if not EMBEDDED_ROOT.is_dir():
        return []
    return sorted(p.name for p in EMBEDDED_ROOT.iterdir() if p.is_dir())


def as_module(model: M | str, load: Callable[[str], M], kind: type[nn.Module] = nn.Module) -> M:
    """``model`` itself when it is built, else ``load(model)``; frozen and in eval mode either way.

    Objectives take a built module (tests inject tiny ones, Python users their own) or a name that the
    loader resolves (YAML); this is the one place that tells the two apart. ``kind`` is the class a built
    module must be (e.g. :class:`~lit_sdo.models.Classifier`, which carries its input conventions).
    """
    if isinstance(model, str):
        model = load(model)
    elif not isinstance(model, kind):
        raise TypeError(f"got a {type(model).__name__} where a model name or a built {kind.__name__} is expected")
    return model.eval().requires_grad_(False)


def not_available(name: str, what: str) -> FileNotFoundError:
    """The one-line error for a model that is not on this machine."""
    return FileNotFoundError(
        f"{what} {name!r} is not available locally (no such folder, and not in the Hugging Face cache; nothing is "
        f"downloaded here): download it on a machine with internet access (e.g. `hf download {name} --local-dir "
        f"DIR`), copy DIR here and pass the folder path instead of the name"
    )


def resolve_folder(name: str, what: str = "model") -> Path:
    """The local folder holding model ``name``: embedded, a path, or a hub id already in the HF cache.
    A local folder's files are checked against its MANIFEST.json, when it has one."""
    from lit_sdo.models.manifest import check_manifest  # here: `python -m lit_sdo.models.manifest` runs it first

    if name.startswith(EMBEDDED_PREFIX):
        short = name[len(EMBEDDED_PREFIX):]
        folder = EMBEDDED_ROOT / short
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} {name!r} is not shipped; embedded models are: "
                                    f"{', '.join('embedded:' + n for n in embedded_names()) or 'none found'} "
                                    f"(in {EMBEDDED_ROOT})")
        check_manifest(folder)
        return folder
    path = Path(name).expanduser()
    if path.is_dir():
        check_manifest(path)
        return path
    if path.is_file():
        raise FileNotFoundError(f"{what} {name!r} is a file, not a folder: pass the folder that holds it")
    if not is_hub_id(name):
        raise missing_folder(name, what)
    try:
        return _cached_snapshot(name, what)
    except FileNotFoundError:
        if path.parent != Path(".") and path.parent.is_dir():  # 'runs/x' next to an existing runs/: a path
            raise missing_folder(name, what) from None
        raise


def is_hub_id(name: str) -> bool:
    """Whether ``name`` can be a Hugging Face repository id (``name`` or ``org/name``); otherwise it is a path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def missing_folder(name: str, what: str) -> FileNotFoundError:
    """The one-line error for a path-like name with no folder behind it (never a download hint: it is no hub id)."""
    return FileNotFoundError(f"{what} folder not found: {name!r} does not exist; pass an existing folder, "
                             f"{EMBEDDED_PREFIX}<name> or a hub id such as org/name")


def _cached_snapshot(repo_id: str, what: str) -> Path:
    """A hub repository from the local cache only; any hub error becomes :func:`not_available`."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - offline, missing, malformed id: the user needs the same one line
        raise not_available(repo_id, what) from None
