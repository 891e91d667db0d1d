"""``lit-sdo``: the LightningCLI entry point (fit / validate / test / predict driven by YAML configs).

Thin on purpose: any LightningModule / LightningDataModule is selected with ``class_path`` in a config
file (subclass mode), so a new task costs a YAML file, not a change here.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI

# Errors lit_sdo raises for bad input (missing weights, bad values, unwritable paths): shown as one line.
USER_ERRORS = (ValueError, OSError)


def root_user_error(err: BaseException) -> BaseException | None:
    """The lit_sdo error behind jsonargparse's wrapping ("Does not validate against any of the Union subtypes")."""
    while err is not None:
        if isinstance(err, USER_ERRORS) and "Does not validate" not in str(err):
            return err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return None


class LitSdoCLI(LightningCLI):
    """LightningCLI that says when ``--ckpt_path`` replaces model arguments given on the command line.

    Lightning resumes with the checkpoint's model hyper-parameters (so a resumed run is the same run);
    an argument changed for the resume would otherwise be dropped without a word.
    """

    def _parse_ckpt_path(self) -> None:
        before = self._model_arguments()
        super()._parse_ckpt_path()
        after = self._model_arguments()
        changed = [f"{key}: {before[key]!r} given, {after[key]!r} in the checkpoint" for key in before
                   if key in after and before[key] != after[key]]
        if changed:
            warnings.warn("resuming from --ckpt_path uses the checkpoint's model arguments, not those given here ("
                          + "; ".join(changed) + "); start a new run to change them", stacklevel=2)

    def _model_arguments(self) -> dict:
        subcommand = self.config.get("subcommand")
        model = self.config.get(f"{subcommand}.model") if subcommand else None
        init_args = getattr(model, "init_args", None)
        return init_args.as_dict() if init_args is not None else {}


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """The CLI object; ``run=False`` only parses and instantiates (config tests)."""
    try:
        return LitSdoCLI(
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
