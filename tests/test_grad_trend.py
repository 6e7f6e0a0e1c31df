"""analyse/grad_trend.py: a layer's gradient norm growing or decaying geometrically over steps."""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path

import pytest
from training_runs import fold_run, mlp_run, watched_regression

from gradcheck_cli.analyse.grad_trend import GradTrends
from gradcheck_cli.analyse.line_fit import LineWindow, break_point
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.analyse.timeline import Timeline
from gradcheck_cli.measure.series import StepBlock
from gradcheck_cli.report.records import FindingKind, Severity


def _blocks(norms: list[tuple[float, ...]], losses: list[float], every: int = 50) -> list[StepBlock]:
    """Blocks of squared norms, as the watch hands them over."""
    layers = len(norms[0])
    return [StepBlock(first, tuple(losses[first:first + every]),
                      tuple(tuple(n * n for n in row) for row in norms[first:first + every]), None,
                      (1.0,) * layers, (0,) * layers) for first in range(0, len(norms), every)]


def _injected(start: int, factor: float, steps: int = 400,
              seed: int = 0) -> tuple[list[tuple[float, ...]], list[float]]:
    """Two layers with log-normal batch noise (sd 0.2); from `start` layer "a" is scaled by `factor`
    per step. The loss stays flat and noisy."""
    rng = random.Random(seed)

    def noise() -> float:
        return math.exp(rng.gauss(0, 0.2))

    norms: list[tuple[float, ...]] = [(0.1 * factor ** max(0, step - start) * noise(), 0.1 * noise())
                                      for step in range(steps)]
    return norms, [1.0 + 0.01 * rng.gauss(0, 1) for _ in range(steps)]


def _timeline(norms: list[tuple[float, ...]], losses: list[float], every: int = 50) -> Timeline:
    timeline = Timeline([str(i) if len(norms[0]) > 2 else "ab"[i] for i in range(len(norms[0]))], Thresholds())
    for block in _blocks(norms, losses, every):
        timeline.add(block)
    return timeline


@pytest.mark.parametrize("start", [37, 150, 211, 300])
def test_a_layer_scaled_by_1_05_per_step_is_a_growth_trend_from_its_step(start: int) -> None:
    findings = [f for f in _timeline(*_injected(start, 1.05)).findings() if f.kind is FindingKind.GRAD_TREND]
    [trend] = findings
    assert trend.layer == "a" and trend.severity is Severity.WARNING
    assert trend.evidence["direction"] == "growth"
    assert abs(trend.evidence["step"] - start) <= 3  # type: ignore[operator]
    assert trend.step == trend.evidence["step"] and trend.rank == 0
    assert trend.evidence["per_step"] == pytest.approx(1.05, rel=0.005)
    assert trend.evidence["last_step"] == 399
    span = 399 - trend.evidence["step"]  # type: ignore[operator]
    assert trend.evidence["total"] == pytest.approx(trend.evidence["per_step"] ** span, rel=1e-6)  # type: ignore[operator]
    assert f"from step {trend.step}" in trend.message


def test_a_slow_drift_and_a_single_jump_are_not_trends() -> None:
    slow = _injected(100, 1.01)  # x2.7 over the window: less than a decade
    assert _timeline(*slow).findings() == []
    norms, losses = _injected(10**9, 1.0)
    jumped: list[tuple[float, ...]] = [(a * (100.0 if step >= 200 else 1.0), b) for step, (a, b) in enumerate(norms)]
    assert not [f for f in _timeline(jumped, losses).findings() if f.kind is FindingKind.GRAD_TREND]


def test_a_decay_is_a_trend_only_while_the_loss_does_not_fall() -> None:
    norms, flat = _injected(150, 1 / 1.05)
    [decay] = [f for f in _timeline(norms, flat).findings() if f.kind is FindingKind.GRAD_TREND]
    assert decay.evidence["direction"] == "decay" and abs(decay.step - 150) <= 3  # type: ignore[operator]
    assert "did not fall" in decay.message
    falling = [loss * 0.99 ** step for step, loss in enumerate(flat)]  # converging: the loss falls with it
    assert _timeline(norms, falling).findings() == []


