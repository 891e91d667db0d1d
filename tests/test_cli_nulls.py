"""A null on the command line means what the same key means in a config file, at every depth.

jsonargparse hands an option that lies two levels below a class argument (a class inside a class:
``--model.init_args.objective.init_args.transfer_classifier``; a dataclass inside a class:
``--model.init_args.sampler.start_timestep``) down one level at a time as text, so null arrived as the text
'None' (or was refused by an ``int | None``); cli.py gives such options as a config string instead. Each
case is parsed three ways, ``--key=value``, ``--key value`` and a YAML file holding the key, without building
anything (``cli.parse_command_line``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's cli.py, not an installed one

import cli  # noqa: E402

ATTACK = ROOT / "configs/attack/digits.yaml"
HERE = __name__  # the toy classes' module, as a class_path sees it


class Leaf:
    """The innermost of three nested classes."""

    def __init__(self, name: str | None = "leaf", sizes: list[int | None] | None = None,
                 options: dict[str, str | None] | None = None) -> None:
        self.name, self.sizes, self.options = name, sizes, options


class Middle:
    def __init__(self, leaf: Leaf, leaves: list[Leaf] | None = None) -> None:
        self.leaf, self.leaves = leaf, leaves


@dataclass
class Spec:
    path: str | None = "somewhere"


class Outer(L.LightningModule):
    def __init__(self, middle: Middle, spec: Spec, table: dict[str, str | None] | None = None) -> None:
        super().__init__()


TOY_YAML = f"""
model:
  class_path: {HERE}.Outer
  init_args:
    middle:
      class_path: {HERE}.Middle
      init_args:
        leaf:
          class_path: {HERE}.Leaf
          init_args:
            options: {{a: x, b: y}}
"""
MIDDLE = "model.init_args.middle.init_args"
LEAF = f"{MIDDLE}.leaf.init_args"
OBJECTIVE = "model.init_args.objective.init_args"

CASES = [  # (config, dotted key, value as typed, the value it must parse to)
    ("attack", f"{OBJECTIVE}.transfer_classifier", "null", None),  # a class inside a class, str | None
    ("attack", f"{OBJECTIVE}.transfer_classifier", "None", "None"),  # YAML's text None, as in a config file
    ("attack", f"{OBJECTIVE}.transfer_classifier", "embedded:digits-resnet", "embedded:digits-resnet"),
    ("attack", f"{OBJECTIVE}.target", "null", None),  # int | None
    ("attack", f"{OBJECTIVE}.target", "3", 3),
    ("attack", "model.init_args.sampler.start_timestep", "null", None),  # a dataclass inside a class
    ("attack", "model.init_args.sampler.start_timestep", "600", 600),
    ("attack", "model.init_args.output_dir", "null", None),  # one level below the class
    ("attack", "trainer.logger.init_args.version", "null", None),
    ("toy", f"{LEAF}.name", "null", None),  # a class inside a class inside a class
    ("toy", f"{LEAF}.name", "~", None),
    ("toy", f"{LEAF}.name", "abc", "abc"),
    ("toy", f"{LEAF}.sizes", "[1, null]", [1, None]),  # a null inside a list
    ("toy", f"{LEAF}.sizes", "[1, 2]", [1, 2]),
    ("toy", f"{LEAF}.options", "{a: null}", {"a": None}),  # a whole dict replaces the config's, as in a file
    ("toy", "model.init_args.spec.path", "null", None),
    ("toy", "model.init_args.table", "{a: null}", {"a": None}),
]


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    toy = tmp_path_factory.mktemp("toy") / "toy.yaml"
    toy.write_text(TOY_YAML)
    return {"attack": ATTACK, "toy": toy}


@pytest.fixture(autouse=True)
def console_without_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pytest arguments in ``sys.argv`` (LightningCLI warns when it sees them next to ``args``)."""
    monkeypatch.setattr(sys, "argv", ["lit-sdo"])


def parse(config: Path, *args: str) -> Any:
    return cli.parse_command_line(["fit", "--config", str(config), *args])


def as_yaml(key: str, text: str) -> str:
    """``key: text`` as nested YAML mappings, the way a config file sets it."""
    parts = key.split(".")
    lines = [f"{'  ' * depth}{part}:" for depth, part in enumerate(parts[:-1])]
    return "\n".join([*lines, f"{'  ' * (len(parts) - 1)}{parts[-1]}: {text}"]) + "\n"


@pytest.mark.parametrize(("config", "key", "text", "expected"), CASES,
                         ids=[f"{c}:{k.rsplit('.', 1)[-1]}={t}" for c, k, t, _ in CASES])
def test_command_line_value_is_the_config_file_value(configs: dict[str, Path], tmp_path: Path, config: str,
                                                     key: str, text: str, expected: Any) -> None:
    file = tmp_path / "override.yaml"
    file.write_text(as_yaml(key, text))
    from_file = parse(configs[config], "--config", str(file))[key]
    joined = parse(configs[config], f"--{key}={text}")[key]
    split = parse(configs[config], f"--{key}", text)[key]
    assert from_file == expected
    assert joined == expected, f"--{key}={text} parsed to {joined!r}"
    assert split == expected, f"--{key} {text} parsed to {split!r}"


def test_a_null_for_one_option_keeps_the_class_s_other_options(configs: dict[str, Path]) -> None:
    objective = parse(ATTACK, f"--{OBJECTIVE}.transfer_classifier=null").model.init_args.objective
    assert objective.class_path == "lit_sdo.objectives.ClassifierObjective"
    assert objective.init_args.classifier == "embedded:digits-resnet" and objective.init_args.loss == "margin"
    leaf = parse(configs["toy"], f"--{LEAF}.sizes=[null]")[LEAF]
    assert leaf.options == {"a": "x", "b": "y"} and leaf.sizes == [None]


def test_options_without_a_null_pass_through_unchanged() -> None:
    argv = ["fit", f"--{OBJECTIVE}.transfer_classifier=embedded:digits-convnext", f"--{OBJECTIVE}.target", "3",
            "--model.init_args.sampler.start_timestep=600", f"--{LEAF}.sizes=[1, 2]", f"--{LEAF}.name=",
            f"--{LEAF}.options.a=None", "--model.init_args.eps=null", "--trainer.logger.init_args.version=null",
            "--trainer.callbacks.init_args.monitor=null", f"--{LEAF}.sizes+=null"]
    assert cli.nested_nulls_as_config(argv) == argv


@pytest.mark.parametrize(("args", "kind", "container"), [
    ([f"--{MIDDLE}.leaves+={HERE}.Leaf", f"--{MIDDLE}.leaves.init_args.name=null"], "list", f"{MIDDLE}.leaves"),
    ([f"--{LEAF}.options.a=null"], "dict", f"{LEAF}.options"),
])
def test_a_null_for_an_item_of_a_list_or_dict_is_refused_in_one_line(
        configs: dict[str, Path], args: list[str], kind: str, container: str) -> None:
    """A config string cannot address the last item of a list nor one key of a dict with the others kept."""
    with pytest.raises(cli.ConfigError) as error:
        parse(configs["toy"], *args)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{args[-1].split('=')[0]}: a null inside the {kind} {container}"), message
