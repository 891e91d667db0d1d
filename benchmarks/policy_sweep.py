"""One runner for the side-by-side job benchmarks (attack, guided generation, LoRA reward): the CLI job once per
gradient policy on the same inputs, one table row per policy, the table as one section of a results file.

A policy the job's sampler cannot run (the paper's baselines exist only for some schedulers) becomes a row with
the library's one-line reason (:func:`lit_sdo.sampling.baselines.check_baseline`) instead of stopping the sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cli
from benchmarks.common import machine, markdown_table
from lit_sdo.io import write_markdown_section
from lit_sdo.sampling import parse_policy
from lit_sdo.sampling.baselines import check_baseline

ROOT = Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser, policies: list[str], name: str) -> None:
    """The options every sweep has: its policies, the runs' device, extra CLI overrides, the results file."""
    parser.add_argument("--policies", nargs="+", default=policies,
                        help="policy strings (lit_sdo.sampling.parse_policy), passed to the job unchanged; "
                             "+optimizer=NAME runs that row with another optimiser (doodl+optimizer=doodl)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the runs' accelerator")
    parser.add_argument("--override", action="extend", nargs="+", default=[],
                        help="more CLI overrides for every run, one per flag with '=' (it starts with --): "
                             "--override=--model.init_args.sampler.num_steps=4 --override=...")
    parser.add_argument("--results", default=str(ROOT / f"runs/{name}.md"),
                        help="markdown file whose section is replaced (the shipped one: benchmarks/RESULTS.md)")
    parser.set_defaults(started_on=machine())


def device_overrides(args: argparse.Namespace) -> list[str]:
    """The runs' accelerator, then the user's ``--override`` flags (last, so they win)."""
    return [f"--trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}", *args.override]


def build_job(config: str, overrides: Sequence[str]) -> Any:
    """The CLI job ``config`` + ``overrides`` builds (``.model``, ``.datamodule``), instantiated only."""
    return cli.build_cli(["--config", config, *overrides], run=False)


def job_sampler(config: str, overrides: Sequence[str]) -> Any:
    """The :class:`~lit_sdo.models.sampler.Sampler` of the job (instantiated only; nothing runs)."""
    return build_job(config, overrides).model.sampler


def split_label(label: str) -> tuple[str, list[str]]:
    """A row label ``policy[+optimizer=NAME]`` -> (the policy string, the run's extra overrides): ``doodl`` with
    the job's optimiser, ``doodl+optimizer=doodl`` with DOODL's own (:mod:`lit_sdo.optim`)."""
    policy, _, optimizer = label.partition("+optimizer=")
    return policy, [f"--model.init_args.optimizer={optimizer}"] if optimizer else []


def unavailable_reason(sampler: Any, label: str) -> str | None:
    """The library's one-line reason why ``label``'s policy cannot run on this sampler's scheduler, or None."""
    try:
        check_baseline(sampler.scheduler, parse_policy(split_label(label)[0]), sampler.start_step)
    except ValueError as err:
        return str(err)
    return None


def run_policies(config: str, policies: Sequence[str], overrides: Sequence[str], read: Callable[[Path], Any],
                 sampler: Any = None, extra: Callable[[str], list[str]] = lambda policy: [],
                 done: dict[str, Any] | None = None, on_row: Callable[[str, Any], None] = lambda label, row: None
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """The job once per policy its sampler can run, in a temporary folder: (``read(folder)`` per policy run, the
    reason per policy that cannot run); ``extra(policy)`` adds a run's own overrides. Rows already in ``done`` (an
    interrupted sweep's saved rows) are kept, not rerun; ``on_row`` sees each new row as soon as it exists."""
    sampler = sampler if sampler is not None else job_sampler(config, overrides)
    reasons = {p: r for p in policies if (r := unavailable_reason(sampler, p)) is not None}
    rows = {p: done[p] for p in policies if done and p in done}
    with tempfile.TemporaryDirectory() as tmp:
        for label in (p for p in policies if p not in reasons and p not in rows):
            policy, options = split_label(label)
            out = Path(tmp) / label.replace("=", "").replace("+", "_")
            cli.main(["fit", "--config", config, f"--model.init_args.sampler.policy={policy}",
                      f"--model.init_args.output_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
                      "--trainer.enable_progress_bar=false", *overrides, *extra(policy), *options])
            rows[label] = read(out)
            print(f"[sweep] {label}: {json.dumps(rows[label], default=str)}", file=sys.stderr, flush=True)
            on_row(label, rows[label])
    return rows, reasons


def aggregate(out: Path) -> dict[str, Any]:
    """The aggregate of a latent-optimisation run's results.json (attack, edit, style, aesthetic)."""
    return json.loads((out / "results.json").read_text())["aggregate"]


def reason_row(label: str, reason: str, columns: int) -> str:
    """A markdown row of ``columns`` cells: the label, the reason, then empty cells."""
    return f"| {label} | cannot run: {reason} |" + " |" * (columns - 2)


def policy_table(header: Sequence[str], policies: Sequence[str], rows: dict[str, Any], reasons: dict[str, str],
                 cells: Callable[[str, Any], list[str]], label: Callable[[str], str] = lambda policy: policy
                 ) -> list[str]:
    """Markdown lines, a row per policy in the order asked: the cells of its run, or why it cannot run."""
    return markdown_table(header, []) + [
        reason_row(label(p), reasons[p], len(header)) if p in reasons else
        f"| {' | '.join([label(p), *cells(p, rows[p])])} |" for p in policies]


def memory_cell(policy: str, mib: float) -> str:
    """The MiB cell of a policy row. A call that ``torch.utils.checkpoint`` rebuilds in backward saves through
    checkpoint's own hooks, which no saved-tensor meter sees: for ``checkpoint`` and ``sdo-recompute=true`` the
    figure leaves out that one rebuilt call's graph, and the cell says so (on CUDA the allocator's peak has it)."""
    parsed = parse_policy(split_label(policy)[0])
    rebuilt = parsed.name == "checkpoint" or parsed.recompute
    return f"{mib:.2f}" + (" + one rebuilt call's graph (not seen by the meter)" if rebuilt else "")


def publish(results: str, heading: str, body: str, script: str, argv: Sequence[str] | None, started_on: str,
            prefix: str = "") -> None:
    """Replace the ``## heading`` section of ``results`` with the command that made it, ``body`` and the machine
    it ``started_on`` (:func:`benchmarks.common.machine`)."""
    command = f"{prefix}python benchmarks/{script}.py {' '.join(sys.argv[1:] if argv is None else argv)}".strip()
    write_markdown_section(results, heading, f"Command: `{command}` {body}\n\nRan on: {started_on}.")
