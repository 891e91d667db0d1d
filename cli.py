"""``lit-sdo``: the one entry point (``python cli.py ...`` is the same command).

- ``fit`` / ``validate`` / ``test`` / ``predict``: LightningCLI driven by YAML configs. Any
  LightningModule / LightningDataModule is selected with ``class_path`` (subclass mode), so a new
  task costs a YAML file, not a change here.
- the jobs that are not a Trainer call (``lora-grid``, ``train-text-image``, ``export-diffusion``,
  ``compare-runs``): plain functions whose signature and docstring become the options (jsonargparse), with ``--config``.

LightningCLI's own subcommands are the Trainer's methods (each gets the trainer, model and data
options), so the jobs are dispatched here by their name instead of being forced into it.

Bad input (a config mistake, a missing model, an unwritable folder) is ``lit-sdo: error: <one line>``
(parse errors add one hint line) with exit code 2; LIT_SDO_DEBUG=1 shows the traceback. A SIGTERM (a cluster
preempting the job) stops ``fit`` at the end of its step with a checkpoint, exit code 143 and the resume
command (:mod:`lit_sdo.preemption`, registered here for every config).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, get_loader
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from lit_sdo.config_errors import find_leaf, flatten, one_line
from lit_sdo.log_folders import LogFolderGuard
from lit_sdo.preemption import Preemption

# Errors lit_sdo raises for bad input (missing weights, bad values, unwritable paths): shown as one line.
USER_ERRORS = (ValueError, OSError)
# The jobs that are not a Trainer call: command -> "module:function" (imported only when it runs).
JOBS = {
    "lora-grid": "lit_sdo.lora:sample_lora_grid",
    "train-text-image": "lit_sdo.tasks.train_text_image:train_guidance_models",
    "export-diffusion": "lit_sdo.tasks.train_diffusion:export_checkpoint",
    "compare-runs": "lit_sdo.compare:compare_runs",
}
LIGHTNING_COMMANDS = tuple(LightningCLI.subcommands())
COMMANDS = (*LIGHTNING_COMMANDS, *JOBS)
# No usage dump before an error (its one line is the message) and no silent abbreviations
# (--trainer.max_epoch must not become --trainer.max_epochs).
STRICT_PARSER = {"exit_on_error": False, "allow_abbrev": False}


class ConfigError(ValueError):
    """A mistake in the command line or a config file, in one line (``command`` names the ``--help`` to read)."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


def root_user_error(err: BaseException) -> BaseException | None:
    """The lit_sdo error behind jsonargparse's wrapping ("Does not validate against any of the Union subtypes")."""
    while err is not None:
        if isinstance(err, USER_ERRORS) and "Does not validate" not in str(err):
            return err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return None


def nested_nulls_as_config(argv: list[str]) -> list[str]:
    """Each option of ``argv`` whose null jsonargparse would read as the text 'None' (see :func:`nested_nulls`)
    as the same key in a ``--config`` string, where null parses as null. Other options pass through unchanged
    (and keep jsonargparse's error messages)."""
    out = list(argv)
    for tokens, key, value in reversed(nested_nulls(argv)):
        tree: Any = value
        for part in reversed(key.split(".")):
            tree = {part: tree}
        out[tokens] = [f"--config={json.dumps(tree, allow_nan=False)}"]
    return out


def nested_nulls(argv: list[str]) -> list[tuple[slice, str, Any]]:
    """(tokens, dotted key, parsed value) of each ``--key=value`` / ``--key value`` holding a null (``null``, ``~``,
    also inside a list or dict) two levels below a class argument.

    jsonargparse hands such an option down one class at a time (``--model``, then ``--objective``...) and
    writes the value it has already parsed back into text with Python's ``str``: null becomes 'None', which
    a ``str | None`` argument accepts and an ``int | None`` one rejects. ``None`` itself stays the text
    'None', as jsonargparse and YAML files read it everywhere else.
    """
    found = []
    i = 0
    while i < len(argv):
        key, has_value, text = argv[i].partition("=")
        width = 1
        if not has_value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            text, width = argv[i + 1], 2
        value = parsed_value(text)
        if key.startswith("--") and not key.endswith("+") and below_a_class_argument(key[2:]) and holds_null(value):
            found.append((slice(i, i + width), key[2:], value))
            i += width
        else:
            i += 1
    return found


