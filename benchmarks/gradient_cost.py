"""Cost of one gradient through an N-step sampler, for every gradient policy (paper Table 3).

One record per (policy, N) case (:data:`benchmarks.common.RECORD_KEYS`, explained in RESULTS.md): wall and CPU
seconds of sampling forward + backward (medians of ``--repeats`` round-robin runs, so other processes' load hits every
policy alike), peak memory (CUDA's allocator, or a CPU case's peak RSS in a FRESH process: torch alone holds ~0.9 GB)
and the cosine to the exact gradient. A label may set its no-grad calls' precision after ``@`` (``sdo@bf16``).
``--one-pass`` (CPU, paper-size networks) runs each case ONCE in its fresh process and skips one predicted not to fit
``--mem-budget-gib`` (an OOM kill on a shared machine takes other processes with it). See ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as `python benchmarks/gradient_cost.py` without installing

from benchmarks import common  # noqa: E402
from benchmarks.baseline_report import baseline_targets, paper_ratio_lines, plot_frontier, tail_frontier_lines  # noqa: E402
from benchmarks.common import Records, fmt_or_dash, line_fit, markdown_table, ratio, record_value, verdict  # noqa: E402
from lit_sdo.io import write_json  # noqa: E402

DEFAULT_STEPS = (10, 25, 50, 100)
ONE_PASS_KEYS = ("cpu_seconds", "cpu_ratio_to_sampling", "skipped", "exact_reference", "predicted_peak_bytes",
                 "mem_budget_bytes", "warmup_peak_bytes", "grad_norm", "loadavg_1min")
# Policies whose 1-step run is exactly one model call with its graph: their warm-up peak is the cost of one
# graph call, which predicts a later case's peak before its process starts (and before its warm-up).
GRAPH_STEP_POLICIES = ("full", "sdo", "last_k", "random_truncation")


def exact_gradient(setup: common.Setup, steps: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The exact d loss / d x_T: ``full`` backprop in ``dtype`` (``checkpoint`` if ``full`` does not fit)."""
    exact = copy.copy(setup)  # float64: a converted deep copy; float32: the network itself, frozen for the call
    trainable = [p for p in setup.denoiser.parameters() if p.requires_grad]
    exact.denoiser = copy.deepcopy(setup.denoiser).to(dtype) if dtype != setup.x_T.dtype else setup.denoiser
    exact.denoiser.requires_grad_(False)
    exact.x_T, exact.target = setup.x_T.to(dtype), setup.target.to(dtype)
    exact.cond = setup.cond.to(dtype) if setup.cond is not None and setup.cond.is_floating_point() else setup.cond
    try:
        try:
            grad = common.one_gradient(exact, steps, common.POLICIES["full"])
        except torch.OutOfMemoryError:
            common.release_memory(exact.x_T.device)
            grad = common.one_gradient(exact, steps, common.POLICIES["checkpoint"])
        assert grad is not None
        return grad.to(setup.x_T.dtype)
    finally:
        for p in trainable:
            p.requires_grad_(True)


def fp32_sdo_gradients(setup: common.Setup, steps: int, labels: Sequence[str]) -> dict[str, Tensor]:
    """The float32 gradient of each SDO base policy that some label runs at another precision
    (policy seed 0, as the compared first repeat), keyed by the base label (``sdo``, ``sdo-random``)."""
    bases = sorted({label.partition("@")[0] for label in labels if "@" in label})
    return {base: common.one_gradient(setup, steps, common.policy_for(base), policy_seed=0)  # type: ignore[misc]
            for base in bases if common.policy_for(base).name == "sdo"}


def exact_reference(results: dict[str, dict[str, Any]]) -> tuple[str | None, Tensor | None]:
    """``--one-pass``: the float32 ``full`` gradient if that case ran, else ``checkpoint``'s; (None, None) if not."""
    for label in ("full", "checkpoint"):
        grad = results.get(label, {}).get("grad")
        if grad is not None:
            return f"{label} (float32, this run)", grad
    return None, None


