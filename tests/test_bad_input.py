"""Bad input through the CLI: one line (plus at most one hint line) that names the problem, exit code 2,
and nothing already written is lost.

Every case runs against configs/attack/digits.yaml with tiny overrides, next to an earlier run's log
folder (``attack_digits/version_0`` with a checkpoint) and results folder that must stay untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/attack/digits.yaml")
TINY = ["--data.init_args.per_class=1", "--trainer.max_epochs=1", "--model.init_args.sampler.num_steps=2",
        "--trainer.enable_progress_bar=false"]
HINT = "--help lists the options"


def earlier_run(tmp_path: Path) -> dict[Path, bytes]:
    """An earlier run's files (logs with a checkpoint, results); returns their contents to compare with."""
    files = {tmp_path / "logs/attack_digits/version_0/config.yaml": b"model: {}\n",
             tmp_path / "logs/attack_digits/version_0/checkpoints/last.ckpt": b"not a real checkpoint",
             tmp_path / "out/results.json": b'{"samples": []}\n'}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``lit-sdo ARGS`` in-process as the console runs it; returns its stderr lines after checking exit code 2."""
    monkeypatch.setattr("sys.argv", ["lit-sdo", *args])
    monkeypatch.delenv("LIT_SDO_DEBUG", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def assert_one_line(err: list[str], *words: str) -> None:
    """``lit-sdo: error: <one line>`` naming ``words``, then at most the hint line."""
    assert err and err[0].startswith("lit-sdo: error: "), err
    assert len(err) == 1 or (len(err) == 2 and HINT in err[1]), err
    for word in words:
        assert word in err[0], (word, err[0])


def attack(tmp_path: Path, *extra: str, config: str = CONFIG) -> list[str]:
    return ["fit", "--config", config, *TINY, f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
            f"--model.init_args.output_dir={tmp_path / 'out'}", *extra]


CASES = {  # id -> (arguments after the config and the tiny overrides, words the line must hold)
    "misspelt option": (["--model.init_args.epss=0.2"], ["model.init_args.epss", "did you mean eps"]),
    "bad value": (["--model.init_args.eps=abc"], ["model.init_args.eps", "expected a float", "'abc'"]),
    "abbreviated option": (["--trainer.max_epoch=2"], ["unknown option --trainer.max_epoch ", "max_epochs"]),
    "bad choice": (["--model.init_args.objective.init_args.loss=xx"],
                   ["objective.init_args.loss", "one of 'margin', 'ce'", "'xx'"]),
    "prefixed missing folder": (["--model.init_args.sampler.model=folder:/nonexistent"],
                                ["folder not found", "'folder:/nonexistent'"]),
    "missing folder": (["--model.init_args.sampler.model={tmp}/nowhere"], ["folder not found", "/nowhere"]),
    "unwritable log folder": (["--trainer.logger.init_args.save_dir=/proc/x"],
                              ["log folder /proc/x", "save_dir"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_option_is_one_line_and_keeps_what_was_written(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    extra, words = CASES[case]
    before = earlier_run(tmp_path)
    err = run_cli(attack(tmp_path, *(e.format(tmp=tmp_path) for e in extra)), monkeypatch, capsys)
    assert_one_line(err, *words)
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in (tmp_path / "logs/attack_digits").iterdir()) == ["version_0"]


def test_malformed_yaml_names_the_file_and_the_line(tmp_path: Path, monkeypatch, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("trainer:\n  max_epochs: [1\n")
    before = earlier_run(tmp_path)
    assert_one_line(run_cli(attack(tmp_path, config=str(config)), monkeypatch, capsys),
                    str(config), "not valid YAML", "line 2, column 15")
    assert {p: p.read_bytes() for p in before} == before


def test_missing_config_file_is_named(tmp_path: Path, monkeypatch, capsys) -> None:
    missing = tmp_path / "configs/attack/digit.yaml"
    assert_one_line(run_cli(attack(tmp_path, config=str(missing)), monkeypatch, capsys),
                    "config file not found", str(missing))


def test_failed_start_removes_its_new_version_folder_only(tmp_path: Path, monkeypatch, capsys) -> None:
    """The logger makes version_1/ (config, event file), then the output folder cannot be made."""
    before = earlier_run(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # no folder can be made below a file
    args = attack(tmp_path, f"--model.init_args.output_dir={blocker / 'out'}")
    assert_one_line(run_cli(args, monkeypatch, capsys), f"cannot create output folder {blocker / 'out'}")
    assert sorted(p.name for p in (tmp_path / "logs/attack_digits").iterdir()) == ["version_0"]
    assert {p: p.read_bytes() for p in before} == before


def test_failed_start_in_a_new_log_folder_leaves_no_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = attack(tmp_path, f"--trainer.logger.init_args.save_dir={tmp_path / 'new/logs'}",
                  f"--model.init_args.output_dir={blocker / 'out'}")
    assert_one_line(run_cli(args, monkeypatch, capsys), "cannot create output folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # new/logs/attack_digits/version_0 removed


def test_checkpoint_of_another_model_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """Lightning merges the checkpoint's hyper-parameters into the model's arguments before instantiating."""
    import torch

    config = yaml.safe_load(Path(CONFIG).read_text())
    ckpt = tmp_path / "other.ckpt"
    torch.save({"hyper_parameters": {"_class_path": config["model"]["class_path"], "epss": 0.2}}, ckpt)
    before = earlier_run(tmp_path)
    err = run_cli(attack(tmp_path, f"--ckpt_path={ckpt}"), monkeypatch, capsys)
    assert_one_line(err, "unexpected keyword argument 'epss'")
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize(("args", "words"), [
    ([], ["no command given", "fit, validate, test, predict, lora-grid, train-text-image"]),
    (["fitt", "--config", CONFIG], ["unknown command 'fitt'", "fit, validate, test, predict, lora-grid"]),
    (["lora-grid", "--seed=1"], ["unknown option --seed ", "did you mean --seeds"]),
    (["lora-grid", "--lora=runs/a"], ["lora: expected a list"]),
    (["lora-grid", "--model=./nowhere"], ["folder not found", "'./nowhere'"]),
    (["lora-grid", "--generator=embedded:digits-ddpm"], ["unknown option --generator"]),  # the spec's name: model
    (["export-diffusion", "--checkpoint=nowhere.ckpt", "--folder=x"], ["checkpoint nowhere.ckpt does not exist"]),
])
def test_jobs_and_commands_report_bad_input_in_one_line(args: list[str], words: list[str], monkeypatch,
                                                        capsys) -> None:
    assert_one_line(run_cli(args, monkeypatch, capsys), *words)


def test_debug_variable_shows_the_exception(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr("sys.argv", ["lit-sdo", *attack(tmp_path, "--model.init_args.epss=0.2")])
    monkeypatch.setenv("LIT_SDO_DEBUG", "1")
    with pytest.raises(cli.ConfigError, match="epss") as err:
        cli.main()
    assert "is not accepted" in str(err.value.__cause__)  # jsonargparse's own report stays reachable


@pytest.mark.slow
def test_console_prints_one_line(tmp_path: Path) -> None:
    """``python cli.py`` as a user runs it: one line and the hint, exit code 2 (LIT_SDO_DEBUG: in-process above)."""
    command = [sys.executable, str(ROOT / "cli.py"), *attack(tmp_path, "--model.init_args.eps=abc")]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("LIT_SDO_DEBUG", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert_one_line(done.stderr.strip().splitlines(), "model.init_args.eps: expected a float, got 'abc'")
