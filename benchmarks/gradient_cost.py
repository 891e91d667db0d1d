"""Cost of one gradient through an N-step sampler, for every gradient policy (paper Table 3).

For each policy and N it measures, through the library's public :func:`lit_sdo.sampling.sample`:
- ``seconds``: wall time of one gradient (sampling forward + backward), median of ``--repeats`` runs
  after a warm-up; policies run round-robin so load from other processes hits all of them alike;
- ``peak_mem_bytes``: peak memory above the baseline before the case. CUDA: ``max_memory_allocated``
  minus ``memory_allocated``. CPU: peak RSS of a FRESH process per case (forked from a server that has
  only imported the libraries), because the interpreter with torch already holds ~0.9 GB and glibc keeps
  freed blocks; the child fixes malloc's mmap threshold so freed tensors leave RSS;
- ``cpu_seconds``: CPU time of the process (``time.process_time``, all threads) over the same calls, median;
  the figure to compare on a shared machine, where wall time also counts other processes' load (None on CUDA);
- ``ratio_to_sampling``: ``seconds`` over plain sampling's (policy ``none``) in the same run;
- ``grad_cosine``: cosine between the policy's gradient w.r.t. x_T and the exact one, i.e. ``full``
  backprop computed separately in float64 (``checkpoint`` if ``full`` runs out of memory; ``--exact-dtype
  float32`` for networks whose float64 copy does not fit, ``--no-exact`` to leave it out: then None);
- ``grad_cosine_to_fp32_sdo``: for SDO run at a lower precision (``sdo@bf16``), the cosine to the same
  SDO policy's float32 gradient (same k); None for other policies.

A policy label may carry the precision of its no-grad model calls after ``@``
(:func:`benchmarks.common.parse_label`): ``sdo@bf16``, ``none@bf16``, ``sdo@bf16+copy``, ``sdo@fp32+cl+compile``.

The loss is the squared distance of x₀ (the VAE's decoded image for ``sd15``) to a fixed random target.
By default (``--wrt all``) the gradient is taken w.r.t. x_T AND the network's parameters, so every policy
has something to differentiate (DRaFT-K / AlignProp truncations give no gradient to x_T at all: their cosine
is 0) and backward costs B ≈ 2F (a backward of about two forwards); ``--wrt latent`` freezes the network (the
latent-optimisation setting of Table 3).

Run ``python benchmarks/gradient_cost.py`` (CPU, small UNet) or see ``--help``. For networks at the paper's
sizes on a CPU, ``--one-pass`` (:mod:`benchmarks.one_pass`) runs each case once in a fresh process instead of
warm-up + repeats + float64 reference + a separate peak-RSS process.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python benchmarks/gradient_cost.py` without installing
    sys.path.insert(0, str(ROOT))

from benchmarks.baseline_report import (  # noqa: E402
    baseline_targets,
    paper_ratio_lines,
    plot_frontier,
    tail_frontier_lines,
)
from benchmarks.common import (  # noqa: E402
    DEFAULT_BATCH,
    MODELS,
    POLICIES,
    Records,
    Setup,
    build_setup,
    case_record,
    fmt_or_dash,
    fresh_process_pool,
    label_gradient,
    line_fit,
    markdown_table,
    measure,
    one_gradient,
    parse_label,
    peak_rss_worker,
    policy_for,
    ratio,
    record_value,
    release_memory,
    verdict,
)
from benchmarks.common import cosine as cosine  # noqa: E402 - re-exported: tests/test_precision.py uses it
from benchmarks.one_pass import one_pass_table, run_one_pass  # noqa: E402
from lit_sdo.io import write_json  # noqa: E402

DEFAULT_STEPS = (10, 25, 50, 100)


def exact_gradient(setup: Setup, steps: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The exact d loss / d x_T: ``full`` backprop in ``dtype`` (``checkpoint`` if ``full`` does not fit)."""
    exact = copy.copy(setup)  # float64: a converted deep copy; float32: the network itself, frozen for the call
    trainable = [p for p in setup.denoiser.parameters() if p.requires_grad]
    exact.denoiser = copy.deepcopy(setup.denoiser).to(dtype) if dtype != setup.x_T.dtype else setup.denoiser
    exact.denoiser.requires_grad_(False)
    exact.x_T, exact.target = setup.x_T.to(dtype), setup.target.to(dtype)
    exact.cond = setup.cond.to(dtype) if setup.cond is not None and setup.cond.is_floating_point() else setup.cond
    try:
        try:
            grad = one_gradient(exact, steps, POLICIES["full"])
        except torch.OutOfMemoryError:
            release_memory(exact.x_T.device)
            grad = one_gradient(exact, steps, POLICIES["checkpoint"])
        assert grad is not None
        return grad.to(setup.x_T.dtype)
    finally:
        for p in trainable:
            p.requires_grad_(True)


