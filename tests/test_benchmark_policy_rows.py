"""The paper's baselines as rows of the job benchmarks (attack, guided generation, LoRA reward).

Each script runs ``adjoint`` (AdjointDPM), ``doodl`` (DOODL) and ``sdo-tail=4`` end to end at a tiny size, and
a combination the library refuses (DOODL on a stochastic or shortcut scheduler, AdjointDPM on the shortcut
sampler) becomes a row with the library's one-line reason instead of stopping the benchmark.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from diffusers import DDIMScheduler, DDPMScheduler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import attack_policies, guided_policies, reward_policies  # noqa: E402
from benchmarks.policy_sweep import job_sampler  # noqa: E402
from lit_sdo.sampling import parse_policy  # noqa: E402
from lit_sdo.sampling.baselines import check_baseline  # noqa: E402
from lit_sdo.sampling.shortcut import ShortcutScheduler  # noqa: E402

NEW = ["adjoint", "doodl", "sdo-tail=4"]


def run_script(script: object, argv: list[str], out: Path) -> str:
    """Run a benchmark's main() with ``argv``; return the markdown it wrote."""
    script.main([*argv, "--results", str(out)])  # type: ignore[attr-defined]
    return out.read_text()


def table_rows(text: str) -> dict[str, str]:
    """First cell -> the whole row, for every markdown table row below a header."""
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| policy")
            and not line.startswith("| method")]
    return {row.split(" | ")[0][2:]: row for row in rows}


def assert_ran(row: str) -> None:
    assert "cannot run" not in row
    assert "nan" not in row.lower().replace("n/a", "")


def test_check_baseline_refuses_what_the_samplers_cannot_run() -> None:
    ddim, ddpm, shortcut = DDIMScheduler(), DDPMScheduler(), ShortcutScheduler(max_steps=8)
    for scheduler in (ddim, ddpm, shortcut):
        scheduler.set_timesteps(4)
    for policy in ("sdo", "sdo-tail=4", "full", "adjoint", "doodl"):
        check_baseline(ddim, parse_policy(policy))  # all run on DDIM
    check_baseline(ddpm, parse_policy("adjoint"))  # DDPM's probability-flow ODE exists
    with pytest.raises(ValueError, match=r"^policy 'doodl' cannot run on DDPMScheduler: .*allowed schedulers"):
        check_baseline(ddpm, parse_policy("doodl"))
    with pytest.raises(ValueError, match=r"^policy 'doodl' cannot run on ShortcutScheduler"):
        check_baseline(shortcut, parse_policy("doodl-mixing=0.9"))
    with pytest.raises(ValueError, match=r"^policy 'adjoint' cannot run on ShortcutScheduler: .*no noise schedule"):
        check_baseline(shortcut, parse_policy("adjoint"))


def test_the_job_refuses_the_combination_when_it_is_built() -> None:
    style = str(ROOT / "configs/style/digits.yaml")
    with pytest.raises(ValueError, match=r"^policy 'doodl' cannot run on ShortcutScheduler") as caught:
        job_sampler(style, ["--model.init_args.sampler.policy=doodl"])
    assert "\n" not in str(caught.value)
    assert job_sampler(style, ["--model.init_args.sampler.policy=sdo-tail=4"]).policy.tail == 4


def test_the_job_refuses_a_tail_longer_than_its_run_when_it_is_built() -> None:
    style = str(ROOT / "configs/style/digits.yaml")
    runs = job_sampler(style, []).steps_run
    assert job_sampler(style, [f"--model.init_args.sampler.policy=sdo-tail={runs}"]).policy.tail == runs
    with pytest.raises(ValueError, match=rf"^policy tail={runs + 1} exceeds the run's {runs} steps; "
                                         rf"allowed: 0 to {runs}$"):
        job_sampler(style, [f"--model.init_args.sampler.policy=sdo-tail={runs + 1}"])


