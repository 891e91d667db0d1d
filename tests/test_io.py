"""Result writers: atomic (a failed write leaves the old file and no temporary), earlier results kept,
tensors round-trip, weights files read safely, markdown sections replaced in place.

Bit for bit: tensors read back from their file (a copy, no arithmetic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_sdo.io import (
    atomic_path,
    keep_previous,
    read_tensors,
    read_weights,
    writable_folder,
    write_json,
    write_markdown_section,
    write_tensors,
)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_json(target, {"run": 1})
    with pytest.raises(TypeError, match="cannot write object to JSON"):
        write_json(target, {"run": 2, "bad": object()})
    assert json.loads(target.read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with pytest.raises(RuntimeError, match="killed"), atomic_path(tmp_path / "new.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_atomic_path_renames_onto_the_target_only_when_done(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "sub" / "file.txt") as tmp:
        assert tmp.parent == tmp_path / "sub" and tmp.name != "file.txt"
        tmp.write_text("done")
        assert not (tmp_path / "sub" / "file.txt").exists()
    assert (tmp_path / "sub" / "file.txt").read_text() == "done"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["file.txt"]


def test_keep_previous_renames_to_the_first_free_number(tmp_path: Path) -> None:
    target = tmp_path / "grid.png"
    assert keep_previous(target) is None  # nothing to keep
    target.write_text("first")
    assert keep_previous(target) == tmp_path / "grid.png.previous-1"
    target.write_text("second")
    assert keep_previous(target) == tmp_path / "grid.png.previous-2"
    assert not target.exists()
    assert (tmp_path / "grid.png.previous-1").read_text() == "first"
    assert (tmp_path / "grid.png.previous-2").read_text() == "second"


def test_tensors_round_trip_exactly(tmp_path: Path) -> None:
    tensors = {"delta": torch.randn(3, 1, 4, 4), "succeeded": torch.tensor([True, False, True]),
               "steps": torch.arange(3), "view": torch.randn(4, 6).t()}  # a non-contiguous view is copied
    write_tensors(tmp_path / "delta.safetensors", tensors, metadata={"eps": "0.1"})
    back = read_tensors(tmp_path / "delta.safetensors")
    assert back.keys() == tensors.keys()
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype
        torch.testing.assert_close(back[name], value, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="tensor file .*missing.safetensors does not exist"):
        read_tensors(tmp_path / "missing.safetensors")


def test_read_weights_accepts_state_dicts_only(tmp_path: Path) -> None:
    state = {"w": torch.randn(2, 2)}
    torch.save(state, tmp_path / "w.pt")
    torch.testing.assert_close(read_weights(tmp_path / "w.pt")["w"], state["w"])
    write_tensors(tmp_path / "w.safetensors", state)
    torch.testing.assert_close(read_weights(tmp_path / "w.safetensors")["w"], state["w"])
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt holds a list, not a state dict"):
        read_weights(tmp_path / "list.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"^\S*notes.pt is not a weights file torch can read safely[^\n]*$"):
        read_weights(tmp_path / "notes.pt")


def test_markdown_sections_are_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    write_markdown_section(path, "A", "one")
    write_markdown_section(path, "B", "two")
    write_markdown_section(path, "A", "uno\nmore")
    assert path.read_text() == "# Results\n\n## A\n\nuno\nmore\n\n## B\n\ntwo\n"


def test_an_unwritable_output_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"^cannot create output folder .*a-file/out: .*; choose a writable path$"):
        writable_folder(blocker / "out")
    assert writable_folder(tmp_path / "x" / "y").is_dir()