def timed_repeats(setup: common.Setup, steps: int, labels: Sequence[str], repeats: int,
                  warmup: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Every label ``repeats`` times in this process, round-robin and rotated so background load hits each alike:
    medians of ``seconds`` and ``cpu_seconds``, the first call's gradient and peak (CUDA's; a CPU's is measured in
    a fresh process). A label that runs out of CUDA memory is not run again."""
    dev = setup.x_T.device
    calls: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    failed: set[str] = set()
    for r in range(repeats):
        ok = [label for label in labels if label not in failed]
        for label in ok[r % len(ok):] + ok[: r % len(ok)]:
            try:
                grad, cost = common.measure(lambda: common.label_gradient(setup, steps, label, r), dev)  # noqa: B023
                calls[label].append(cost | {"grad": grad})
            except torch.OutOfMemoryError:
                failed.add(label)
                common.release_memory(dev)

    def medians(label: str) -> dict[str, Any]:
        first = calls[label][0] if calls[label] else {}
        out = {key: statistics.median(v) if (v := [c[key] for c in calls[label] if c[key] is not None]) else None
               for key in ("seconds", "cpu_seconds")}
        return out | {"warmup_seconds": warmup.get(label), "peak_mem_bytes": first.get("peak_mem_bytes"),
                      "grad": first.get("grad")}

    return {label: medians(label) for label in labels}


class FreshProcesses(contextlib.AbstractContextManager):
    """Each case in its own fresh process. Once a warm-up has measured the peak of one graph call, a case that
    cannot fit the budget is skipped before its process starts; a process that dies is recorded as skipped."""

    def __init__(self, work: common.Workload, mem_budget_bytes: float | None) -> None:
        self.work, self.mem_budget_bytes = work, mem_budget_bytes
        self.pool = common.fresh_process_pool()
        self.graph_step_peak: int | None = None

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown()

    def run(self, steps: int, label: str) -> dict[str, Any]:
        policy = common.parse_label(label)[0]
        if self.graph_step_peak is not None:
            # taken before the case's network is built, so larger than the child's budget: a case skipped here
            # would be skipped by the child too; one that passes is checked again there
            res = common.predicted_peak(common.graph_calls(policy, steps), self.graph_step_peak, self.mem_budget_bytes,
                                        " of an earlier case's warm-up", " (not started)")
            if res.get("skipped"):
                return res
        try:
            res = self.pool.submit(common.fresh_process_case, self.work, steps, label, self.mem_budget_bytes).result()
        except BrokenProcessPool:
            self.pool.shutdown()
            self.pool = common.fresh_process_pool()
            return {"skipped": "the case's process died (killed, e.g. out of memory)"}
        if policy.name in GRAPH_STEP_POLICIES and res.get("warmup_peak_bytes"):
            self.graph_step_peak = max(self.graph_step_peak or 0, res["warmup_peak_bytes"])
        if res.get("grad") is not None:
            res["grad"] = torch.from_numpy(res["grad"])
        return res


def timed_run(work: common.Workload, device: str, steps: Sequence[int], labels: Sequence[str], repeats: int,
              log: Callable[[str], None], exact_dtype: str | None) -> Records:
    """Every case timed ``repeats`` times in this process against the exact gradient in ``exact_dtype`` (None: no
    reference); on a CPU, each case's peak RSS is measured again in its fresh process."""
    setup = common.build_setup(work.model, device, work.batch, work.wrt)
    warmup: dict[str, float] = {}
    for label in labels:  # at the first N: lazy kernels, allocator caches, compile
        warmup[label] = common.measure(lambda: common.label_gradient(setup, steps[0], label), device)[1]["seconds"]  # noqa: B023
        log(f"warm-up {label}: {warmup[label]:.1f} s (includes torch.compile where asked)")
    records: Records = []
    with FreshProcesses(work, math.inf) if device == "cpu" else contextlib.nullcontext() as fresh:
        for n in steps:
            started = time.perf_counter()
            reference = exact_gradient(setup, n, getattr(torch, exact_dtype)) if exact_dtype else None
            fp32_sdo = fp32_sdo_gradients(setup, n, labels)
            common.release_memory(setup.x_T.device)
            measured = timed_repeats(setup, n, labels, repeats, warmup)
            timed = time.perf_counter()
            for label in labels if fresh is not None else ():
                measured[label]["peak_mem_bytes"] = fresh.run(n, label).get("peak_mem_bytes")
            records += case_records(work, device, n, measured, reference, fp32_sdo)
            log(f"N={n}: {time.perf_counter() - started:.1f} s ({timed - started:.1f} s exact gradient + timing)")
    return records


