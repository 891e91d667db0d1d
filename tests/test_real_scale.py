"""The CPU-checkable parts of the full-size runs (benchmarks/real_scale.py, benchmarks/gpu_check.sh): which configs
they cover, the offline CLIP tokenizer, and that every full-size command the GPU script prints parses with its script
(tests/test_benchmark_smoke.py runs each of them at tiny size).

Bit for bit: a weight the randomiser must not touch is compared with its copy (no arithmetic)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import real_scale  # noqa: E402
from lit_sdo.models import clip_tokenizer, standins  # noqa: E402

PAPER_CONFIGS = {"attack/imagenet_adm", "attack/imagenet_dit", "aesthetic/sd15", "reward/sd15_aesthetic",
                 "reward/sd15_hps", "style/lcm", "edit/celebahq", "shortcut/celebahq256", "shortcut/imagenet256"}


def test_every_paper_config_is_covered_and_its_components_exist() -> None:
    assert set(real_scale.CONFIGS) == PAPER_CONFIGS
    for config in real_scale.CONFIGS.values():
        assert config.path.is_file(), config.path
        assert set(config.components) <= set(standins.BUILDERS), config.name
    listed = subprocess.run([sys.executable, str(ROOT / "benchmarks/real_scale.py"), "--list"], capture_output=True,
                            text=True, check=True).stdout
    assert {line.split(":")[0] for line in listed.splitlines()} == PAPER_CONFIGS


def test_fit_command_points_the_config_at_the_cache_on_the_requested_device(tmp_path: Path) -> None:
    args = real_scale.parse_args(["--only", "attack/imagenet_dit", "--device", "cuda", "--cache", str(tmp_path)])
    command = real_scale.fit_command(real_scale.CONFIGS["attack/imagenet_dit"], args.cache, tmp_path / "out", 3, 2,
                                     args.accelerator)
    assert "--trainer.accelerator=gpu" in command and "--model.init_args.sampler.num_steps=3" in command
    assert f"--model.init_args.sampler.model={tmp_path}/dit-xl-2" in command and "--trainer.max_epochs=2" in command
    with pytest.raises(SystemExit):
        real_scale.parse_args(["--only", "attack/imagenet"])


COST_POLICIES = (*real_scale.default_reward_policies(2), "random_truncation", "sdo-random-recompute=true")
REWARD_COST_RUNS = [(real_scale.REWARD_CONFIG, real_scale.policy_overrides(p)) for p in COST_POLICIES]


@pytest.mark.parametrize(("name", "extra"), [(name, ()) for name in sorted(PAPER_CONFIGS)] + REWARD_COST_RUNS,
                         ids=sorted(PAPER_CONFIGS) + [f"reward-cost-{p}" for p in COST_POLICIES])
def test_every_full_size_command_line_parses_against_its_classes(name: str, extra: tuple[str, ...],
                                                                  tmp_path: Path) -> None:
    # Parsed and type-checked, nothing built: the models it points at exist only in a full-size cache.
    import cli

    command = real_scale.fit_command(real_scale.CONFIGS[name], tmp_path / "cache", tmp_path / "out", 2, 1, "cpu",
                                     extra)
    assert command[2] == "fit"
    config = cli.parse_command_line(command[2:])
    assert config.trainer.accelerator == "cpu" and str(config.trainer.devices) == "1"
    overridden = {o.split("=", 1)[0].removeprefix("--") for o in command if o.startswith("--model.")}
    for key in overridden:  # every override reached the namespace under the name it was given
        assert config.get(key) is not None, key


def test_bpe_merges_take_the_most_frequent_pair_first() -> None:
    # Symbols: l o w</w> (×5), l o w e r</w> (×2), n e w e s t</w> (×6). Pair counts: (w, e) 2 + 6 = 8, then
    # (l, o) 5 + 2 = 7 ahead of the 6s of newest.
    words = ["low"] * 5 + ["lower"] * 2 + ["newest"] * 6
    merges = clip_tokenizer.bpe_merges(words, 2)
    assert merges[0] == ("w", "e") and merges[1] == ("l", "o")  # then ("l","o") 7, ahead of ("n","e") 6


def test_offline_clip_tokenizer_has_clips_vocabulary_size_and_special_ids(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    clip_tokenizer.save_clip_tokenizer(tmp_path, ["a painting of a cat", "the cat paints"], num_merges=60)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == clip_tokenizer.CLIP_VOCAB == 49408
    ids = tokenizer("a painting of a cat").input_ids
    assert ids[0] == 49406 and ids[-1] == 49407 and max(ids) == 49407  # legacy pooling: argmax is the end token
    assert tokenizer.decode(ids[1:-1]).strip() == "a painting of a cat"
    assert len(json.loads((tmp_path / "vocab.json").read_text())) == 49408


def test_randomize_zero_weights_fills_only_all_zero_matrices() -> None:
    layers = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    torch.nn.init.zeros_(layers[1].weight)
    torch.nn.init.zeros_(layers[1].bias)
    first = layers[0].weight.detach().clone()
    standins.randomize_zero_weights(layers)
    assert layers[1].weight.abs().min() > 0 and torch.equal(layers[0].weight, first)
    assert not layers[1].bias.any()  # biases stay zero, as trained networks often have them near it


def printed(*sections: str) -> list[list[str]]:
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--print", *sections],
                          capture_output=True, text=True, check=True)
    return [shlex.split(line) for line in done.stdout.splitlines() if not line.startswith("==")]


def test_gpu_check_is_valid_bash_and_every_printed_command_parses() -> None:
    from benchmarks import attack_policies, gradient_cost, guided_policies

    subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_check.sh")], check=True)
    parsers = {"benchmarks/gradient_cost.py": gradient_cost.parse_args,
               "benchmarks/real_scale.py": real_scale.parse_args,
               "benchmarks/attack_policies.py": attack_policies.parse_args,
               "benchmarks/guided_policies.py": guided_policies.parse_args}
    commands = printed()
    scripts = [command[1] for command in commands]
    assert {"benchmarks/real_scale.py", "benchmarks/attack_policies.py"} <= set(scripts)
    assert any("--model" in c and "ddpm-256" in c for c in commands) and any("sd15" in c for c in commands)
    # the jobs' own precision: CLI runs with the sampler's precision, three of each job
    assert sum("--override=--model.init_args.sampler.precision=bf16" in c for c in commands) == 2
    for command in commands:
        args = parsers[command[1]](command[2:])  # argparse exits on an option the script does not have
        assert getattr(args, "device", "cuda") == "cuda", command
    assert [c[1] for c in printed("attack")] == ["benchmarks/attack_policies.py"]  # one section alone
    bad = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument 'nonsense'" in bad.stderr


def test_reward_cost_compares_sdo_with_the_mean_over_k_of_the_fixed_k_runs() -> None:
    step = lambda cpu: {"cpu_seconds": cpu, "seconds": cpu / 2, "peak_bytes": 1e9}  # noqa: E731
    steps = {"sdo-random": step(60.0), "last_k=1": step(50.0), "last_k=2": step(100.0), "last_k=3": step(150.0),
             "random_truncation": step(100.0)}
    lines = real_scale.reward_cost_lines(steps, 3)
    assert "| last_k=2 | 100.0 | 50.0 | 1.00 |" in lines
    # mean over K = 1..3 is 100 CPU s: SDO at 60 is 0.60 of it; the one random_truncation draw is also shown
    assert any("sdo-random / mean of last_k=1..3 (AlignProp-uniform's expected cost) CPU time = 0.60" in line
               for line in lines)
    assert any("sdo-random / random_truncation (one draw) CPU time = 0.60" in line for line in lines)
    assert "last_k=K: step CPU s = 0.0 + 50.0·K (least squares over K = 1, 2, 3; largest residual 0.0 CPU s)" in lines
    del steps["last_k=3"]  # an incomplete sweep gives no expectation
    assert not any("mean of" in line for line in real_scale.reward_cost_lines(steps, 3))


def test_reward_policies_are_checked_against_the_runs_steps() -> None:
    args = real_scale.parse_args(["--reward-policies", "sdo-random,last_k=4-recompute=true", "--reward-steps", "4"])
    assert args.reward_policies == ["sdo-random", "last_k=4-recompute=true"]
    assert real_scale.parse_args(["--reward-steps", "3"]).reward_policies == [
        "sdo-random", "last_k=1-recompute=true", "last_k=2-recompute=true", "last_k=3-recompute=true"]
    with pytest.raises(SystemExit):
        real_scale.parse_args(["--reward-policies", "last_k=5", "--reward-steps", "4"])
    with pytest.raises(SystemExit):
        real_scale.parse_args(["--reward-policies", "sdo-depth=2"])


def test_main_prints_one_row_per_run_and_fails_on_a_failed_run(monkeypatch, capsys, tmp_path: Path) -> None:
    def fake_run(config, args, log, tag="", extra=()):  # the process is not started: its result is given
        code = 0 if config.name == "edit/celebahq" else 1
        return real_scale.RunResult(config.name + tag, code, 10.0, 20.0, 1.5, ["results.json"], [],
                                    tmp_path / "run.log", 0.5)

    monkeypatch.setattr(real_scale, "run_config", fake_run)
    assert real_scale.main(["--only", "edit/celebahq", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(real_scale.TABLE_HEADER)
    assert "| edit/celebahq | PASS | 10 | 20 | 1.5 | 0.5 | results.json |" in printed
    assert real_scale.main(["--only", "edit/celebahq,style/lcm", "--out", str(tmp_path)]) == 1
    assert "| style/lcm | FAIL (exit 1) |" in capsys.readouterr().out