def below_a_class_argument(key: str) -> bool:
    """Whether ``key`` is two levels below the class argument LightningCLI registers it under: ``--model``,
    ``--data`` or a Trainer argument (``--trainer.logger``), then ``init_args`` (``model.init_args.sampler.seed``,
    ``model.init_args.objective.init_args.target``; ``model.init_args.eps`` is one level)."""
    parts = key.split(".")
    rest = parts[2:] if parts[0] == "trainer" else parts[1:]
    if rest[:1] == ["init_args"]:
        rest = rest[1:]
    return len(rest) > 1


def parsed_value(text: str) -> Any:
    """``text`` read as jsonargparse reads an option's value; the text itself where that is not plain data."""
    if not text.strip():
        return text  # an empty value is '' to jsonargparse, not null
    try:
        value = get_loader("yaml")(text)
        json.dumps(value, allow_nan=False)  # the rewrite must carry it unchanged
    except (yaml.YAMLError, TypeError, ValueError):
        return text
    return value


def holds_null(value: Any) -> bool:
    if isinstance(value, list):
        return any(holds_null(item) for item in value)
    if isinstance(value, dict):
        return any(holds_null(item) for item in value.values())
    return value is None


def container_on_the_way(config: Namespace, key: str) -> tuple[str, str] | None:
    """The list or dict (dotted key, "list" or "dict") that ``key`` reaches into in a parsed ``config``, if any.

    A config string cannot say "the last item of this list" nor "this key, the others kept": a null there
    must be given with the whole list or dict.
    """
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1], start=1):
        node = node.get(part) if isinstance(node, Namespace) else None
        if isinstance(node, (list, dict)):
            return ".".join(parts[:depth]), type(node).__name__
    return None


def null_in_a_container(key: str, container: str, kind: str) -> str:
    return (f"--{key}: a null inside the {kind} {container} cannot be given on the command line (it would arrive "
            f"as the text 'None'); give {container} whole, e.g. in a --config file")