def timed_gradient(setup: Setup, steps: int, label: str, policy_seed: int) -> dict[str, Any]:
    """seconds, cpu_seconds (None on CUDA), CUDA peak_mem_bytes (None on CPU: a fresh process measures it) and
    grad of one call."""
    grad, cost = measure(lambda: label_gradient(setup, steps, label, policy_seed), setup.x_T.device)
    return cost | {"grad": grad} | ({} if setup.x_T.is_cuda else {"peak_mem_bytes": None})


def run_benchmark(model: str, device: str, steps: Sequence[int], labels: Sequence[str], repeats: int,
                  batch: int, wrt: str, threads: int, log: Callable[[str], None] = print,
                  exact: bool = True, exact_dtype: str = "float64") -> Records:
    """Measure every (policy, N) case; returns one record per case (``RECORD_KEYS`` + model, device).

    ``exact=False`` skips the exact reference gradient (``grad_cosine`` None), ``exact_dtype`` is its
    dtype (``float64``; ``float32`` where a float64 copy of the network does not fit).
    """
    setup = build_setup(model, device, batch, wrt)
    dev = setup.x_T.device
    records = []
    pool = fresh_process_pool() if dev.type == "cpu" else None
    try:
        warmup: dict[str, float] = {}
        for label in labels:  # warm-up at the first N: lazy kernels, thread pools, allocator caches, compile
            warmup[label] = measure(lambda: label_gradient(setup, steps[0], label), dev)[1]["seconds"]  # noqa: B023
            log(f"warm-up {label}: {warmup[label]:.1f} s (includes torch.compile where asked)")
        for n in steps:
            started = time.perf_counter()
            reference = exact_gradient(setup, n, getattr(torch, exact_dtype)) if exact else None
            fp32_sdo = fp32_sdo_gradients(setup, n, labels)
            release_memory(dev)
            calls: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
            failed: set[str] = set()
            for r in range(repeats):  # round-robin, rotated, so background load hits every policy alike
                ok = [label for label in labels if label not in failed]
                for label in ok[r % len(ok):] + ok[: r % len(ok)]:
                    try:
                        calls[label].append(timed_gradient(setup, n, label, policy_seed=r))
                    except torch.OutOfMemoryError:
                        failed.add(label)
                        release_memory(dev)
            timed = time.perf_counter()
            ok = [label for label in labels if label not in failed]
            cpu_peaks = _cpu_peaks(pool, model, n, ok, batch, wrt, threads) if pool is not None else {}
            measured = {label: _medians(calls[label], warmup.get(label), cpu_peaks.get(label)) for label in labels}
            records += [case_record(label, n, measured[label], measured.get("none", {}), reference,
                                    fp32_sdo.get(label.partition("@")[0]) if "@" in label else None,
                                    model=model, device=str(dev)) for label in labels]
            log(f"N={n}: {time.perf_counter() - started:.1f} s ({timed - started:.1f} s exact gradient + timing)")
    finally:
        if pool is not None:
            pool.shutdown()
    return records


