"""Build full-size stand-ins of the paper's checkpoints (:mod:`lit_sdo.models.standins`) into a cache folder, in
this process: ``python benchmarks/real_scale_models.py CACHE NAME ...`` (one thread). The stand-in CLIP tokenizer
learns its merges from the repository's own text (its prompt lists, README and docs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_sdo.models.standins import StandinCache  # noqa: E402

CORPUS_FILES = ("data/prompts/animals45.txt", "README.md", "docs")


def repository_texts() -> tuple[str, ...]:
    """The text of the shipped prompt lists, README and docs: the corpus of the stand-in tokenizer's merges."""
    texts = []
    for name in CORPUS_FILES:
        path = ROOT / name
        files = sorted(path.rglob("*.md")) if path.is_dir() else [path]
        texts += [f.read_text(errors="ignore") for f in files if f.is_file()]
    return tuple(texts)


def main(argv: list[str] | None = None) -> None:
    """``CACHE NAME ...``: build each named stand-in into the cache."""
    cache, *names = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    standins = StandinCache(Path(cache), repository_texts())
    for name in names:
        print(f"built {standins.build(name)}", flush=True)


if __name__ == "__main__":
    main()
