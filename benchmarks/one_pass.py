"""One pass per case: the gradient-cost benchmark for networks too big to run each case three times (CPU).

``gradient_cost.py --one-pass`` runs each (policy, N) case ONCE, in a fresh process (forked from the
benchmark's forkserver, so no tensors or allocator state are inherited). The child

1. builds the seeded network, then warms up with a 1-step gradient of the same label (lazy kernels,
   thread pools) and measures that warm-up's peak RSS;
2. predicts the case's peak as that 1-step peak times the model calls that keep a graph at N
   (:func:`graph_calls`) and SKIPS a case of more than one graph call (one: its warm-up has just run it), with
   its reason in ``skipped``, when the prediction exceeds the memory budget: ``MemAvailable`` minus 4 GiB
   unless ``--mem-budget-gib`` says otherwise. An upper bound, since each graph call is charged the whole
   1-step peak (which also holds the VAE decode's graph, once); an OOM kill on a shared machine would take
   other processes with it. Once an earlier case has measured the 1-step peak of one graph call, a case
   that cannot fit is skipped before its process starts;
3. measures in the same run: wall seconds, CPU seconds of the process (``time.process_time``: user + system
   time of all its threads, the honest figure on a shared machine), peak RSS above the RSS just before the
   run (VmHWM, malloc thresholds fixed as in :func:`benchmarks.common.fix_malloc_thresholds`);
4. returns the gradient w.r.t. x_T to the parent (as a NumPy array).

The exact reference here is NOT a separate float64 run: it is the float32 gradient of the ``full`` case if it
ran, else ``checkpoint``'s (the same math, recomputing each call); None (no cosine) if neither ran. The record
names it in ``exact_reference``. Records carry :data:`benchmarks.common.RECORD_KEYS` plus :data:`ONE_PASS_KEYS`.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks import common
from lit_sdo.io import write_json
from lit_sdo.sampling import GradientPolicy

ONE_PASS_KEYS = ("cpu_seconds", "cpu_ratio_to_sampling", "skipped", "exact_reference", "predicted_peak_bytes",
                 "mem_budget_bytes", "warmup_peak_bytes", "grad_norm", "loadavg_1min")
HEADROOM_BYTES = 4 * 2**30  # kept free for the other processes on the machine
# Policies whose 1-step run is exactly one model call with its graph: their warm-up peak is the cost of one
# graph call, which predicts a later case's peak before its process starts (and before its warm-up).
GRAPH_STEP_POLICIES = ("full", "sdo", "last_k", "random_truncation")


def graph_calls(policy: GradientPolicy, steps: int) -> int:
    """Model calls of an N-step run that keep their graph at once (an upper bound for random choices)."""
    if policy.name in ("full", "random_truncation"):  # random_truncation: K can be N
        return steps
    if policy.name == "last_k":
        return min(policy.last_k, steps)
    if policy.name == "sdo":
        return min(1 + policy.tail, steps)  # step k and the last ``tail`` calls (k may be among them)
    # none, checkpoint (one call recomputed at a time), adjoint, doodl: one call's graph at a time; the baselines'
    # defaults also keep every level's state (adjoint N + 1 latents, doodl 2N), not graphs: flat only with states=ends
    return 1


def predicted_peak(calls: int, one_call_peak: int, mem_budget_bytes: int | None, source: str = "",
                   note: str = "") -> dict[str, Any]:
    """The predicted peak of ``calls`` graph calls, the budget, and ``skipped`` (why) when it does not fit."""
    budget = common.mem_available_bytes() - HEADROOM_BYTES if mem_budget_bytes is None else mem_budget_bytes
    out: dict[str, Any] = {"predicted_peak_bytes": one_call_peak * calls, "mem_budget_bytes": budget}
    if calls > 1 and one_call_peak * calls > budget:  # one graph call: the warm-up has just run it
        out["skipped"] = (f"predicted peak {one_call_peak * calls / 2**30:.2f} GiB ({calls} graph calls x the 1-step "
                          f"peak {one_call_peak / 2**30:.2f} GiB{source}) > budget {budget / 2**30:.2f} GiB{note}")
    return out


def one_pass_case(model: str, steps: int, label: str, batch: int, wrt: str, threads: int,
                  mem_budget_bytes: int | None) -> dict[str, Any]:
    """Run in a fresh process: warm-up, memory prediction, then the one measured gradient (module docstring).

    Returns the measurements with ``grad`` (d loss / d x_T, None for ``none``) or ``skipped`` (the reason)."""
    common.fix_malloc_thresholds()
    torch.set_num_threads(threads)
    policy, precision = common.parse_label(label)
    setup = common.build_setup(model, "cpu", batch, wrt)
    gc.collect()
    # warm-up: the same policy on a 1-step run (a tail or last_k longer than one step is cut to it)
    one_step = dataclasses.replace(policy, tail=min(policy.tail, 1), last_k=1)
    warmup = common.measure(lambda: common.one_gradient(setup, 1, one_step, precision=precision))[1]
    gc.collect()
    out = {"warmup_seconds": warmup["seconds"], "warmup_peak_bytes": warmup["peak_mem_bytes"],
           **predicted_peak(graph_calls(policy, steps), warmup["peak_mem_bytes"], mem_budget_bytes)}
    if out.get("skipped"):
        return out
    grad, cost = common.measure(lambda: common.one_gradient(setup, steps, policy, precision=precision))
    out |= cost
    # a NumPy copy: a pickled tensor would travel in shared memory, gone once this process exits
    out["grad"] = None if grad is None else grad.detach().numpy().copy()
    return out


def exact_reference(results: dict[str, dict[str, Any]]) -> tuple[str | None, Tensor | None]:
    """The float32 ``full`` gradient if that case ran, else ``checkpoint``'s; (None, None) if neither did."""
    for label in ("full", "checkpoint"):
        grad = results.get(label, {}).get("grad")
        if grad is not None:
            return f"{label} (float32, this run)", grad
    return None, None


