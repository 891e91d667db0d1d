"""Per-sample optimisation state: rows are independent, Adam matches torch's, merging picks owners.

Exact comparisons: untouched rows and points inside the ball are left as they are (no arithmetic), and the
tracked scores are small integers; Adam against torch's at a float32 tolerance (other operation order)."""

from __future__ import annotations

import pytest
import torch

from lit_sdo.optim import BestTracker, PerSampleOptimizer, adamw_with_warmup, merge_rows_by_version, project_linf


def test_per_sample_adam_matches_torch_adam_row_by_row_and_leaves_other_rows_alone() -> None:
    torch.manual_seed(0)
    variable = torch.zeros(3, 4)
    reference = torch.zeros(1, 4, requires_grad=True)
    torch_adam = torch.optim.Adam([reference], lr=0.05)
    optim = PerSampleOptimizer((3, 4), "adam", lr=0.05)
    for step in range(5):
        grad = torch.randn(1, 4)
        optim.step(variable, grad, torch.tensor([1]))
        reference.grad = grad.clone()
        torch_adam.step()
        if step == 2:  # another row stepped in between must not disturb row 1's moments
            optim.step(variable, torch.randn(1, 4), torch.tensor([2]))
    torch.testing.assert_close(variable[1:2], reference.detach())
    assert torch.equal(variable[0], torch.zeros(4))
    assert optim.steps.tolist() == [0, 5, 1]


@pytest.mark.parametrize(("name", "expected"), [("sgd", [-0.2, 0.1]), ("sign", [-0.1, 0.1])])
def test_sgd_and_sign_steps(name: str, expected: list[float]) -> None:
    variable = torch.zeros(1, 2)
    PerSampleOptimizer((1, 2), name, lr=0.1).step(variable, torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    torch.testing.assert_close(variable, torch.tensor([expected]))


def test_project_linf_bounds_every_element() -> None:
    delta = torch.randn(5, 1, 4, 4) * 3
    projected = project_linf(delta, 0.1)
    assert projected.abs().max() <= 0.1
    inside = delta.abs() <= 0.1
    assert torch.equal(projected[inside], delta[inside])


def test_best_tracker_keeps_first_success_else_lowest_score() -> None:
    tracker = BestTracker((2, 1))
    rows = torch.tensor([0, 1])
    tracker.update(rows, torch.tensor([[1.0], [1.0]]), torch.tensor([0.5, 0.5]), torch.tensor([False, False]))
    tracker.update(rows, torch.tensor([[2.0], [2.0]]), torch.tensor([0.7, 0.1]), torch.tensor([True, False]))
    tracker.update(rows, torch.tensor([[3.0], [3.0]]), torch.tensor([-1.0, 0.3]), torch.tensor([True, False]))
    assert tracker.best.flatten().tolist() == [2.0, 2.0]  # row 0: first success; row 1: lowest score
    assert tracker.succeeded.tolist() == [True, False]
    assert tracker.success.tolist() == [True, False]


def test_merge_takes_each_row_from_the_rank_that_updated_it() -> None:
    rank0 = torch.tensor([[1.0], [0.0], [0.0]])
    rank1 = torch.tensor([[0.0], [2.0], [3.0]])
    versions = torch.tensor([[4, 0, 0], [0, 4, 4]])
    merged = merge_rows_by_version({"delta": torch.stack([rank0, rank1])}, versions)
    assert merged["delta"].flatten().tolist() == [1.0, 2.0, 3.0]


def test_bad_optimizer_arguments() -> None:
    with pytest.raises(ValueError, match="optimizer='lbfgs' is unknown"):
        PerSampleOptimizer((1, 1), "lbfgs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr=0 must be > 0"):
        PerSampleOptimizer((1, 1), "sgd", lr=0)


def test_adamw_with_warmup_ramps_the_learning_rate_linearly_then_holds_it() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    config = adamw_with_warmup([weight], lr=0.1, weight_decay=0.0, warmup_steps=4)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    torch.testing.assert_close(torch.tensor(seen), torch.tensor([0.025, 0.05, 0.075, 0.1, 0.1, 0.1]))
