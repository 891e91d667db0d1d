"""Every YAML config loads against the CLI, so configs cannot go stale.

Configs of real checkpoints (hub ids) cannot load here: they must fail with the one-line
'not available locally' error that says how to get the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "trainer")


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_instantiates_or_names_the_missing_weights(config: Path, tmp_path: Path) -> None:
    args = ["--config", str(config), f"--trainer.default_root_dir={tmp_path}"]
    try:
        built = cli.build_cli(args, run=False)
    except FileNotFoundError as err:
        message = str(err)
        assert "\n" not in message
        assert "not available locally" in message or "is not shipped" in message, message
        return
    assert built.model is not None


def test_cli_reports_bad_input_in_one_line(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["lit-sdo", "fit", "--config", str(ROOT / "configs/attack/imagenet_dit.yaml")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    # the objective (an init argument) is built before the task loads its generator: its classifier is named first
    assert len(err) == 1 and err[0].startswith("lit-sdo: error: classifier 'torchvision:resnet50' is not available "
                                               "locally")


def test_resume_says_when_the_checkpoints_model_arguments_replace_the_given_ones(tmp_path: Path) -> None:
    """Lightning resumes with the checkpoint's hyper-parameters; an argument changed for the resume is named."""
    common = ["--config", str(ROOT / "configs/attack/digits.yaml"), "--data.init_args.per_class=1",
              "--model.init_args.sampler.num_steps=2", "--trainer.enable_progress_bar=false",
              f"--trainer.logger.init_args.save_dir={tmp_path}", f"--model.init_args.output_dir={tmp_path / 'out'}"]
    cli.main(["fit", *common, "--trainer.max_epochs=1"])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    with pytest.warns(UserWarning, match=r"checkpoint's model arguments, not those given here \(eps: 0\.2 given, "
                                         r"0\.1 in the checkpoint\)"):
        cli.main(["fit", *common, "--trainer.max_epochs=2", "--model.init_args.eps=0.2", f"--ckpt_path={ckpt}"])
    config = json.loads((tmp_path / "out" / "results.json").read_text())["config"]
    assert config["eps"] == 0.1


def test_unwritable_output_path_stops_the_run_at_start_in_one_line(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder cannot be created below a file
    monkeypatch.setattr("sys.argv", ["lit-sdo", "fit", "--config", str(ROOT / "configs/attack/digits.yaml"),
                                     "--data.init_args.per_class=1", "--model.init_args.sampler.num_steps=2",
                                     f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
                                     f"--model.init_args.output_dir={blocker / 'out'}"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lit-sdo: error: cannot create output folder {blocker / 'out'}")
    assert not list((tmp_path / "logs").rglob("*.ckpt"))  # stopped before the first optimisation step