def _medians(calls: list[dict[str, Any]], warmup: float | None, cpu_peak: int | None) -> dict[str, Any]:
    """One case's measurements: medians of its timed calls; the first call's gradient and CUDA peak."""
    def median(key: str) -> float | None:
        values = [c[key] for c in calls if c[key] is not None]
        return statistics.median(values) if values else None

    first = calls[0] if calls else {}
    return {"seconds": median("seconds"), "cpu_seconds": median("cpu_seconds"), "warmup_seconds": warmup,
            "peak_mem_bytes": first.get("peak_mem_bytes") if cpu_peak is None else cpu_peak, "grad": first.get("grad")}


def _cpu_peaks(pool: Any, model: str, steps: int, labels: Sequence[str], batch: int, wrt: str,
               threads: int) -> dict[str, int]:
    """Peak RSS of each case, each in its own fresh process."""
    futures = {label: pool.submit(peak_rss_worker, model, steps, label, batch, wrt, threads) for label in labels}
    return {label: future.result() for label, future in futures.items()}


def fp32_sdo_gradients(setup: Setup, steps: int, labels: Sequence[str]) -> dict[str, Tensor]:
    """The float32 gradient of each SDO base policy that some label runs at another precision
    (policy seed 0, as the compared first repeat), keyed by the base label (``sdo``, ``sdo-random``)."""
    bases = sorted({label.partition("@")[0] for label in labels if "@" in label})
    return {base: one_gradient(setup, steps, policy_for(base), policy_seed=0)  # type: ignore[misc]
            for base in bases if policy_for(base).name == "sdo"}


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
    parser.add_argument("--model", default="small-unet", help=f"network: {', '.join(MODELS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="comma-separated N values")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"comma-separated; presets {', '.join(POLICIES)} or any policy string "
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
                             "gradient; cases predicted not to fit are skipped), see benchmarks/one_pass.py")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: print the report (table, checks, ratios) of the records in this JSON")
    parser.add_argument("--mem-budget-gib", type=float, default=None,
                        help="--one-pass: skip cases whose predicted peak exceeds this (default: MemAvailable - 4 GiB)")
    args = parser.parse_args(argv)
    if args.model not in MODELS:
        parser.error(f"--model {args.model!r} is unknown; allowed values: {', '.join(MODELS)}")
    try:
        args.steps = [int(s) for s in args.steps.split(",") if s]
    except ValueError:
        parser.error(f"--steps {args.steps!r} must be comma-separated integers, e.g. 10,25,50,100")
    if not args.steps or min(args.steps) < 1:
        parser.error("--steps needs at least one N >= 1")
    args.policies = list(dict.fromkeys(p for p in args.policies.split(",") if p))  # each label once
    for label in args.policies:
        try:
            policy = parse_label(label)[0]
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
    args.batch = args.batch or DEFAULT_BATCH[args.model]
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
        budget = None if args.mem_budget_gib is None else int(args.mem_budget_gib * 2**30)
        records = run_one_pass(args.model, args.steps, args.policies, args.batch, args.wrt, args.threads, log,
                               mem_budget_bytes=budget, json_path=args.json)
    else:
        if not args.exact or args.exact_dtype != "float64":
            log("exact reference: " + (f"{args.exact_dtype} full backprop" if args.exact
                                       else "skipped (--no-exact); grad_cosine is not measured"))
        records = run_benchmark(args.model, args.device, args.steps, args.policies, args.repeats, args.batch,
                                args.wrt, args.threads, log, exact=args.exact, exact_dtype=args.exact_dtype)
    title = f"{args.model}, batch {args.batch}, DDIM, wrt {args.wrt}: fidelity against cost"
    print_report(records, args.model, args.frontier, args.out, title)
    if args.json is not None:
        write_json(args.json, records)
    return records


if __name__ == "__main__":
    main()