def case_records(model: str, steps: int, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per label of one N, in the order run; cosines against :func:`exact_reference`."""
    ref_name, reference = exact_reference(results)
    base = results.get("none", {})
    records = []
    for label, res in results.items():
        grad = res.get("grad")
        fp32_sdo = results.get(label.partition("@")[0], {}).get("grad") if "@" in label else None
        records.append(common.case_record(
            label, steps, res, base, reference, fp32_sdo,
            cpu_ratio_to_sampling=common.ratio(res.get("cpu_seconds"), base.get("cpu_seconds")),
            exact_reference=ref_name if grad is not None else None,
            grad_norm=float(grad.double().norm()) if grad is not None else None,
            **{key: res.get(key) for key in ("warmup_peak_bytes", "predicted_peak_bytes", "mem_budget_bytes",
                                             "skipped", "loadavg_1min")}, model=model, device="cpu"))
    return records


def run_one_pass(model: str, steps: Sequence[int], labels: Sequence[str], batch: int, wrt: str, threads: int,
                 log: Callable[[str], None] = print, mem_budget_bytes: int | None = None,
                 json_path: Path | None = None) -> list[dict[str, Any]]:
    """Every (policy, N) case once, each in its own fresh process; one record per case. With ``json_path``
    the records so far are written after every case (atomic), so a run cut short keeps what it measured."""
    records: list[dict[str, Any]] = []
    graph_step_peak: int | None = None  # peak of one graph call (1-step warm-up of full/sdo/last_k), once known
    pool = common.fresh_process_pool()
    try:
        for n in steps:
            results: dict[str, dict[str, Any]] = {}
            for label in labels:
                started, policy = time.perf_counter(), common.parse_label(label)[0]
                # The budget here is taken before the case's network is built, so it is larger than the child's:
                # a case skipped here would be skipped by the child too; one that passes is checked again there.
                res = {} if graph_step_peak is None else predicted_peak(
                    graph_calls(policy, n), graph_step_peak, mem_budget_bytes, " of an earlier case's warm-up",
                    " (not started)")
                if not res.get("skipped"):
                    res, pool = _run_case(pool, model, n, label, batch, wrt, threads, mem_budget_bytes)
                    if policy.name in GRAPH_STEP_POLICIES and res.get("warmup_peak_bytes"):
                        graph_step_peak = max(graph_step_peak or 0, res["warmup_peak_bytes"])
                res["loadavg_1min"] = os.getloadavg()[0]
                results[label] = res
                log(_case_line(label, n, res, time.perf_counter() - started))
                if json_path is not None:
                    write_json(json_path, records + case_records(model, n, results))
            records += case_records(model, n, results)
    finally:
        pool.shutdown()
    return records


def _run_case(pool: ProcessPoolExecutor, model: str, steps: int, label: str, batch: int, wrt: str, threads: int,
              mem_budget_bytes: int | None) -> tuple[dict[str, Any], ProcessPoolExecutor]:
    """One case in a fresh process; a child that dies (killed) is recorded as skipped and the pool replaced."""
    try:
        res = pool.submit(one_pass_case, model, steps, label, batch, wrt, threads, mem_budget_bytes).result()
    except BrokenProcessPool:
        pool.shutdown()
        return {"skipped": "the case's process died (killed, e.g. out of memory)"}, common.fresh_process_pool()
    if res.get("grad") is not None:
        res["grad"] = torch.from_numpy(res["grad"])
    return res, pool


def _case_line(label: str, steps: int, res: dict[str, Any], total: float) -> str:
    head = f"{label} N={steps}: "
    if res.get("skipped"):
        return head + f"SKIPPED: {res['skipped']} ({total:.0f} s incl. build and warm-up)"
    return head + (f"{res['seconds']:.1f} s wall, {res['cpu_seconds']:.1f} s CPU, peak "
                   f"{res['peak_mem_bytes'] / 2**30:.2f} GiB; warm-up {res['warmup_seconds']:.1f} s; "
                   f"{total:.0f} s in all; load {res['loadavg_1min']:.2f}")


def one_pass_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per case; × sampling on CPU seconds; a skipped case shows its reason."""
    def cells(rec: dict[str, Any]) -> list[str]:
        mem = None if rec["peak_mem_bytes"] is None else rec["peak_mem_bytes"] / 2**30
        if rec.get("skipped"):
            return [f"skipped: {rec['skipped']}", "", "", "", ""]
        return [common.fmt_or_dash(value, spec) for value, spec in (
            (rec["seconds"], ".1f"), (rec["cpu_seconds"], ".1f"), (rec["cpu_ratio_to_sampling"], ".2f"), (mem, ".2f"),
            (rec["grad_cosine"], ".4f"))]

    lines = common.markdown_table(["policy", "N", "wall s", "CPU s", "× sampling (CPU s)", "peak RSS GiB",
                                   "cosine to exact"], [[rec["policy"], rec["steps"], *cells(rec)] for rec in records],
                                  "lrrrrrr")
    refs = {rec["exact_reference"] for rec in records if rec.get("exact_reference")}
    lines.append(f"\nexact reference: {', '.join(sorted(refs)) if refs else 'none (neither full nor checkpoint ran)'}")
    return "\n".join(lines)
