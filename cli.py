"""``lit-sdo``: the LightningCLI entry point (fit / validate / test / predict driven by YAML configs).

Thin on purpose: any LightningModule / LightningDataModule is selected with ``class_path`` in a config
file (subclass mode), so a new task costs a YAML file, not a change here.
"""

from __future__ import annotations

import sys

import torch.distributed as dist
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None) -> None:
    """Run the CLI; ``args`` replaces ``sys.argv[1:]`` (tests call it in-process)."""
    try:
        LightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            # A second run in the same folder must not stop on "config.yaml to NOT exist".
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    finally:
        # Plain multi-process CPU runs sometimes abort at exit unless the group is torn down.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
