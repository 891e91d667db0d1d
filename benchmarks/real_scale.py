"""Every paper config end to end at FULL model size: the real architectures with random weights.

Each config's models are built once at their released shapes and layout (:mod:`lit_sdo.models.standins`, cached
under ``--cache``) and ``lit-sdo fit`` runs in its own process at batch 1; printed per config: wall time, CPU time
and peak RSS of that process, what it wrote, PASS/FAIL. ``--reward-cost`` compares the CPU time of one SD1.5 reward
step under SDO with AlignProp's random truncation (paper Sec. 5.2: SDO ≈ 50 %).

    python benchmarks/real_scale.py [--only edit/celebahq,attack/imagenet_adm] [--list] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lit_sdo, also for the runs (PYTHONPATH in child_env)

from benchmarks.common import line_fit, markdown_table, mem_available_bytes  # noqa: E402
from lit_sdo.sampling import parse_policy  # noqa: E402

GIB = 1024 ** 3


@dataclass(frozen=True)
class PaperConfig:
    """One config file, the cached components it reads, its overrides (``{cache}``, ``{out}``, ``{steps}``,
    ``{opt_steps}`` filled in) and the files a successful run writes under ``{out}``."""

    name: str
    components: tuple[str, ...]
    overrides: tuple[str, ...]
    outputs: tuple[str, ...]
    memory_gib: float  # what the run is expected to need, for the free-memory wait

    @property
    def path(self) -> Path:
        return ROOT / "configs" / f"{self.name}.yaml"


def load_configs(path: Path) -> dict[str, PaperConfig]:
    """The paper configs of ``path`` (real_scale.yaml) in its order, each one's override groups before its own."""
    data = yaml.safe_load(path.read_text())
    configs = {}
    for name, c in data["configs"].items():
        overrides = [o for group in c["groups"] for o in data["groups"][group]] + c.get("overrides", [])
        configs[name] = PaperConfig(name, tuple(c["components"]), tuple(overrides),
                                    tuple(data["outputs"][c["outputs"]]), c["memory_gib"])
    return configs


CONFIGS = load_configs(Path(__file__).with_suffix(".yaml"))


@dataclass
class RunResult:
    name: str
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_gib: float
    written: list[str]
    missing: list[str]
    log: Path
    load: float  # the machine's 1-minute load average when the run started (it is shared)

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.missing


def wait_for_memory(need_gib: float, log: callable, max_wait_s: float = 1800) -> None:
    """Sleep while the machine has less than ``need_gib`` + 3 GiB available (it is shared); then go on."""
    waited = 0.0
    while mem_available_bytes() / GIB < need_gib + 3 and waited < max_wait_s:
        log(f"  waiting for memory: {mem_available_bytes() / GIB:.1f} GiB available, need {need_gib + 3:.0f}")
        time.sleep(60)
        waited += 60