class LitSdoCLI(LightningCLI):
    """LightningCLI with one-line parse errors, a checked log folder, and a word when ``--ckpt_path`` wins.

    Lightning resumes with the checkpoint's model hyper-parameters (so a resumed run is the same run);
    an argument changed for the resume would otherwise be dropped without a word. The arguments are
    read right after parsing (:meth:`parse_arguments`) and again before instantiation, when Lightning
    has merged the checkpoint's: both are public hooks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.log_folders = LogFolderGuard()
        try:
            super().__init__(*args, **kwargs)
        except Exception:
            trainer = getattr(self, "trainer", None)
            if trainer is None or trainer.is_global_zero:
                with contextlib.suppress(OSError):  # never hide the error that stopped the run
                    self.log_folders.remove_failed_start(trainer)
            raise

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = [] if isinstance(args, dict) else list(sys.argv[1:] if args is None else args)
        command = argv[0] if argv and argv[0] in LIGHTNING_COMMANDS else None
        nulls = [key for _, key, _ in nested_nulls(argv)]
        try:
            super().parse_arguments(parser, args if isinstance(args, dict) else self.rewritten_argv(args))
        except ArgumentError as err:
            leaf = find_leaf(str(err)) or ("", None, "")
            inside = [key for key in nulls if key.startswith(f"{leaf[0]}.")]
            if inside and "'list'" in leaf[2]:  # a list given a config string's dict: the null was for an item
                raise ConfigError(null_in_a_container(inside[0], leaf[0], "list"), command) from err
            raise ConfigError(one_line(str(err), argv, self.option_names(command)), command) from err
        subcommand = self.config.get("subcommand")
        parsed = self.config.get(subcommand) if subcommand else self.config
        for key in nulls:
            container = container_on_the_way(parsed, key)
            if container is not None:
                raise ConfigError(null_in_a_container(key, *container), command)
        self.given_model_arguments = self.model_arguments()

    @staticmethod
    def rewritten_argv(args: list[str] | None) -> list[str] | None:
        """The arguments with nested nulls rewritten. From the console (``args`` None) the rewrite goes back
        into ``sys.argv`` and None is returned: LightningCLI warns when it gets ``args`` and a command line."""
        argv = list(sys.argv[1:] if args is None else args)
        rewritten = nested_nulls_as_config(argv)
        if args is not None:
            return rewritten
        sys.argv[1:] = rewritten
        return None

    def before_instantiate_classes(self) -> None:
        after = self.model_arguments()
        changed = [f"{key}: {value!r} given, {after[key]!r} in the checkpoint"
                   for key, value in self.given_model_arguments.items() if key in after and value != after[key]]
        if changed:
            rank_zero_warn("resuming from --ckpt_path uses the checkpoint's model arguments, not those given here ("
                           + "; ".join(changed) + "); start a new run to change them")

    def model_arguments(self) -> dict:
        subcommand = self.config.get("subcommand")
        model = self.config.get(f"{subcommand}.model") if subcommand else self.config.get("model")
        init_args = getattr(model, "init_args", None)
        return init_args.as_dict() if init_args is not None else {}

    def option_names(self, command: str | None) -> list[str]:
        """The options a misspelt one is compared with: the Trainer's, the command's and the CLI's own."""
        names = ["--config", "--seed_everything", "--model", "--data", "--optimizer", "--lr_scheduler",
                 "--print_config", "--trainer"]
        names += [f"--trainer.{p}" for p in inspect.signature(Trainer.__init__).parameters if p != "self"]
        if command is not None:
            skip = self.subcommands()[command] | {"self"}
            names += [f"--{p}" for p in inspect.signature(getattr(Trainer, command)).parameters if p not in skip]
        return names

    def before_fit(self) -> None:
        self.log_folders.prepare(self.trainer)

    def before_validate(self) -> None:
        self.log_folders.prepare(self.trainer)

    def before_test(self) -> None:
        self.log_folders.prepare(self.trainer)

    def before_predict(self) -> None:
        self.log_folders.prepare(self.trainer)


class ParseOnlyCLI(LitSdoCLI):
    """Parses and type-checks a command line against the classes it names and builds none of them.

    LightningCLI instantiates as soon as it has parsed; a command line that points at models this machine does
    not have (the full-size runs' cache) can still be checked for its option names and value types this way.
    """

    def instantiate_classes(self) -> None:
        """Nothing is built: ``self.config`` holds the parsed, validated namespace."""


def parse_command_line(args: list[str]) -> Any:
    """``args`` (optionally led by a Trainer command: ``fit --config ...``) parsed and validated, nothing built.

    The command's own options (``--ckpt_path``) are not accepted: the namespace is that of ``run=False``.
    """
    argv = list(args[1:] if args and args[0] in LIGHTNING_COMMANDS else args)
    return build_cli(argv, run=False, cli_class=ParseOnlyCLI).config


