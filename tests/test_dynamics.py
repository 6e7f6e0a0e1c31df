"""Dynamics (--steps): per-layer update/weight ratio and the divergence finding."""

from __future__ import annotations

import copy
import math
from typing import cast

import pytest
import torch
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.analyse.checks import CheckContext
from gradcheck_cli.analyse.checks.divergence import check as divergence_check
from gradcheck_cli.analyse.checks.divergence import suggested_lr, trailing_rises
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.report.records import FindingKind, RecommendationId
from gradcheck_cli.target.resolve import Target


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.01), ("adam", 1e-3)])
@pytest.mark.parametrize("name", ["relu-he", "transformer-preln", "lstm"])
def test_healthy_models_stay_healthy_at_a_sane_learning_rate(name: str, optimizer: str, lr: float) -> None:
    # Small on purpose (2 batches of 4, 2 steps after the first): the lstm runs 100 time steps.
    report = scan(f"builtin:{name}", batches=2, steps=2, optimizer=optimizer, lr=lr, batch_size=4)
    assert report.verdict.value == "healthy", [f.message for f in report.findings]
    assert report.findings == () and report.recommendations == ()
    assert len(report.loss.values) == 2 + (2 - 1)  # 2 probe batches, 1 loss between the steps
    ratios = [layer.update_to_weight for layer in report.layers if layer.status.value == "healthy"]
    assert ratios and all(r is not None and 0 < r < 0.1 for r in ratios)


def test_adam_at_a_far_too_large_learning_rate_diverges() -> None:
    report = scan("builtin:relu-he", steps=3, optimizer="adam", lr=1.0, batch_size=8)
    divergence = [f for f in report.findings if f.kind == FindingKind.DIVERGENCE]
    assert divergence and divergence[0].evidence["optimizer"] == "adam"
    lower = next(r for r in report.recommendations if r.id == RecommendationId.LOWER_LR)
    assert "torch.optim.Adam(" in lower.code


def test_a_learning_rate_far_too_large_diverges() -> None:
    report = scan("builtin:relu-he", steps=3, optimizer="sgd", lr=10.0)
    divergence = [f for f in report.findings if f.kind == FindingKind.DIVERGENCE]
    assert len(divergence) == 1 and divergence[0].layer is None
    ev = divergence[0].evidence
    assert ev["lr"] == 10.0 and ev["optimizer"] == "sgd" and ev["first_nonfinite_at"] is not None
    ratio, suggested = ev["max_update_to_weight"], ev["suggested_lr"]
    assert isinstance(ratio, float) and ratio > 1.0 and ev["max_update_layer"]
    # A ratio above 1 would give lr x 1e-3 / ratio < lr / 1000: the suggestion stops at that floor.
    assert suggested == float(f"{max(10.0 * 1e-3 / ratio, 10.0 / 1000):.1g}") == 0.01
    assert ev["suggested_lr_basis"] == "floor"
    assert len(str(ev["losses"]).split(", ")) == len(report.loss.values)
    recs = {r.id: r for r in report.recommendations}
    assert f"lr={suggested:g}" in recs[RecommendationId.LOWER_LR].code
    assert RecommendationId.CLIP_GRADIENTS in recs
    assert RecommendationId.GUARD_NONFINITE not in recs  # the NaN weights come from the steps
    nonfinite = [f for f in report.findings if f.kind == FindingKind.NONFINITE]
    assert nonfinite and nonfinite[0].evidence["cause"] == "weights"


def test_the_suggested_learning_rate_brings_the_update_ratio_near_1e3() -> None:
    first = scan("builtin:relu-he", steps=2, optimizer="sgd", lr=2.0)
    ev = next(f.evidence for f in first.findings if f.kind == FindingKind.DIVERGENCE)
    again = scan("builtin:relu-he", steps=2, optimizer="sgd", lr=float(cast(float, ev["suggested_lr"])))
    assert not [f for f in again.findings if f.kind == FindingKind.DIVERGENCE]
    top = max(layer.update_to_weight or 0.0 for layer in again.layers)
    assert 2e-4 < top < 5e-3


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _tiny_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 6), torch.randn(n, 2)