def test_growth_is_reported_before_an_earlier_decay_and_layers_are_counted() -> None:
    growth, losses = _injected(200, 1.05)
    decay, _ = _injected(100, 1 / 1.05, seed=1)
    norms: list[tuple[float, ...]] = [(d[0], g[0], g[0] * 2) for d, g in zip(decay, growth)]
    [trend] = [f for f in _timeline(norms, losses).findings() if f.kind is FindingKind.GRAD_TREND]
    assert trend.layer == "1" and trend.evidence["direction"] == "growth" and trend.evidence["layers"] == 2


@pytest.mark.parametrize(("optimizer", "lr", "classify"), [("sgd", 0.05, False), ("adam", 1e-3, True),
                                                           ("adam", 1e-2, True), ("sgd", 0.2, False)])
def test_a_normal_training_run_has_no_trend_and_no_weight_growth(optimizer: str, lr: float, classify: bool) -> None:
    losses, grads, weights = mlp_run(optimizer, lr, classify, 500)
    assert sum(losses[-50:]) < sum(losses[:50])  # it trained: the loss fell
    for every in (10, 50):
        kinds = {f.kind for f in fold_run(losses, grads, weights, every).findings()}
        assert not kinds & {FindingKind.GRAD_TREND, FindingKind.WEIGHT_GROWTH}, (every, kinds)


def test_the_state_stays_bounded_over_100000_steps() -> None:
    trends = GradTrends(["a", "b"], Thresholds())
    rng = random.Random(0)

    def feed(first: int, steps: int) -> None:
        for start in range(first, first + steps, 500):
            rows = tuple((math.exp(rng.gauss(0, 0.3)) * 1e-2, 1e-2) for _ in range(500))
            trends.add(StepBlock(start, tuple(1.0 for _ in rows), rows, None, (1.0, 1.0), (0, 0)))

    feed(0, 10_000)
    size = len(pickle.dumps(trends))
    feed(10_000, 90_000)
    assert len(pickle.dumps(trends)) <= size + 32  # only the step counters' integers got longer
    assert all(len(state.window.values) == 100 for state in trends.states)
    assert trends.first() is None


def test_the_window_sums_equal_an_exact_fit_and_the_hinge_finds_the_turn() -> None:
    window, rng = LineWindow(50), random.Random(1)
    for t in range(1234):
        window.add(0.01 * t + rng.gauss(0, 1))
    assert window.slope() == pytest.approx(window.fit().slope, rel=1e-9, abs=1e-12)
    assert break_point([0.0] * 30 + [0.5 * t for t in range(1, 21)]) in (29, 30)


def test_a_watched_run_above_the_stability_limit_reports_the_trend_with_its_step(tmp_path: Path) -> None:
    """gradcheck_cli.watch end to end: a linear model trained with full-batch SGD at a learning rate
    2% above 2 / (the largest Hessian eigenvalue): the error along that direction, and the
    gradient, grow by |1 - lr L| = 1.04 per step from the first step."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.1 * torch.randn(256, 1)
    design = torch.cat([x, torch.ones(256, 1)], 1)
    sharpest = float(torch.linalg.eigvalsh(2 * design.T @ design / 256).max())
    report = watched_regression(nn.Linear(8, 1), 1.02 * 2 / sharpest, x, y, 300, tmp_path / "w.json")
    found = {f.kind: f for f in report.findings}
    trend = found[FindingKind.GRAD_TREND]
    assert trend.layer is not None
    assert trend.step is not None and trend.step <= 10 and trend.rank == 0
    assert trend.evidence["per_step"] == pytest.approx(1.04, rel=0.01)
    assert FindingKind.WEIGHT_GROWTH in found and found[FindingKind.WEIGHT_GROWTH].step is not None