def child_env(cache: Path, threads: int) -> dict[str, str]:
    """The run's environment: torch hub files from the cache, offline hub, this checkout's code first."""
    return os.environ | {"TORCH_HOME": str(cache / "torch"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                         "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "LIT_SDO_DEBUG": "1"}


def run_process(command: list[str], env: dict[str, str], log_path: Path) -> tuple[int, float, float, float]:
    """Run ``command`` to completion: (return code, wall s, CPU s of the process tree, peak RSS GiB)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    return process.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024 / GIB


def build_components(names: tuple[str, ...], cache: Path, threads: int, log: callable) -> None:
    """Build what is missing, in a fresh process (its memory is given back when it ends)."""
    from lit_sdo.models.standins import MARKER, REQUIRES

    needed = [dep for name in names for dep in (*REQUIRES.get(name, ()), name)]
    todo = [n for n in dict.fromkeys(needed) if not (cache / n / MARKER).is_file()]
    if not todo:
        return
    log(f"  building {', '.join(todo)} in {cache} (full size, random weights)")
    code, wall, _, rss = run_process([sys.executable, str(ROOT / "benchmarks/real_scale_models.py"), str(cache), *todo],
                                     child_env(cache, threads), cache / "build.log")
    if code != 0:
        raise RuntimeError(f"building {', '.join(todo)} failed; see {cache / 'build.log'}")
    log(f"  built in {wall:.0f} s (peak RSS {rss:.1f} GiB)")


def fit_command(config: PaperConfig, cache: Path, out: Path, steps: int, opt_steps: int, accelerator: str,
                extra: tuple[str, ...] = ()) -> list[str]:
    fill = {"cache": cache, "out": out, "steps": steps, "opt_steps": opt_steps}
    overrides = [o.format(**fill) for o in config.overrides]
    return [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(config.path),
            f"--trainer.accelerator={accelerator}", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
            *overrides, *extra]


def run_config(config: PaperConfig, args: argparse.Namespace, log: callable, tag: str = "",
               extra: tuple[str, ...] = ()) -> RunResult:
    out = args.out / (config.name.replace("/", "_") + tag)
    if args.check_only:  # parsed and type-checked against its classes; nothing is built or run
        import cli

        cli.parse_command_line(fit_command(config, args.cache, out, args.sampling_steps, args.opt_steps,
                                           args.accelerator, extra)[2:])
        return RunResult(config.name + tag, 0, 0.0, 0.0, 0.0, ["(command line parsed only)"], [], out, 0.0)
    build_components(config.components, args.cache, args.threads, log)
    if out.exists():
        shutil.rmtree(out)
    wait_for_memory(config.memory_gib, log)
    load = os.getloadavg()[0]
    log(f"  {mem_available_bytes() / GIB:.1f} GiB available; load average {load:.1f}")
    command = fit_command(config, args.cache, out, args.sampling_steps, args.opt_steps, args.accelerator, extra)
    code, wall, cpu, rss = run_process(command, child_env(args.cache, args.threads), out / "run.log")
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "version_" not in str(p)
                     and p.name != "run.log")
    missing = [name for name in config.outputs if not (out / name).is_file()]
    return RunResult(config.name + tag, code, wall, cpu, rss, written, missing, out / "run.log", load)


def result_row(result: RunResult) -> str:
    status = "PASS" if result.passed else f"FAIL (exit {result.returncode}" + (
        f", missing {', '.join(result.missing)})" if result.missing else ")")
    return markdown_table(COLUMNS, [[result.name, status, f"{result.wall_s:.0f}", f"{result.cpu_s:.0f}",
                                     f"{result.peak_rss_gib:.1f}", f"{result.load:.1f}",
                                     ", ".join(result.written) or "-"]])[-1]


REWARD_CONFIG = "reward/sd15_aesthetic"
COLUMNS = ("config", "status", "wall s", "CPU s", "peak RSS GiB", "load at start", "written")
TABLE_HEADER = "\n".join(markdown_table(COLUMNS, [], "llrrrrl"))


def default_reward_policies(num_steps: int) -> list[str]:
    """SDO as the config runs it (k random), and AlignProp-uniform's expectation: the fixed-K runs K = 1..N, with
    AlignProp's gradient checkpointing (K SD1.5 graphs would not fit)."""
    return ["sdo-random", *(f"last_k={k}-recompute=true" for k in range(1, num_steps + 1))]


def policy_overrides(policy: str) -> tuple[str, ...]:
    """The sampler overrides that select ``policy`` (its string carries every option; the config's ``k: random``
    is reset so that it is not applied to the policy on top)."""
    return (f"--model.init_args.sampler.policy={policy}", "--model.init_args.sampler.k=0")


def reward_cost(args: argparse.Namespace, log: callable) -> tuple[list[RunResult], list[str]]:
    """One optimiser step of configs/reward/sd15_aesthetic.yaml per policy of ``--reward-policies`` at the same
    N: the runs and the lines that compare their CPU time (:func:`reward_cost_lines`)."""
    config, at_n = CONFIGS[REWARD_CONFIG], argparse.Namespace(**{**vars(args), "sampling_steps": args.reward_steps})
    steps, results = {}, []
    for policy in args.reward_policies:
        log(f"{REWARD_CONFIG} (reward cost): {policy}, N = {args.reward_steps}")
        tag = "_cost_" + policy.replace("=", "").replace("-", "_")
        result = run_config(config, at_n, log, tag=tag, extra=policy_overrides(policy))
        results.append(result)
        if not result.passed:
            return results, [f"reward cost: {policy} FAILED, see {result.log}"]
        if args.check_only:
            continue
        history = json.loads((result.log.parent / "history.json").read_text())  # the run's own folder
        steps[policy] = [row for row in history["steps"] if "reward" in row][0]
    return results, reward_cost_lines(steps, args.reward_steps) if steps else []


def reward_cost_lines(steps: dict[str, dict], num_steps: int) -> list[str]:
    """The per-policy table, then SDO's CPU time against AlignProp-uniform's.

    AlignProp-uniform draws K uniformly from [1, N], so its expected cost is the mean of ``last_k=K`` over
    K = 1..N: given every fixed-K run (same ``recompute`` flavour), that mean is the comparison, free of the
    one draw a ``random_truncation`` step makes. A ``random_truncation`` step is compared as the draw it made."""
    table = markdown_table(["policy", "step CPU s", "step wall s", "saved-tensor GB"],
                           [[p, f"{s['cpu_seconds']:.1f}", f"{s['seconds']:.1f}", f"{s['peak_bytes'] / 1e9:.2f}"]
                            for p, s in steps.items()], "lrrr")
    references: dict[str, float] = {}
    fits: list[str] = []
    for flavour in ("", "-recompute=true"):
        fixed = {k: steps[name]["cpu_seconds"] for k in range(1, num_steps + 1)
                 if (name := f"last_k={k}{flavour}") in steps}
        if len(fixed) == num_steps:
            references[f"mean of last_k=1..{num_steps}{flavour} (AlignProp-uniform's expected cost)"] = (
                sum(fixed.values()) / num_steps)
        if len(fixed) >= 2:
            fits.append(per_call_fit(fixed, flavour))
    references |= {f"{name} (one draw)": s["cpu_seconds"] for name, s in steps.items()
                   if name.startswith("random_truncation")}
    lines = [*table, "", *fits]
    for sdo in (name for name in steps if name.startswith("sdo")):
        lines += [f"reward step, N = {num_steps}: {sdo} / {ref} CPU time = {steps[sdo]['cpu_seconds'] / cpu:.2f}"
                  for ref, cpu in references.items()]
    return lines


def per_call_fit(cost_by_k: dict[int, float], flavour: str) -> str:
    """The least-squares line CPU s = a + b·K through the fixed-K runs: b is what each more kept call costs."""
    intercept, slope, _ = line_fit(list(cost_by_k.items()))
    residual = max(abs(c - intercept - slope * k) for k, c in cost_by_k.items())
    return (f"last_k=K{flavour}: step CPU s = {intercept:.1f} + {slope:.1f}·K (least squares over K = "
            f"{', '.join(map(str, cost_by_k))}; largest residual {residual:.1f} CPU s)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated config names (see --list); default: all")
    parser.add_argument("--list", action="store_true", help="print the config names and their components, then stop")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs/real_scale/models",
                        help="where the full-size models are built once and reused")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/real_scale/out", help="one folder per run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the runs' accelerator")
    parser.add_argument("--sampling-steps", type=int, default=2, help="sampling steps N of every run")
    parser.add_argument("--opt-steps", type=int, default=1, help="optimisation steps of every run")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                        help="OMP_NUM_THREADS of the runs")
    parser.add_argument("--reward-cost", action="store_true",
                        help="also time one SD1.5 reward step per --reward-policies entry (SDO vs AlignProp), same N")
    parser.add_argument("--reward-steps", type=int, default=4, help="sampling steps N of the reward-cost runs")
    parser.add_argument("--reward-policies", default="",
                        help="comma-separated policy strings of the reward-cost runs; last_k=1..N (optionally all "
                             "with -recompute=true) give AlignProp-uniform's expected cost; default: sdo-random "
                             "and last_k=1..N-recompute=true")
    parser.add_argument("--no-configs", action="store_true", help="skip the per-config runs (e.g. --reward-cost only)")
    parser.add_argument("--check-only", action="store_true",
                        help="build and run nothing: parse every fit command line against its classes (seconds, CPU)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"--only: unknown config(s) {', '.join(unknown)}; allowed: {', '.join(CONFIGS)}")
    if min(args.sampling_steps, args.opt_steps, args.reward_steps) < 1:
        parser.error("--sampling-steps, --opt-steps and --reward-steps must be >= 1")
    args.reward_policies = ([p for p in args.reward_policies.split(",") if p]
                            or default_reward_policies(args.reward_steps))
    for policy in args.reward_policies:
        try:
            parse_policy(policy).check_steps(args.reward_steps)
        except ValueError as err:
            parser.error(f"--reward-policies: {err}")
    args.names = names or list(CONFIGS)
    args.accelerator = "gpu" if args.device == "cuda" else "cpu"
    args.cache, args.out = args.cache.resolve(), args.out.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for config in CONFIGS.values():
            print(f"{config.name}: {', '.join(config.components)}")
        return 0
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows, failed = [], 0
    # With --reward-cost, the reward config runs as its SDO cost run (its own policy) instead of a second time.
    names = [] if args.no_configs else [n for n in args.names if not (args.reward_cost and n == REWARD_CONFIG)]
    for name in names:
        log(f"{name}: N = {args.sampling_steps}, {args.opt_steps} optimisation step(s), batch 1, {args.device}")
        result = run_config(CONFIGS[name], args, log)
        failed += not result.passed
        rows.append(result_row(result))
        log(rows[-1] + ("" if result.passed else f"  (log: {result.log})"))
    cost_lines: list[str] = []
    if args.reward_cost:
        results, cost_lines = reward_cost(args, log)
        failed += sum(not r.passed for r in results)
        rows += [result_row(r) for r in results]
    if rows:
        print(f"{TABLE_HEADER}\n" + "\n".join(rows))
    if cost_lines:
        print("\n" + "\n".join(cost_lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