def _reference_ratio(optimizer: str, lr: float) -> dict[str, float]:
    """Plain autograd and a plain optimizer step: |Δw| / |w| per layer for the probe's first batch."""
    model = _Tiny()
    torch.manual_seed(0)  # the probe seeds batch b with seed + b
    x, y = _tiny_batch(16)
    nn.functional.mse_loss(model(x), y).backward()
    before = copy.deepcopy(model)
    factory = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    factory(model.parameters(), lr=lr).step()
    ratios = {}
    for name in ("a", "b"):
        old, new = getattr(before, name), getattr(model, name)
        with torch.no_grad():
            change = math.sqrt(sum(float((n - o).pow(2).sum())
                                   for n, o in zip(new.parameters(), old.parameters())))
            norm = math.sqrt(sum(float(o.pow(2).sum()) for o in old.parameters()))
        ratios[name] = change / norm
    return ratios


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 1e-2)])
def test_update_to_weight_matches_a_plain_optimizer_step(optimizer: str, lr: float) -> None:
    """With 2 batches and 1 step there is exactly one step, on the first batch's gradients."""
    report = scan(Target("tiny", _Tiny, _tiny_batch, None), batches=2, steps=1, optimizer=optimizer, lr=lr)
    expected = _reference_ratio(optimizer, lr)
    for layer in report.layers:
        assert layer.update_to_weight == pytest.approx(expected[layer.name], rel=1e-4)


def test_update_to_weight_is_null_without_steps_and_in_the_json() -> None:
    target = Target("tiny", _Tiny, _tiny_batch, None)
    assert all(layer["update_to_weight"] is None for layer in scan(target).to_dict()["layers"])
    stepped = scan(target, steps=2).to_dict()["layers"]
    assert all(isinstance(layer["update_to_weight"], float) for layer in stepped)


def _context(trace: tuple[float, ...], steps: int = 3) -> CheckContext:
    measured = Measurements(layers=(), losses=trace, loss_trace=trace, first_step_update=("fc", 0.5))
    return CheckContext([], [], Thresholds(), measured, ScanConfig(steps=steps, optimizer="sgd", lr=0.1))


def test_divergence_rule() -> None:
    assert divergence_check(_context((1.0, 1.5, 2.5, 4.0)))  # three rises, 4x the start
    assert divergence_check(_context((1.0, 0.9, float("nan"))))  # turns NaN
    assert not divergence_check(_context((1.0, 1.5, 2.5, 4.0), steps=0))  # no steps: no dynamics
    assert not divergence_check(_context((float("nan"), 1.0, 2.0, 4.0)))  # NaN from the start
    assert not divergence_check(_context((1.0, 0.8, 1.1, 0.9, 1.2)))  # ordinary wobble
    assert not divergence_check(_context((1.0, 1.1, 1.2, 1.3)))  # steady but only +30%
    assert not divergence_check(_context((1.0, 4.0, 1.5, 1.8)))  # overshot once, came back
    assert divergence_check(_context((3.5, 4.6e7, 2.3e6, 8.9e4, 2.1e3)))  # jumped up, stayed up
    assert not divergence_check(_context((1.0, 2.5)))  # one transition: neither steady nor sustained
    assert divergence_check(_context((1.0, 1.5, 2.5)))  # a 3-value trace (--steps 1): 2 rises
    assert divergence_check(_context((-2.0, -1.0, 0.5, 1.0)))  # negative losses (NLL) rise too
    finding = divergence_check(_context((1.0, 1.5, 2.5, 4.0)))[0]
    assert finding.layer is None and finding.evidence["suggested_lr"] == 0.0002
    assert finding.evidence["rule"] == "steady-rise"
    assert divergence_check(_context((3.5, 4.6e7, 2.3e6, 2.1e3)))[0].evidence["rule"] == "sustained-rise"


def test_rises_and_suggested_lr() -> None:
    assert trailing_rises((3.0, 1.0, 2.0, 3.0)) == 2
    assert trailing_rises((1.0,)) == 0
    assert suggested_lr(0.1, 0.5) == 0.0002
    assert suggested_lr(0.1, None) == 0.01  # no ratio: 10x lower (docs/fixes/lower-lr.md)
    assert suggested_lr(0.1, 1e-5) == 0.01  # would raise the lr: 10x lower instead


def test_the_table_shows_update_ratios_only_with_steps() -> None:
    from gradcheck_cli.report.render.table import render_table

    target = Target("tiny", _Tiny, _tiny_batch, None)
    stepped = render_table(scan(target, steps=2), width=80, color=False)
    assert "update/w" in stepped and max(len(line) for line in stepped.splitlines()) <= 80
    assert "update/w" not in render_table(scan(target), width=80, color=False)


def test_steps_with_a_single_batch_is_a_usage_error() -> None:
    from gradcheck_cli.errors import UserError

    with pytest.raises(UserError, match="needs at least 2 --batches"):
        scan("builtin:relu-he", batches=1, steps=3)