def one_pass_run(work: common.Workload, steps: Sequence[int], labels: Sequence[str], log: Callable[[str], None],
                 mem_budget_bytes: float | None, json_path: Path | None) -> Records:
    """``--one-pass``: each case once in its fresh process (the network is never built here), the records so far
    written to ``json_path`` after every case (atomic), so that a run cut short keeps what it measured."""
    records: Records = []
    with FreshProcesses(work, mem_budget_bytes) as fresh:
        for n in steps:
            measured: dict[str, dict[str, Any]] = {}
            for label in labels:
                started = time.perf_counter()
                measured[label] = fresh.run(n, label) | {"loadavg_1min": os.getloadavg()[0]}
                log(case_line(label, n, measured[label], time.perf_counter() - started))
                if json_path is not None:
                    write_json(json_path, records + case_records(work, "cpu", n, measured, one_pass=True))
            records += case_records(work, "cpu", n, measured, one_pass=True)
    return records


def case_records(work: common.Workload, device: str, steps: int, measured: dict[str, dict[str, Any]],
                 reference: Tensor | None = None, fp32_sdo: dict[str, Tensor] | None = None,
                 one_pass: bool = False) -> Records:
    """One record per label of one N, in the order run. ``one_pass``: the cosines are to this run's float32
    gradients (:func:`exact_reference`, the base label's for ``grad_cosine_to_fp32_sdo``)."""
    base = measured.get("none", {})
    if one_pass:
        ref_name, reference = exact_reference(measured)
        fp32_sdo = {label: res.get("grad") for label, res in measured.items()}
    return [common.case_record(label, steps, res, base, reference,
                               (fp32_sdo or {}).get(label.partition("@")[0]) if "@" in label else None,
                               **(one_pass_extra(res, base, ref_name) if one_pass else {}), model=work.model,
                               device=device)
            for label, res in measured.items()]


def one_pass_extra(res: dict[str, Any], sampling: dict[str, Any], reference_name: str | None) -> dict[str, Any]:
    """The keys a ``--one-pass`` record adds (:data:`ONE_PASS_KEYS`), from its fresh process's figures."""
    grad = res.get("grad")
    return {"cpu_ratio_to_sampling": ratio(res.get("cpu_seconds"), sampling.get("cpu_seconds")),
            "exact_reference": reference_name if grad is not None else None,
            "grad_norm": float(grad.double().norm()) if grad is not None else None,
            **{key: res.get(key) for key in ("warmup_peak_bytes", "predicted_peak_bytes", "mem_budget_bytes",
                                             "skipped", "loadavg_1min")}}


def case_line(label: str, steps: int, res: dict[str, Any], total: float) -> str:
    """The log line of a ``--one-pass`` case."""
    head = f"{label} N={steps}: "
    if res.get("skipped"):
        return head + f"SKIPPED: {res['skipped']} ({total:.0f} s incl. build and warm-up)"
    return head + (f"{res['seconds']:.1f} s wall, {res['cpu_seconds']:.1f} s CPU, peak "
                   f"{res['peak_mem_bytes'] / 2**30:.2f} GiB; warm-up {res['warmup_seconds']:.1f} s; "
                   f"{total:.0f} s in all; load {res['loadavg_1min']:.2f}")


# ---------------------------------------------------------------- reporting
# The table's columns after policy and N: (header, record key, scale, format). A --one-pass run's records (they have
# ``skipped``) show CPU seconds and peak RSS in GiB; the timed run's its medians and the allocator's or RSS peak.
TIMED_COLUMNS = (("seconds", "seconds", 1, ".3f"), ("× sampling", "ratio_to_sampling", 1, ".2f"),
                 ("peak mem (MiB)", "peak_mem_bytes", 2**-20, ".1f"), ("grad cosine", "grad_cosine", 1, ".4f"),
                 ("cosine to fp32 SDO", "grad_cosine_to_fp32_sdo", 1, ".4f"))
ONE_PASS_COLUMNS = (("wall s", "seconds", 1, ".1f"), ("CPU s", "cpu_seconds", 1, ".1f"),
                    ("× sampling (CPU s)", "cpu_ratio_to_sampling", 1, ".2f"),
                    ("peak RSS GiB", "peak_mem_bytes", 2**-30, ".2f"), ("cosine to exact", "grad_cosine", 1, ".4f"))


def cost_table(records: Records) -> str:
    """One row per case, N grouped; a skipped case shows its reason, a --one-pass run its exact reference."""
    one_pass = any("skipped" in rec for rec in records)
    columns = ONE_PASS_COLUMNS if one_pass else TIMED_COLUMNS

    def cells(rec: dict[str, Any]) -> list[str]:
        if rec.get("skipped"):
            return [f"skipped: {rec['skipped']}", *[""] * (len(columns) - 1)]
        return [fmt_or_dash(None if rec.get(key) is None else rec[key] * scale, spec)
                for _, key, scale, spec in columns]

    lines = markdown_table(["policy", "N", *(header for header, *_ in columns)],
                           [[rec["policy"], rec["steps"], *cells(rec)] for rec in records], "lrrrrrr")
    if one_pass:
        refs = sorted({rec["exact_reference"] for rec in records if rec.get("exact_reference")})
        lines.append(f"\nexact reference: {', '.join(refs) or 'none (neither full nor checkpoint ran)'}")
    return "\n".join(lines)


