"""analyse/weight_growth.py and analyse/fix_timeline.py: weights growing with their gradients, and
weight-decay with a value."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
from training_runs import fold_run, mlp_run, squared, watched_regression

from gradcheck_cli.analyse.fix_timeline import OptimizerSettings, weight_decay_fix, with_timeline_fixes
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.analyse.timeline import Timeline
from gradcheck_cli.analyse.weight_growth import WeightGrowths
from gradcheck_cli.measure.series import StepBlock
from gradcheck_cli.report.evidence import WeightGrowthEvidence
from gradcheck_cli.report.parameters import WeightDecayParameters
from gradcheck_cli.report.records import FindingKind, RecommendationId


def _diverging_linear(over: float, steps: int):  # type: ignore[no-untyped-def]
    """Plain torch: a linear model fitted by full-batch SGD at `over` x 2 / L (L the largest Hessian
    eigenvalue): the error along the sharpest direction grows by |1 - lr L| = 2 over - 1 per step,
    the weights and the gradient with it. Returns the losses, squared gradient and weight norms,
    and lr L."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    design = torch.cat([x, torch.ones(256, 1)], 1)
    sharpest = float(torch.linalg.eigvalsh(2 * design.T @ design / 256).max())
    torch.manual_seed(1)
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=over * 2 / sharpest)
    losses, grads, weights = [], [], []
    for _ in range(steps):
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        grads.append((squared(p.grad for p in model.parameters()),))
        optimizer.step()
        losses.append(loss.item())
        weights.append((squared(p.detach() for p in model.parameters()),))
    return losses, grads, weights


def _fold(losses: list[float], grads: list[tuple[float, ...]], weights: list[tuple[float, ...]],
          every: int) -> Timeline:
    timeline = Timeline(["lin"], Thresholds())
    for first in range(0, len(losses), every):
        last = min(first + every, len(losses)) - 1
        timeline.add(StepBlock(first, tuple(losses[first:last + 1]), tuple(grads[first:last + 1]), None,
                               weights[last], (0,)))
    return timeline


@pytest.mark.parametrize("every", [10, 25])
def test_a_slowly_diverging_linear_model_is_weight_growth_from_its_lowest_weights(every: int) -> None:
    losses, grads, weights = _diverging_linear(1.01, 500)
    found = {f.kind: f for f in _fold(losses, grads, weights, every).findings()}
    assert FindingKind.GRAD_TREND not in found  # x1.02 per step: no decade within 100 steps
    growth = found[FindingKind.WEIGHT_GROWTH]
    ends = list(range(every - 1, 500, every))
    lowest = min(ends, key=lambda step: weights[step][0])
    # It starts where the weights were still at their lowest level: from the lowest block end on,
    # before the weight norm had grown a quarter above it (the hinge fit may skip a flat stretch).
    assert growth.step is not None and growth.step >= lowest and growth.step == growth.evidence["step"]
    assert math.sqrt(weights[growth.step][0]) <= 1.25 * math.sqrt(weights[lowest][0])
    assert growth.evidence["weight_norm"] == pytest.approx(math.sqrt(weights[growth.step][0]))
    assert growth.evidence["rate"] == pytest.approx(math.log(2 * 1.01 - 1), rel=0.05)
    assert growth.evidence["weight_total"] > 2 and growth.evidence["grad_total"] > 10  # type: ignore[operator]
    assert growth.rank == 0 and "grew steadily" in growth.message


def test_healthy_weights_grow_without_their_gradients_and_are_no_finding() -> None:
    losses, grads, weights = mlp_run("adam", 1e-2, True, 500)
    grew = max(math.sqrt(w[2] / min(v[2] for v in weights[:i + 1])) for i, w in enumerate(weights))
    assert grew > 2  # the output layer's weights more than doubled: only the gradient tells them apart
    assert not [f for f in fold_run(losses, grads, weights, 25).findings() if f.kind is FindingKind.WEIGHT_GROWTH]


def _blocks(weight: float, grad: float, blocks: int = 8, every: int = 10) -> list[StepBlock]:
    """Weights growing by `weight` per block, gradients by `grad`."""
    return [StepBlock(b * every, (1.0,) * every, tuple(((0.1 * grad ** b) ** 2,) for _ in range(every)), None,
                      ((weight ** b) ** 2,), (0,)) for b in range(blocks)]


def test_a_run_that_ends_non_finite_needs_the_gradient_to_follow_the_weights_only() -> None:
    growths = WeightGrowths(["a"], Thresholds())
    for block in _blocks(1.2, 1.25):  # weights x3.6, gradient x4.8: less than a decade
        growths.add(block)
    assert growths.findings(None) == []
    [finding] = growths.findings(75)
    assert finding.evidence["nonfinite_after"] == 1 and finding.step == 9  # the first block's end
    slower = WeightGrowths(["a"], Thresholds())
    for block in _blocks(1.2, 1.0):  # the gradient did not grow with the weights
        slower.add(block)
    assert slower.findings(75) == []


