"""Classifier objectives: signs, targets, success, measures, and one-line errors; the base contract; every
objective takes a built module or a name the loader resolves, from Python and from YAML.

Exact comparisons: seeded target draws (integers) and margins of small integer logits (exact in float32)."""

from __future__ import annotations

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn

from lit_sdo.models import Classifier
from lit_sdo.models.aesthetic import AestheticMLP, StrokeThicknessPredictor
from lit_sdo.objectives import (
    AestheticObjective,
    ClassifierObjective,
    ClassLogProbReward,
    EmbeddingMLPReward,
    LabelAgreement,
    Objective,
    PreferenceReward,
    Reward,
    TextEditObjective,
    draw_targets,
)
from lit_sdo.objectives.classifier import margin

LOGITS = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
LABELS = torch.tensor([0, 1])


def logit_classifier(name: str = "logits") -> Classifier:
    """A classifier whose logits are its input pixels: images (B, 3, 1, 1) hold the logits themselves."""
    head = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    return Classifier(nn.Sequential(nn.Flatten(), head), name, num_classes=3, input_size=1, channels=3,
                      mean=(0.0,) * 3, std=(1.0,) * 3)


@pytest.fixture
def objective():  # noqa: ANN201
    """ClassifierObjective(**kwargs) on the logit classifier, injected."""
    return lambda **kwargs: ClassifierObjective(classifier=logit_classifier(), **kwargs)


def batch(**extra: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"index": torch.arange(2), "label": LABELS, "seed": torch.tensor([5, 6])} | extra


IMAGES = LOGITS.view(2, 3, 1, 1)


def test_margin_is_true_logit_minus_best_other() -> None:
    assert margin(LOGITS, LABELS).tolist() == [2.0, -3.0]


def test_untargeted_margin_loss_and_success(objective) -> None:  # noqa: ANN001
    loss, success = objective(kappa=1.0).evaluate(IMAGES, batch())
    assert loss.tolist() == [2.0, -1.0]  # clamped at -κ once fooled
    assert success.tolist() == [False, True]
    torch.testing.assert_close(objective(kappa=1.0)(IMAGES, batch()), loss)  # forward is evaluate's loss


def test_untargeted_ce_is_minus_the_cross_entropy_of_the_label(objective) -> None:  # noqa: ANN001
    loss = objective(loss="ce")(IMAGES, batch())
    torch.testing.assert_close(loss, -torch.nn.functional.cross_entropy(LOGITS, LABELS, reduction="none"))


def test_targeted_losses_pull_towards_the_target(objective) -> None:  # noqa: ANN001
    targets = torch.tensor([1, 2])
    loss, success = objective(targeted=True).evaluate(IMAGES, batch(target=targets))
    assert loss.tolist() == [2.0, 0.0]  # -m_t: row 0's target 1 is 2 below the best other; row 1 reached it
    assert success.tolist() == [False, True]
    ce = objective(loss="ce", targeted=True)(IMAGES, batch(target=targets))
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(LOGITS, targets, reduction="none"))
    fixed = objective(targeted=True, target=2)  # one target for every sample when the batch has none
    assert fixed.targets(batch()).tolist() == [2, 2]
    assert fixed.evaluate(IMAGES, batch())[1].tolist() == [False, True]


def test_drawn_targets_differ_from_labels_and_are_reproducible(objective) -> None:  # noqa: ANN001
    labels = torch.arange(10)
    seeds = torch.arange(100, 110)
    first = draw_targets(labels, 10, seeds)
    assert (first != labels).all() and ((first >= 0) & (first < 10)).all()
    assert torch.equal(first, draw_targets(labels, 10, seeds))
    assert not torch.equal(first, draw_targets(labels, 10, seeds + 1))  # a function of the seed
    drawn = objective(targeted=True).targets(batch())  # no target given: drawn from each sample's seed
    assert torch.equal(drawn, draw_targets(LABELS, 3, torch.tensor([5, 6])))


def test_measure_reports_loss_predictions_features_and_target(objective) -> None:  # noqa: ANN001
    measured = objective(kappa=1.0).measure(IMAGES, batch())
    assert measured["loss"].tolist() == [2.0, -1.0]
    assert measured["pred"].tolist() == [0, 2]
    assert measured["target"].tolist() == [-1, -1]  # untargeted
    torch.testing.assert_close(measured["features"], LOGITS)  # the input of the last linear layer
    assert "transfer_pred" not in measured
    with_transfer = objective(transfer_classifier=logit_classifier()).measure(IMAGES, batch())
    assert with_transfer["transfer_pred"].tolist() == [0, 2]


def test_bad_arguments_are_one_line(objective) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="loss='hinge' is unknown; allowed values: margin, ce"):
        objective(loss="hinge")
    with pytest.raises(ValueError, match="kappa=-1 must be >= 0"):
        objective(kappa=-1)
    with pytest.raises(ValueError, match="target=3 is out of range for a 3-class classifier"):
        objective(targeted=True, target=3)
    with pytest.raises(ValueError, match=r"classifier logits takes 1×1 images but the generator makes 8×8"):
        objective().prepare(8, 1, 3)
    objective(resize_for_classifier=True).prepare(8, 1, 3)  # asked for: no error