def check_targets(records: Records) -> list[str]:
    """PASS/FAIL/SKIP line per target (SKIP when a needed case was not run)."""
    t = functools.partial(record_value, records, key="seconds")  # t(policy, N)
    m = functools.partial(record_value, records, key="peak_mem_bytes")
    points = [(r["steps"], r["peak_mem_bytes"]) for r in records if r["policy"] == "full" and r["peak_mem_bytes"]]
    _, slope, r2 = line_fit(points) if len(points) >= 3 else (None, 0.0, None)
    return [
        verdict("sdo (k=0) time at N=50 <= 1.10x plain sampling", ratio(t("sdo", 50), t("none", 50)),
                lambda v: v <= 1.10, "{:.3f}x"),
        verdict("sdo (k=random) time at N=50 <= 1.10x plain sampling", ratio(t("sdo-random", 50), t("none", 50)),
                lambda v: v <= 1.10, "{:.3f}x"),
        verdict("full time at N=50 >= 2.5x sdo", ratio(t("full", 50), t("sdo", 50)), lambda v: v >= 2.5, "{:.2f}x"),
        verdict("checkpoint time at N=50 >= 3.5x sdo", ratio(t("checkpoint", 50), t("sdo", 50)),
                lambda v: v >= 3.5, "{:.2f}x"),
        verdict("full peak memory at N=50 >= 10x sdo", ratio(m("full", 50), m("sdo", 50)), lambda v: v >= 10,
                "{:.1f}x"),
        verdict("sdo peak memory at N=100 <= 1.10x N=10", ratio(m("sdo", 100), m("sdo", 10)),
                lambda v: v <= 1.10, "{:.3f}x"),
        verdict("full peak memory grows linearly in N (R^2 of a line >= 0.99)", r2, lambda v: v >= 0.99,
                "R^2 = {:.4f}, " + f"{slope / 2**20:.2f} MiB per step")]


def check_precision_targets(records: Records) -> list[str]:
    """PASS/FAIL line per SDO label with a precision suffix: time at N=50 <= 0.75x float32 plain
    sampling (``none``) and cosine >= 0.99 to the float32 SDO gradient."""
    lines = []
    for rec in records:
        if rec["steps"] != 50 or not rec["policy"].startswith("sdo") or "@" not in rec["policy"]:
            continue
        base, cos = record_value(records, "none", 50, "seconds"), rec["grad_cosine_to_fp32_sdo"]
        if rec["seconds"] is None or not base or cos is None:
            lines.append(f"SKIP  {rec['policy']} at N=50: case not run")
            continue
        share = rec["seconds"] / base
        status = "PASS" if share <= 0.75 and cos >= 0.99 else "FAIL"
        lines.append(f"{status}  {rec['policy']} at N=50 <= 0.75x fp32 plain sampling with cosine >= 0.99 to "
                     f"fp32 SDO: {share:.3f}x, cosine {cos:.4f}")
    return lines


def print_report(records: Records, model: str, frontier: bool = False, out: Path | None = None,
                 title: str | None = None) -> None:
    """The table, the PASS/FAIL lines, Table 3's ratios and the tail frontier of a run's records."""
    print(cost_table(records))
    print()
    print("\n".join(check_targets(records) + baseline_targets(records) + check_precision_targets(records)))
    # Table 3's rows are the baselines as the paper ran them (the defaults: every level's state kept, N latents);
    # their memory flat in N is checked above on the -states=ends labels
    if any(rec["policy"] in ("adjoint", "doodl") for rec in records):
        print("\n" + "\n".join(paper_ratio_lines(records, model)))
    print("\n".join(tail_frontier_lines(records)))
    if frontier and out is not None:
        print(f"frontier plot: {plot_frontier(records, out, title or model)}", file=sys.stderr)