def test_the_state_stays_bounded_over_100000_steps() -> None:
    growths = WeightGrowths(["a", "b"], Thresholds())

    def feed(first: int, steps: int) -> None:
        for start in range(first, first + steps, 50):
            wobble = 1.0 + 0.01 * math.sin(start)
            growths.add(StepBlock(start, (1.0,) * 50, ((1e-4, 1e-4),) * 50, None, (wobble, 2.0), (0, 0)))

    feed(0, 20_000)
    size = len(pickle.dumps(growths))
    feed(20_000, 80_000)
    assert len(pickle.dumps(growths)) <= 1.1 * size  # the same points; only their step integers got longer
    assert all(len(state.recent) == 256 for state in growths.states)


def _evidence(rate: float) -> WeightGrowthEvidence:
    return WeightGrowthEvidence(100, 400, 3.0, 20.0, 50.0, rate, 0.99)


def test_the_weight_decay_offsets_the_growth_at_the_runs_learning_rate() -> None:
    def value(rate: float, settings: OptimizerSettings | None) -> WeightDecayParameters:
        parameters = weight_decay_fix("fc", _evidence(rate), settings).parameters
        assert isinstance(parameters, WeightDecayParameters)
        return parameters

    assert value(0.02, OptimizerSettings("AdamW", 0.5, 0.0)).weight_decay == pytest.approx(0.04)
    assert value(0.021, OptimizerSettings("AdamW", 0.5, 0.0)).weight_decay == pytest.approx(0.05)  # rounded up
    assert value(0.02, OptimizerSettings("AdamW", 0.5, 0.01)).weight_decay == pytest.approx(0.05)  # plus its own
    assert value(1e-4, OptimizerSettings("SGD", 0.1, 0.0)).weight_decay == pytest.approx(0.01)  # AdamW's floor
    capped = weight_decay_fix("fc", _evidence(0.02), OptimizerSettings("Adam", 0.01, 0.0))
    assert isinstance(capped.parameters, WeightDecayParameters) and capped.parameters.weight_decay == 0.1
    assert "lower the learning rate" in capped.why and "AdamW(" in capped.parameters.snippet()
    assert "SGD(" in value(0.02, OptimizerSettings("SGD", 0.5, 0.0)).snippet()
    assert value(0.02, None).weight_decay == 0.01


def test_only_weight_growth_brings_weight_decay() -> None:
    losses, grads, weights = _diverging_linear(1.01, 300)
    findings = _fold(losses, grads, weights, 25).findings()
    settings = OptimizerSettings("SGD", 0.5, 0.0)
    [rec] = with_timeline_fixes((), findings, settings)
    assert rec.id is RecommendationId.WEIGHT_DECAY and "weight_decay=" in rec.code
    healthy = [f for f in findings if f.kind is not FindingKind.WEIGHT_GROWTH]
    assert with_timeline_fixes((), healthy, settings) == ()


def test_a_watched_healthy_run_gets_no_weight_decay_and_a_diverging_one_does(tmp_path: Path) -> None:
    """gradcheck_cli.watch end to end: the finding reaches Report.findings with its step, and
    weight-decay its recommendations with the value that offsets the measured growth."""
    import torch
    from torch import nn

    def watched(model: nn.Module, lr: float, x: torch.Tensor, y: torch.Tensor, steps: int):  # type: ignore[no-untyped-def]
        return watched_regression(model, lr, x, y, steps, tmp_path / "w.json")

    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randn(256, 1)
    healthy = watched(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)), 0.05, x, y, 200)
    assert RecommendationId.WEIGHT_DECAY not in [r.id for r in healthy.recommendations]
    assert FindingKind.WEIGHT_GROWTH not in [f.kind for f in healthy.findings]

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    design = torch.cat([x, torch.ones(256, 1)], 1)
    lr = 1.01 * 2 / float(torch.linalg.eigvalsh(2 * design.T @ design / 256).max())
    torch.manual_seed(1)
    report = watched(nn.Linear(8, 1), lr, x, y, 300)
    [growth] = [f for f in report.findings if f.kind is FindingKind.WEIGHT_GROWTH]
    assert growth.step is not None and growth.step < 100 and growth.rank == 0
    [decay] = [r for r in report.recommendations if r.id is RecommendationId.WEIGHT_DECAY]
    assert isinstance(decay.parameters, WeightDecayParameters)
    needed = float(growth.evidence["rate"]) / lr  # type: ignore[arg-type]
    assert 0.01 < needed < 0.1
    assert needed <= decay.parameters.weight_decay < needed + 0.01  # rounded up to one digit
    assert decay.parameters.lr == pytest.approx(lr) and f"weight_decay={decay.parameters.weight_decay:g}" in decay.code