def build_cli(args: list[str] | None = None, run: bool = True,
              cli_class: type[LitSdoCLI] = LitSdoCLI) -> LightningCLI:
    """The CLI object; ``run=False`` only parses and instantiates (config tests)."""
    description = (f"Commands: {', '.join(LIGHTNING_COMMANDS)} (a Trainer call driven by --config YAML files) and "
                   f"{', '.join(JOBS)} (jobs: lit-sdo JOB --help).")
    parser_kwargs: dict[str, Any] = {**STRICT_PARSER, "prog": "lit-sdo", "description": description}
    parser_kwargs |= {command: dict(STRICT_PARSER) for command in LIGHTNING_COMMANDS}
    command = list(sys.argv[1:] if args is None else args)  # as given: the parse rewrites nested nulls
    try:
        return cli_class(
            LightningModule,
            None,  # any LightningDataModule by class_path, and optional (sampling jobs need none)
            subclass_mode_model=True,
            subclass_mode_data=True,
            # Every job, whatever its config: a SIGTERM (cluster preemption) stops it at a step's end, resumable.
            trainer_defaults={"callbacks": [Preemption(command)]},
            # A second run in the same folder must not stop on "config.yaml to NOT exist".
            save_config_kwargs={"overwrite": True},
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
        )
    except ArgumentError as err:  # after parsing: the hyper-parameters of --ckpt_path's checkpoint
        raise ConfigError(f"the checkpoint's model arguments do not parse: {one_line(str(err))}") from err
    except ValueError as err:
        root = root_user_error(err)
        if root is not None and root is not err:
            raise root from None
        if "Does not validate" in str(err):  # instantiation failed for another reason (e.g. an unknown argument)
            raise ConfigError(one_line(str(err))) from err
        raise


def job_function(command: str) -> Callable[..., Any]:
    module, _, name = JOBS[command].partition(":")
    return getattr(importlib.import_module(module), name)


def first_paragraph(function: Callable[..., Any]) -> str:
    return (inspect.getdoc(function) or "").split("\n\n", 1)[0]


def run_job(command: str, argv: Sequence[str]) -> Any:
    """Parse ``argv`` against the job's signature (and ``--config``) and call it; a Path result is printed."""
    function = job_function(command)
    parser = ArgumentParser(prog=f"lit-sdo {command}", description=first_paragraph(function), **STRICT_PARSER)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML file with the options below")
    names = parser.add_function_arguments(function, as_group=False)
    try:
        config = parser.parse_args(list(argv))
    except ArgumentError as err:
        raise ConfigError(one_line(str(err), argv, [f"--{n}" for n in names]), command) from err
    result = function(**{name: config[name] for name in names})
    if isinstance(result, os.PathLike):
        print(f"[lit_sdo] wrote {result}")  # noqa: T201 - the job's one line of output
    return result


def dispatch(args: list[str] | None) -> None:
    """A job by its name, anything else to LightningCLI (``args=None``: LightningCLI reads ``sys.argv``)."""
    argv = sys.argv[1:] if args is None else args
    if not argv:
        raise ConfigError(f"no command given; the commands are: {', '.join(COMMANDS)}")
    if argv[0] in JOBS:
        run_job(argv[0], argv[1:])
    elif not argv[0].startswith("-") and argv[0] not in LIGHTNING_COMMANDS:
        raise ConfigError(f"unknown command {argv[0]!r}; the commands are: {', '.join(COMMANDS)}")
    else:
        build_cli(args)


def main(args: list[str] | None = None) -> None:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (tests and benchmarks call it in-process, and then
    get the exception instead of the exit).

    Bad input surfaces as ``lit-sdo: error: <one line>`` and exit code 2; set LIT_SDO_DEBUG=1 for the
    full traceback.
    """
    try:
        dispatch(args)
    except USER_ERRORS as err:
        if os.environ.get("LIT_SDO_DEBUG") or args is not None:
            raise
        if isinstance(err, ConfigError):  # the mistake, then where the options are listed
            print(f"lit-sdo: error: {flatten(str(err))}", file=sys.stderr)
            command = " ".join(filter(None, ("lit-sdo", err.command)))
            print(f"  ({command} --help lists the options; LIT_SDO_DEBUG=1 shows the traceback)", file=sys.stderr)
        else:
            print(f"lit-sdo: error: {flatten(str(err))}  (LIT_SDO_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
    finally:
        # Plain multi-process CPU runs sometimes abort at exit unless the group is torn down.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
