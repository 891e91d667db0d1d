"""``lit-sdo``: the LightningCLI entry point (fit / validate / test / predict driven by YAML configs).

Thin on purpose: any LightningModule / LightningDataModule is selected with ``class_path`` in a config
file (subclass mode), so a new task costs a YAML file, not a change here.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI

# Errors lit_sdo raises for bad input (missing weights, bad values, unwritable paths): shown as one line.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError)


def root_user_error(err: BaseException) -> BaseException | None:
    """The lit_sdo error behind jsonargparse's wrapping ("Does not validate against any of the Union subtypes")."""
    while err is not None:
        if isinstance(err, USER_ERRORS) and "Does not validate" not in str(err):
            return err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return None


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The CLI object; ``run=False`` only parses and instantiates (config tests)."""
    try:
        return LightningCLI(
            LightningModule,
            None,  # any LightningDataModule by class_path, and optional (sampling jobs need none)
            subclass_mode_model=True,
            subclass_mode_data=True,
            # A second run in the same folder must not stop on "config.yaml to NOT exist".
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except ValueError as err:
        root = root_user_error(err)
        if root is None or root is err:
            raise
        raise root from None


def main(args: list[str] | None = None) -> None:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (tests and benchmarks call it in-process).

    Bad input surfaces as ``lit-sdo: error: <one line>`` and exit code 2; set LIT_SDO_DEBUG=1 for the
    full traceback.
    """
    try:
        build_cli(args)
    except USER_ERRORS as err:
        if os.environ.get("LIT_SDO_DEBUG") or args is not None:
            raise
        print(f"lit-sdo: error: {err}  (LIT_SDO_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
    finally:
        # Plain multi-process CPU runs sometimes abort at exit unless the group is torn down.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
