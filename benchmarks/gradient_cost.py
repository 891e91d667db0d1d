"""Cost of one gradient through an N-step sampler, for every gradient policy (paper Table 3).

Per (policy, N) case, through the library's :func:`lit_sdo.sampling.sample` (record keys:
:data:`benchmarks.common.RECORD_KEYS`):
- ``seconds`` and ``cpu_seconds``: wall and process CPU time (all threads; None on CUDA) of one gradient, sampling
  forward + backward: median of ``--repeats`` runs after a warm-up per policy, run round-robin so load from other
  processes hits every policy alike; on a shared machine compare CPU seconds;
- ``peak_mem_bytes``: peak above the baseline before the call: CUDA's allocator peak, or on a CPU the peak RSS of a
  FRESH process per case (an interpreter with torch already holds ~0.9 GB, and glibc keeps freed blocks);
- ``ratio_to_sampling``: ``seconds`` over plain sampling's (policy ``none``) in the same run;
- ``grad_cosine``: cosine of the gradient w.r.t. x_T to the exact one, ``full`` backprop in float64 (``checkpoint``
  if ``full`` runs out of memory; ``--exact-dtype float32`` where a float64 copy does not fit; ``--no-exact``: None);
- ``grad_cosine_to_fp32_sdo``: for SDO at a lower precision (``sdo@bf16``), cosine to float32 SDO's gradient.

A label may carry the precision of its no-grad calls after ``@`` (:func:`benchmarks.common.parse_label`):
``sdo@bf16``, ``none@bf16``, ``sdo@bf16+copy``, ``sdo@fp32+cl+compile``. The loss is the squared distance of x₀
(``sd15``: the VAE's decoded image) to a fixed random target, w.r.t. x_T AND the weights by default (``--wrt all``:
every policy has something to differentiate; DRaFT/AlignProp truncations give x_T no gradient, cosine 0);
``--wrt latent`` freezes the network (Table 3's latent optimisation).

``--one-pass`` (CPU, networks at the paper's sizes) runs each case ONCE, in its fresh process
(:func:`benchmarks.common.fresh_process_case`), and skips a case predicted not to fit ``--mem-budget-gib``
(default MemAvailable - 4 GiB: an OOM kill on a shared machine takes other processes with it); its exact reference
is this run's float32 ``full`` gradient, else ``checkpoint``'s, and its records add :data:`ONE_PASS_KEYS`.

Run ``python benchmarks/gradient_cost.py`` (CPU, small UNet) or see ``--help``.
"""

from __future__ import annotations

import argparse
import copy
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
if str(ROOT) not in sys.path:  # runnable as `python benchmarks/gradient_cost.py` without installing
    sys.path.insert(0, str(ROOT))

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


class FreshProcesses:
    """Each case in its own fresh process. Once a warm-up has measured the peak of one graph call, a case that
    cannot fit the budget is skipped before its process starts; a process that dies is recorded as skipped."""

    def __init__(self, work: common.Workload, mem_budget_bytes: float | None) -> None:
        self.work, self.mem_budget_bytes = work, mem_budget_bytes
        self.pool = common.fresh_process_pool()
        self.graph_step_peak: int | None = None

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


def run_benchmark(work: common.Workload, device: str, steps: Sequence[int], labels: Sequence[str], repeats: int,
                  log: Callable[[str], None] = print, exact_dtype: str | None = "float64", one_pass: bool = False,
                  mem_budget_bytes: float | None = None, json_path: Path | None = None) -> Records:
    """One record per (policy, N) case: timed here (``repeats``), a CPU case's peak RSS in its fresh process; with
    ``one_pass``, everything once in that process (the network is never built here). ``exact_dtype`` None: no
    exact reference. With ``json_path`` the records so far are written after every case (atomic)."""
    setup = None if one_pass else common.build_setup(work.model, device, work.batch, work.wrt)
    fresh = FreshProcesses(work, mem_budget_bytes if one_pass else math.inf) if device == "cpu" else None
    records: Records = []
    try:
        warmup: dict[str, float] = {}
        for label in labels if setup is not None else ():  # at the first N: lazy kernels, allocator caches, compile
            warmup[label] = common.measure(lambda: common.label_gradient(setup, steps[0], label), device)[1]["seconds"]  # noqa: B023
            log(f"warm-up {label}: {warmup[label]:.1f} s (includes torch.compile where asked)")
        for n in steps:
            started = time.perf_counter()
            reference, fp32_sdo, measured = None, {}, {}
            if setup is not None:
                reference = exact_gradient(setup, n, getattr(torch, exact_dtype)) if exact_dtype else None
                fp32_sdo = fp32_sdo_gradients(setup, n, labels)
                common.release_memory(setup.x_T.device)
                measured = timed_repeats(setup, n, labels, repeats, warmup)
            timed = time.perf_counter()
            for label in labels if fresh is not None else ():
                case_started, res = time.perf_counter(), fresh.run(n, label)
                if one_pass:
                    measured[label] = res | {"loadavg_1min": os.getloadavg()[0]}
                    log(case_line(label, n, measured[label], time.perf_counter() - case_started))
                    if json_path is not None:
                        write_json(json_path, records + case_records(work, device, n, measured, one_pass=True))
                else:
                    measured[label]["peak_mem_bytes"] = res.get("peak_mem_bytes")
            records += case_records(work, device, n, measured, reference, fp32_sdo, one_pass)
            if not one_pass:
                log(f"N={n}: {time.perf_counter() - started:.1f} s ({timed - started:.1f} s exact gradient + timing)")
    finally:
        if fresh is not None:
            fresh.pool.shutdown()
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
    records = []
    for label, res in measured.items():
        grad, extra = res.get("grad"), {}
        if one_pass:
            extra = {"cpu_ratio_to_sampling": ratio(res.get("cpu_seconds"), base.get("cpu_seconds")),
                     "exact_reference": ref_name if grad is not None else None,
                     "grad_norm": float(grad.double().norm()) if grad is not None else None,
                     **{key: res.get(key) for key in ("warmup_peak_bytes", "predicted_peak_bytes", "mem_budget_bytes",
                                                      "skipped", "loadavg_1min")}}
        sdo = (fp32_sdo or {}).get(label.partition("@")[0]) if "@" in label else None
        records.append(common.case_record(label, steps, res, base, reference, sdo, **extra, model=work.model,
                                          device=device))
    return records