def test_a_policy_string_means_the_same_in_every_job() -> None:
    # The sweep passes the string unchanged: last_k=2 is K = 2 on the attack job and on the reward job alike, whose
    # config also sets ``last_k: 1`` (the default, so the string's K stands) and ``k: random`` (SDO's, not K's).
    for config in ("configs/attack/digits.yaml", "configs/reward/digits.yaml"):
        policy = job_sampler(str(ROOT / config), ["--model.init_args.sampler.policy=last_k=2"]).policy
        assert (policy.name, policy.last_k) == ("last_k", 2), config


@pytest.mark.slow  # several CLI runs: 20-50 s on an idle 2-core machine
def test_attack_rows(tmp_path: Path) -> None:
    tiny = ["--per-class", "1", "--steps", "1", "--override=--model.init_args.sampler.num_steps=4"]
    rows = table_rows(run_script(attack_policies, ["--policies", *NEW, *tiny], tmp_path / "a.md"))
    assert list(rows) == NEW
    for row in rows.values():
        assert_ran(row)
        assert "(" in row.split(" | ")[1]  # success rate (n/N)
    refused = run_script(attack_policies, ["--policies", "doodl", *tiny,
                                                        "--override=--model.init_args.sampler.scheduler=ddpm"],
                         tmp_path / "b.md")
    row = table_rows(refused)["doodl"]
    assert "cannot run: policy 'doodl' cannot run on DDPMScheduler" in row
    assert row.count("|") == 11  # the table's 10 columns


@pytest.mark.slow  # several CLI runs: 20-50 s on an idle 2-core machine
def test_guided_rows(tmp_path: Path) -> None:
    argv = ["--tasks", "edit", "style", "--samples", "1", "--opt-steps", "1", "--num-steps", "4",
            "--xhat-scales", "--policies", *NEW]
    text = run_script(guided_policies, argv, tmp_path / "g.md")
    edit, style = text.split("### style")
    assert list(table_rows(edit)) == NEW
    for policy, row in table_rows(edit).items():
        assert policy in NEW
        assert_ran(row)
        assert float(row.rstrip(" |").split(" | ")[-1]) > 0  # MiB / step
    style_rows = table_rows(style)
    assert list(style_rows) == NEW
    assert "cannot run: policy 'adjoint' cannot run on ShortcutScheduler" in style_rows["adjoint"]
    assert "cannot run: policy 'doodl' cannot run on ShortcutScheduler" in style_rows["doodl"]
    assert style_rows["doodl"].count("|") == 8  # the style table's 7 columns
    assert_ran(style_rows["sdo-tail=4"])


@pytest.mark.slow  # several CLI runs: 20-50 s on an idle 2-core machine
def test_reward_rows(tmp_path: Path) -> None:
    tiny = ["--steps", "1", "--num-steps", "4", "--samples-per-step", "2", "--batch-size", "1", "--eval-every", "1",
            "--override=--model.init_args.grid_samples=1"]
    rows = table_rows(run_script(reward_policies, ["--policies", *NEW, *tiny], tmp_path / "r.md"))
    assert [label.split(" ")[0] for label in rows] == NEW
    for row in rows.values():
        assert_ran(row)
        assert row.split(" | ")[1] == "1"  # one optimiser step
        assert float(row.split(" | ")[-1].rstrip(" |")) > 0  # the backward's rebuilt graphs count for adjoint, doodl
    refused = run_script(reward_policies, ["--policies", "doodl", *tiny,
                                                        "--override=--model.init_args.sampler.scheduler=ddpm"],
                         tmp_path / "s.md")
    row = table_rows(refused)["doodl (DOODL)"]
    assert "cannot run: policy 'doodl' cannot run on DDPMScheduler" in row
    assert row.count("|") == 8


def test_the_memory_cell_says_when_the_meter_cannot_see_a_rebuilt_call() -> None:
    from benchmarks.policy_sweep import memory_cell

    assert memory_cell("sdo", 18.734) == "18.73"
    assert memory_cell("adjoint", 17.95) == "17.95"  # its rebuilt graphs go through the meter's hooks
    for policy in ("checkpoint", "sdo-recompute=true", "sdo-random-recompute=true"):
        assert memory_cell(policy, 0.5) == "0.50 + one rebuilt call's graph (not seen by the meter)"
