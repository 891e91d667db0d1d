"""Shared by the side-by-side job benchmarks: which policies a job's sampler cannot run, and the row that says so.

The paper's baselines run their own samplers (AdjointDPM: the probability-flow ODE; DOODL: EDICT's coupled
chain), which exist only for some schedulers. A table row for an impossible combination prints the library's
own one-line reason (:func:`lit_sdo.sampling.baselines.check_baseline`, which the task's sampler also runs
when it is built) instead of stopping the whole benchmark.
"""

from __future__ import annotations

from typing import Any

import cli
from lit_sdo.sampling import parse_policy
from lit_sdo.sampling.baselines import check_baseline


def job_sampler(config: str, overrides: list[str]) -> Any:
    """The :class:`~lit_sdo.models.sampler.Sampler` a CLI job builds from ``config`` and ``overrides``
    (instantiated only; nothing runs)."""
    return cli.build_cli(["--config", config, *overrides], run=False).model.sampler


def unavailable_reason(sampler: Any, policy: str) -> str | None:
    """The library's one-line reason why ``policy`` cannot run on this sampler's scheduler, or None if it can."""
    try:
        check_baseline(sampler.scheduler, parse_policy(policy), sampler.start_step)
    except ValueError as err:
        return str(err)
    return None


def reason_row(label: str, reason: str, columns: int) -> str:
    """A markdown row of ``columns`` cells: the label, the reason, then empty cells."""
    return f"| {label} | cannot run: {reason} |" + " |" * (columns - 2)


def memory_cell(policy: str, mib: float) -> str:
    """The MiB cell of a policy row. A call that ``torch.utils.checkpoint`` rebuilds in backward saves through
    checkpoint's own hooks, which no saved-tensor meter sees: for ``checkpoint`` and ``sdo-recompute=true`` the
    figure leaves out that one rebuilt call's graph, and the cell says so (on CUDA the allocator's peak has it)."""
    parsed = parse_policy(policy)
    rebuilt = parsed.name == "checkpoint" or parsed.recompute
    return f"{mib:.2f}" + (" + one rebuilt call's graph (not seen by the meter)" if rebuilt else "")