def case_line(label: str, steps: int, res: dict[str, Any], total: float) -> str:
    """The log line of a ``--one-pass`` case."""
    head = f"{label} N={steps}: "
    if res.get("skipped"):
        return head + f"SKIPPED: {res['skipped']} ({total:.0f} s incl. build and warm-up)"
    return head + (f"{res['seconds']:.1f} s wall, {res['cpu_seconds']:.1f} s CPU, peak "
                   f"{res['peak_mem_bytes'] / 2**30:.2f} GiB; warm-up {res['warmup_seconds']:.1f} s; "
                   f"{total:.0f} s in all; load {res['loadavg_1min']:.2f}")


# ---------------------------------------------------------------- reporting
def cost_table(records: Records) -> str:
    """One row per case, N grouped."""
    rows = [[rec["policy"], rec["steps"], fmt_or_dash(rec["seconds"], ".3f"),
             fmt_or_dash(rec["ratio_to_sampling"], ".2f"),
             fmt_or_dash(None if rec["peak_mem_bytes"] is None else rec["peak_mem_bytes"] / 2**20, ".1f"),
             fmt_or_dash(rec["grad_cosine"], ".4f"), fmt_or_dash(rec.get("grad_cosine_to_fp32_sdo"), ".4f")]
            for rec in records]
    return "\n".join(markdown_table(["policy", "N", "seconds", "× sampling", "peak mem (MiB)", "grad cosine",
                                     "cosine to fp32 SDO"], rows, "lrrrrrr"))


def one_pass_table(records: Records) -> str:
    """``--one-pass``: one row per case; × sampling on CPU seconds; a skipped case shows its reason."""
    def cells(rec: dict[str, Any]) -> list[str]:
        mem = None if rec["peak_mem_bytes"] is None else rec["peak_mem_bytes"] / 2**30
        if rec.get("skipped"):
            return [f"skipped: {rec['skipped']}", "", "", "", ""]
        return [fmt_or_dash(value, spec) for value, spec in (
            (rec["seconds"], ".1f"), (rec["cpu_seconds"], ".1f"), (rec["cpu_ratio_to_sampling"], ".2f"), (mem, ".2f"),
            (rec["grad_cosine"], ".4f"))]

    lines = markdown_table(["policy", "N", "wall s", "CPU s", "× sampling (CPU s)", "peak RSS GiB", "cosine to exact"],
                           [[rec["policy"], rec["steps"], *cells(rec)] for rec in records], "lrrrrrr")
    refs = {rec["exact_reference"] for rec in records if rec.get("exact_reference")}
    lines.append(f"\nexact reference: {', '.join(sorted(refs)) if refs else 'none (neither full nor checkpoint ran)'}")
    return "\n".join(lines)


def check_targets(records: Records) -> list[str]:
    """PASS/FAIL/SKIP line per target (SKIP when a needed case was not run)."""
    def t(p: str, n: int) -> float | None:
        return record_value(records, p, n, "seconds")

    def m(p: str, n: int) -> float | None:
        return record_value(records, p, n, "peak_mem_bytes")

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
    print(one_pass_table(records) if any("skipped" in rec for rec in records) else cost_table(records))
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
                             "(adjoint, doodl, sdo-tail=4, adjoint-solver=rk4-substeps=2, doodl-mixing=0.9; "
                             "adjoint and doodl keep every level's state, N latents: the flat-memory checks read "
                             "adjoint-states=ends and doodl-states=ends), each "
                             "optionally with a precision of its no-grad calls: @dtype[+copy][+cl][+compile]"
                             "[+emulated], e.g. sdo@bf16, none@bf16")
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
                        help="CPU, big networks: each case once in a fresh process (1-step warm-up, then wall s, CPU "
                             "s, peak RSS of the one run; exact reference = this run's float32 full or checkpoint "
                             "gradient; cases predicted not to fit are skipped), see the module docstring")
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
            policy = common.parse_label(label)[0]
        except ValueError as err:
            parser.error(f"--policies: {err}")
        graph_steps = policy.tail if policy.name == "sdo" else policy.last_k if policy.name == "last_k" else 0
        if graph_steps > min(args.steps):
            parser.error(f"--policies {label!r} keeps the graph of {graph_steps} final steps, more than the "
                         f"smallest --steps {min(args.steps)}; allowed: at most {min(args.steps)}")
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
    records = run_benchmark(common.Workload(args.model, args.batch, args.wrt, args.threads), args.device, args.steps,
                            args.policies, args.repeats, log, args.exact_dtype if args.exact else None, args.one_pass,
                            None if args.mem_budget_gib is None else int(args.mem_budget_gib * 2**30), args.json)
    title = f"{args.model}, batch {args.batch}, DDIM, wrt {args.wrt}: fidelity against cost"
    print_report(records, args.model, args.frontier, args.out, title)
    if args.json is not None:
        write_json(args.json, records)
    return records


if __name__ == "__main__":
    main()