# ---------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="small-unet", help=f"network: {', '.join(common.MODELS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="comma-separated N values")
    parser.add_argument("--policies", default=",".join(common.POLICIES),
                        help=f"comma-separated; presets {', '.join(common.POLICIES)} or any policy string "
                             "(adjoint, doodl, sdo-tail=4, adjoint-states=ends, ...), each optionally with a "
                             "precision of its no-grad calls: @dtype[+copy][+cl][+compile][+emulated], e.g. sdo@bf16")
    parser.add_argument("--exact-dtype", choices=("float64", "float32"), default="float64",
                        help="dtype of the exact gradient; float64 copies the network (sd15-unet on CPU: float32)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per case (median), after one warm-up per policy at the first N")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 2 small-unet, else 1)")
    parser.add_argument("--wrt", choices=("all", "latent"), default="all",
                        help="differentiate w.r.t. x_T and the weights (all) or x_T only, weights frozen (latent)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; 1 by default: OpenMP spin-waits make 2 threads on shared cores ~10x slower")
    parser.add_argument("--json", type=Path, default=None, help="write one record per case here (atomic)")
    parser.add_argument("--exact", action=argparse.BooleanOptionalAction, default=True,
                        help="compute the float64 exact gradient for grad_cosine (--no-exact for big models on CPU)")
    parser.add_argument("--frontier", action="store_true",
                        help="also plot cosine against seconds per gradient for every policy (a PNG, see --out)")
    parser.add_argument("--out", type=Path, default=Path("runs/gradient_frontier.png"),
                        help="where --frontier writes its PNG")
    parser.add_argument("--one-pass", action="store_true",
                        help="CPU, big networks: each case once in a fresh process, its exact reference this run's "
                             "float32 full or checkpoint gradient (see the module docstring)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: print the report (table, checks, ratios) of the records in this JSON")
    parser.add_argument("--mem-budget-gib", type=float, default=None,
                        help="--one-pass: skip cases whose predicted peak exceeds this (default: MemAvailable - 4 GiB)")
    args = parser.parse_args(argv)
    if args.model not in common.MODELS:
        parser.error(f"--model {args.model!r} is unknown; allowed values: {', '.join(common.MODELS)}")
    try:
        args.steps = [int(s) for s in args.steps.split(",") if s]
    except ValueError:
        parser.error(f"--steps {args.steps!r} must be comma-separated integers, e.g. 10,25,50,100")
    if not args.steps or min(args.steps) < 1:
        parser.error("--steps needs at least one N >= 1")
    args.policies = list(dict.fromkeys(p for p in args.policies.split(",") if p))  # each label once
    for label in args.policies:
        try:
            common.parse_label(label)[0].check_steps(min(args.steps))
        except ValueError as err:
            parser.error(f"--policies {label!r} (smallest --steps {min(args.steps)}): {err}")
    # plain sampling is the time reference; it is always measured (first, so the table reads top-down)
    args.policies = ["none"] + [p for p in args.policies if p != "none"]
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    args.batch = args.batch or common.DEFAULT_BATCH[args.model]
    if args.one_pass and args.device != "cpu":
        parser.error(f"--one-pass measures peak RSS and CPU seconds of a CPU process; --device {args.device!r} "
                     "is not allowed with it (use --device cpu)")
    if args.mem_budget_gib is not None and (not args.one_pass or args.mem_budget_gib <= 0):
        parser.error(f"--mem-budget-gib {args.mem_budget_gib} needs --one-pass and a value > 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.from_json is not None:  # report only: the records of an earlier run
        records = json.loads(args.from_json.read_text())
        print_report(records, records[0]["model"] if records else args.model, args.frontier, args.out)
        return records
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"gradient cost: model={args.model} device={args.device} batch={args.batch} wrt={args.wrt} "
        f"threads={args.threads} repeats={args.repeats} steps={args.steps}")
    if args.one_pass:
        log("one pass per case; exact reference: this run's float32 full gradient, else checkpoint's")
    elif not args.exact or args.exact_dtype != "float64":
        log("exact reference: " + (f"{args.exact_dtype} full backprop" if args.exact
                                   else "skipped (--no-exact); grad_cosine is not measured"))
    work = common.Workload(args.model, args.batch, args.wrt, args.threads)
    if args.one_pass:
        budget = None if args.mem_budget_gib is None else int(args.mem_budget_gib * 2**30)
        records = one_pass_run(work, args.steps, args.policies, log, budget, args.json)
    else:
        records = timed_run(work, args.device, args.steps, args.policies, args.repeats, log,
                            args.exact_dtype if args.exact else None)
    title = f"{args.model}, batch {args.batch}, DDIM, wrt {args.wrt}: fidelity against cost"
    print_report(records, args.model, args.frontier, args.out, title)
    if args.json is not None:
        write_json(args.json, records)
    return records


if __name__ == "__main__":
    main()
