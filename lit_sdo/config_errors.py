"""jsonargparse's parse errors as one line that names the option, the value and what is allowed.

jsonargparse reports a mistake in a subclass-mode argument as a tree ("Does not validate against any of
the Union subtypes / Subtypes: ... / Errors: - Problem with given class_path ...: Parser key ...") of ten
or more lines, after the whole usage. A user needs the leaf of that tree with the option's full name:
``model.init_args.eps: expected a float, got 'abc'``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

# Lines of jsonargparse's tree that say nothing about the mistake itself.
NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
         "Given value:", "Expected a <class 'NoneType'>")
PARSER_KEY = re.compile(r'Parser key "([^"]+)":\s*(.*)')
CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)':\s*(.*)")
NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
EXPECTED = re.compile(r"Expected a (.+?)(?:\. Got value: (.*))?$")
GIVEN = re.compile(r"^\s*Given value: (?:NestedArg\(key='[^']*', val=(['\"])(.*)\1\)|(.*))$", re.MULTILINE)
MISSING_FILE = re.compile(r"File does not exist: '(.+)'")
UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")


def one_line(message: str, argv: Sequence[str] = (), options: Sequence[str] = ()) -> str:
    """The mistake in jsonargparse's ``message``; ``argv`` finds the config files, ``options`` the near misses."""
    if message.startswith("Problems parsing config"):
        return yaml_problem(argv) or flatten(message)
    unrecognized = UNRECOGNIZED.match(message)
    if unrecognized:
        return unknown_option(unrecognized.group(1), options)
    leaf = find_leaf(message)
    if leaf is None:
        return flatten(message)
    key, class_path, text = leaf
    return describe(key, class_path, text, given_value(message))


def find_leaf(message: str) -> tuple[str, str | None, str] | None:
    """(dotted option, class whose argument it is, the leaf text) of the first real branch of the tree."""
    stack: list[tuple[int, str]] = []  # (indent, key part)
    class_path = None
    for raw in message.splitlines():
        text = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if text.startswith("- "):  # one alternative of a Union: its content is one level deeper
            text, indent = text[2:], indent + 2
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if not text or text.startswith(NOISE):
            continue
        match = PARSER_KEY.match(text)
        if match:
            stack.append((indent, match.group(1)))
            text = match.group(2)
        else:
            match = CLASS_PATH.match(text)
            if match:
                stack.append((indent, "init_args"))
                class_path, text = match.group(1), match.group(2)
        if text:
            return ".".join(part for _, part in stack), class_path, text
    return None


def given_value(message: str) -> str | None:
    """The value jsonargparse rejected (its last "Given value:" line; the value alone for one nested option)."""
    matches = list(GIVEN.finditer(message))
    if not matches:
        return None
    last = matches[-1]
    return last.group(2) if last.group(2) is not None else last.group(3)


def describe(key: str, class_path: str | None, text: str, given: str | None = None) -> str:
    """One sentence for a leaf: unknown argument (with the nearest names), wrong type, missing file."""
    where = f"{key}: " if key else ""
    not_accepted = NOT_ACCEPTED.match(text)
    if not_accepted:
        name = not_accepted.group(1)
        accepted = class_arguments(class_path)
        owner = class_path.rsplit(".", 1)[-1] if class_path else "this class"
        return f"unknown option {key}.{name}: {owner} has no argument {name!r}" + did_you_mean(name, accepted)
    expected = EXPECTED.match(text)
    if expected:
        value = expected.group(2) if expected.group(2) is not None else given
        return f"{where}expected {type_name(expected.group(1))}" + (f", got {value!r}" if value is not None else "")
    missing = MISSING_FILE.match(text)
    if missing:
        return f"{key or 'config'} file not found: {missing.group(1)!r} does not exist"
    return where + text


def unknown_option(given: str, options: Sequence[str]) -> str:
    """``--trainer.max_epoch=2`` (abbreviations are off): the option named, with the nearest real ones."""
    name = given.split("=", 1)[0]
    if not name.startswith("-"):
        return f"unexpected argument {given!r} (options start with --, e.g. --trainer.max_epochs=2)"
    return f"unknown option {name}" + did_you_mean(name, options)


def yaml_problem(argv: Sequence[str]) -> str | None:
    """The first config file of ``argv`` that is not valid YAML, with the line and column of the mistake."""
    for path in config_paths(argv):
        try:
            yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as err:
            return f"config file {str(path)!r} is not valid YAML: " + "; ".join(
                f"{text} at line {mark.line + 1}, column {mark.column + 1}"
                for text, mark in ((err.context, err.context_mark), (err.problem, err.problem_mark)) if text and mark)
        except yaml.YAMLError as err:
            return f"config file {str(path)!r} is not valid YAML: {flatten(str(err))}"
    return None


def config_paths(argv: Sequence[str]) -> list[Path]:
    """Existing files given with ``--config PATH``, ``--config=PATH`` or ``-c PATH``."""
    paths = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return [Path(p) for p in paths if Path(p).is_file()]


def class_arguments(class_path: str | None) -> list[str]:
    """The constructor arguments of ``class_path`` (empty when it cannot be imported)."""
    if not class_path or "." not in class_path:
        return []
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return []


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.75)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def type_name(text: str) -> str:
    """``<class 'float'>`` -> ``a float``, ``typing.Literal['a', 'b']`` -> ``one of 'a', 'b'``."""
    text = re.sub(r"^(?:a )?<class '(?:builtins\.)?([\w.]+)'>", lambda m: article(m.group(1)), text)
    text = re.sub(r"^(?:a )?(?:collections\.abc\.Sequence|list|List)\b.*", "a list such as [a, b]", text)
    return re.sub(r"^(?:a )?typing\.Literal\[(.*)\]$", lambda m: "one of " + m.group(1), text)


def article(name: str) -> str:
    return ("an " if name[:1] in "aeiou" else "a ") + name


def flatten(message: str) -> str:
    """Any message on one line."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())