def test_the_base_contract_defaults_to_the_loss() -> None:
    class Brightness(Objective):
        def forward(self, images: torch.Tensor, batch: dict) -> torch.Tensor:
            return images.flatten(1).mean(1)

    images = torch.rand(2, 1, 4, 4)
    loss, success = Brightness().evaluate(images, {})
    torch.testing.assert_close(loss, images.flatten(1).mean(1))
    assert success is None
    assert Brightness().measure(images, {}).keys() == {"loss"}
    assert Brightness().summarize({}) is None and Brightness().reference_images(2) == {}
    with pytest.raises(NotImplementedError):
        Objective()(images, {})


# ----- built modules or names ---------------------------------------------------------------------------


class Brightness(nn.Module):
    """A tiny score module with a dropout and a trainable weight: injection must freeze it and set eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.weight, self.dropout = nn.Parameter(torch.ones(())), nn.Dropout(0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dropout(images).flatten(1).mean(1) * self.weight


def test_injected_modules_are_used_as_given_frozen_and_in_eval_mode() -> None:
    classifier, transfer = logit_classifier(), logit_classifier("other").train().requires_grad_(True)
    objective = ClassifierObjective(classifier, transfer_classifier=transfer)
    assert objective.classifier is classifier and objective.transfer is transfer
    assert not transfer.training and not any(p.requires_grad for p in transfer.parameters())
    score = Brightness()
    aesthetic = AestheticObjective(score, target=1.0)
    assert aesthetic.score is score and not score.training and not score.weight.requires_grad
    images = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(aesthetic(images, {}), (images.flatten(1).mean(1) - 1).abs())  # no dropout
    assert LabelAgreement(classifier).classifier is classifier
    assert ClassLogProbReward(classifier).classifier is classifier
    head, scorer = AestheticMLP(3, hidden=(4,)), Brightness()
    reward = EmbeddingMLPReward(head, embedder=nn.Flatten())
    embeddings = torch.randn(2, 3)
    torch.testing.assert_close(reward(embeddings.view(2, 3, 1, 1), {}), head(embeddings))
    assert PreferenceReward(scorer).scorer is scorer


def test_names_resolve_through_the_loader() -> None:
    objective = ClassifierObjective("embedded:digits-resnet")
    assert isinstance(objective.classifier, Classifier) and objective.classifier.name == "digits-resnet"
    assert not any(p.requires_grad for p in objective.classifier.parameters())
    assert isinstance(AestheticObjective("embedded:digits-thickness").score, StrokeThicknessPredictor)


def test_a_module_of_the_wrong_kind_is_a_one_line_error() -> None:
    network = nn.Sequential(nn.Flatten(), nn.Linear(3, 3))  # a bare network: no input conventions
    for build in (ClassifierObjective, LabelAgreement, ClassLogProbReward,
                  lambda c: ClassifierObjective(logit_classifier(), transfer_classifier=c)):
        with pytest.raises(TypeError, match=r"^got a Sequential where a model name or a built Classifier is "
                                            r"expected$"):
            build(network)
    with pytest.raises(TypeError, match="got a int where a model name or a built Module is expected"):
        TextEditObjective(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^clip='openai/clip-vit-large-patch14' is read only with a LAION weights "
                                         r"file, but the predictor is a built Brightness[^\n]*drop clip$"):
        AestheticObjective(Brightness(), clip="openai/clip-vit-large-patch14")


def parse(group: type, config: dict) -> nn.Module:
    """``config`` read from YAML as a ``class_path`` / ``init_args`` of ``group``, as the CLI reads objectives."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(group, "module")
    return parser.instantiate(parser.parse_string(yaml.safe_dump({"module": config}))).module


TINY_CLASSIFIER = {"class_path": "lit_sdo.models.Classifier",
                   "init_args": {"network": {"class_path": "torch.nn.Flatten"}, "name": "flat", "num_classes": 3,
                                 "input_size": 1, "channels": 3, "mean": [0.0] * 3, "std": [1.0] * 3}}


def test_yaml_takes_a_name_or_a_class_path_for_every_model_argument() -> None:
    by_name = parse(Objective, {"class_path": "lit_sdo.objectives.ClassifierObjective",
                                "init_args": {"classifier": "embedded:digits-resnet"}})
    assert by_name.classifier.name == "digits-resnet"
    built = parse(Objective, {"class_path": "lit_sdo.objectives.ClassifierObjective",
                              "init_args": {"classifier": TINY_CLASSIFIER, "transfer_classifier": TINY_CLASSIFIER}})
    assert built.classifier.name == built.transfer.name == "flat"
    assert built(IMAGES, batch()).tolist() == [2.0, 0.0]  # the flattened pixels are the logits; clamped at -κ = 0
    styled = parse(Objective, {"class_path": "lit_sdo.objectives.GramStyleObjective",
                               "init_args": {"encoder": {"class_path": "torch.nn.Identity"}}})
    assert isinstance(styled.encoder, nn.Identity)
    predictor = {"class_path": "lit_sdo.models.aesthetic.StrokeThicknessPredictor", "init_args": {"channels": 4}}
    scored = parse(Objective, {"class_path": "lit_sdo.objectives.AestheticObjective",
                               "init_args": {"predictor": predictor}})
    assert scored.score.network[0].out_channels == 4
    reward = parse(Reward, {"class_path": "lit_sdo.objectives.EmbeddingMLPReward",
                            "init_args": {"weights": {"class_path": "lit_sdo.models.aesthetic.AestheticMLP",
                                                      "init_args": {"embedding_dim": 3, "hidden": [4]}},
                                          "embedder": {"class_path": "torch.nn.Flatten"}}})
    assert reward(IMAGES, {}).shape == (2,)
