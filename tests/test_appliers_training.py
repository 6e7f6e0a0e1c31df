"""The training appliers (clip-gradients, lower-lr, weight-decay) and the probe's clipped steps.

Plain-autograd references: a hand loop with loss.backward(), torch.nn.utils.clip_grad_norm_ and
optimizer.step() on a deep copy of the same tiny seeded model gives the losses and update ratios
that the probe's clipped steps must reproduce.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import pytest
import torch
from torch import nn

from gradcheck_cli.analyse.pipeline import analyse
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.measure.steps import clip_gradients
from gradcheck_cli.report.parameters import ClipParameters, LowerLrParameters
from gradcheck_cli.report.records import Recommendation, RecommendationId, Report
from gradcheck_cli.target.batches import synthetic_batch_maker
from gradcheck_cli.target.resolve import resolve_target
from gradcheck_cli.verify.applier import ApplyContext
from gradcheck_cli.verify.appliers import training

BATCH = 8


def _model() -> nn.Sequential:
    torch.manual_seed(3)
    first = nn.Linear(6, 12)
    with torch.no_grad():
        first.weight.mul_(4.0)  # gradients well above the max_norm below: clipping acts
    return nn.Sequential(first, nn.Tanh(), nn.Linear(12, 3))


def _batch(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + index)
    return torch.randn(BATCH, 6, generator=generator) * 3, torch.randn(BATCH, 3, generator=generator)


class _Batches:
    """make_batch for the probe: the i-th call returns _batch(i) (the probe draws them in order)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return _batch(self.calls - 1)


def _hand_loop(model: nn.Module, config: ScanConfig) -> tuple[list[list[float]], list[float]]:
    """The probe's schedule written with plain autograd: per batch one backward, then (between
    batches) config.steps SGD steps on that batch, each clipped with clip_grad_norm_. Returns the
    losses of each round (the batch's, then after each step) and each layer's largest
    update/weight ratio."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    largest = [0.0] * len(layers)
    rounds = []
    for index in range(config.batches - 1):
        x, y = _batch(index)
        loss = nn.functional.mse_loss(model(x), y)
        losses = [float(loss.detach())]
        for _ in range(config.steps):
            optimizer.zero_grad()
            loss.backward()
            if config.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
            before = [torch.cat([p.detach().flatten().clone() for p in m.parameters()]) for m in layers]
            optimizer.step()
            for k, m in enumerate(layers):
                after = torch.cat([p.detach().flatten() for p in m.parameters()])
                largest[k] = max(largest[k], float((after - before[k]).norm() / before[k].norm()))
            loss = nn.functional.mse_loss(model(x), y)
            losses.append(float(loss.detach()))
        rounds.append(losses)
    return rounds, largest


@pytest.mark.parametrize("clip", [None, 0.05])
def test_clipped_probe_steps_equal_a_hand_loop_with_clip_grad_norm(clip: float | None) -> None:
    config = ScanConfig(batches=3, batch_size=BATCH, steps=3, lr=0.1, clip_grad_norm=clip)
    model = _model()
    measured = run_probe(model, _Batches(), None, config)
    rounds, largest = _hand_loop(model, config)
    assert len(measured.step_rounds) == 2
    for probe_round, hand_round in zip(measured.step_rounds, rounds):
        assert probe_round == pytest.approx(hand_round, rel=1e-5)
    ratios = [layer.update_to_weight for layer in measured.layers]
    assert ratios == pytest.approx(largest, rel=1e-4)


def test_clipping_changes_the_steps_of_this_model() -> None:
    """The reference above is not vacuous: at max_norm 0.05 the clipped steps differ from plain ones."""
    config = ScanConfig(batches=3, batch_size=BATCH, steps=3, lr=0.1)
    plain, _ = _hand_loop(_model(), config)
    clipped, _ = _hand_loop(_model(), replace(config, clip_grad_norm=0.05))
    assert not math.isclose(plain[0][-1], clipped[0][-1], rel_tol=1e-3)


def test_clip_gradients_counts_sparse_gradients_by_their_coalesced_values() -> None:
    embed = nn.Embedding(10, 3, sparse=True)
    with torch.no_grad():
        embed.weight.fill_(1.0)
    embed(torch.tensor([1, 2, 2])).sum().backward()
    dense = torch.ones(3)
    sparse = embed.weight.grad
    assert sparse is not None and sparse.is_sparse
    clipped_sparse, clipped_dense, none = clip_gradients((sparse, dense, None), 1.0)
    # rows 1 and 2 get 1 and 2 (index 2 twice): total norm sqrt(3 * 1 + 3 * 4 + 3 * 1) = sqrt(18)
    scale = 1.0 / (math.sqrt(18) + 1e-6)
    assert none is None and clipped_sparse is not None and clipped_dense is not None
    assert torch.allclose(clipped_dense, dense * scale)
    assert torch.allclose(clipped_sparse.to_dense(), sparse.to_dense() * scale)
    assert torch.equal(dense, torch.ones(3))  # the given gradients stay as measured


def test_clip_gradients_leaves_gradients_below_max_norm_as_they_are() -> None:
    grad = torch.tensor([0.3, 0.4])
    (clipped,) = clip_gradients((grad,), 10.0)
    assert clipped is not None and torch.equal(clipped, grad)


# --- the appliers ---------------------------------------------------------------------------------

def _context(model: nn.Module, rec: Recommendation, report: Report, measurements: Measurements,
             config: ScanConfig) -> ApplyContext:
    return ApplyContext(model, rec, report, measurements, config, lambda: None)


def _scanned(config: ScanConfig) -> tuple[nn.Module, Callable[[int], Any], Report, Measurements]:
    """builtin:relu-normal-init (N(0, 1) weights: exploding) probed and analysed with `config`."""
    target = resolve_target("builtin:relu-normal-init")
    model = target.build_model()
    make_batch = target.make_batch or synthetic_batch_maker(model, None, source=target.name)
    measurements = run_probe(model, make_batch, target.loss_fn, config)
    return model, make_batch, analyse(measurements, config, Thresholds(), target=target.name), measurements


def _recommendation(report: Report, rec_id: RecommendationId) -> Recommendation:
    return next(r for r in report.recommendations if r.id == rec_id)


@pytest.mark.parametrize("steps, batches, expected, baseline", [
    (0, 3, {"steps": 3, "batches": 3}, {"steps": 3, "batches": 3}),   # no steps: before = same steps, no fix
    (2, 1, {"steps": 3, "batches": 2}, {"steps": 3, "batches": 2}),
    (5, 4, {"steps": 5, "batches": 4}, {}),                           # enough: the scan's report is the before
])
def test_the_training_patches_take_at_least_three_steps_between_two_batches(
        steps: int, batches: int, expected: dict[str, int], baseline: dict[str, int]) -> None:
    config = ScanConfig(steps=steps, batches=batches, optimizer="adam", lr=0.5)
    rec = Recommendation(RecommendationId.CLIP_GRADIENTS, "t", (), "", "", ClipParameters(2.5))
    patch = training.clip_gradients(_context(nn.Linear(2, 2), rec, cast(Report, None), cast(Measurements, None),
                                             config))
    assert patch.applied and patch.config == {**expected, "clip_grad_norm": 2.5}
    assert patch.baseline_config == baseline
    assert "optimizer" not in patch.config and "lr" not in patch.config  # the user's optimizer and rate stay
    lower = Recommendation(RecommendationId.LOWER_LR, "t", (), "", "", LowerLrParameters(None, divide_by=10.0))
    patch = training.lower_lr(_context(nn.Linear(2, 2), lower, cast(Report, None), cast(Measurements, None), config))
    assert patch.applied and patch.config == {**expected, "lr": 0.05} and patch.baseline_config == baseline


def test_clip_gradients_on_an_exploding_builtin_bounds_the_steps() -> None:
    """The scan's own clip-gradients patch, probed: with SGD a clipped step moves a layer by at
    most lr x max_norm, so the largest update/weight ratio falls below the unclipped one."""
    config = ScanConfig(steps=0)
    model, make_batch, report, measurements = _scanned(config)
    rec = _recommendation(report, RecommendationId.CLIP_GRADIENTS)
    patch = training.clip_gradients(_context(copy.deepcopy(model), rec, report, measurements, config))
    assert isinstance(rec.parameters, ClipParameters) and patch.config["clip_grad_norm"] == rec.parameters.max_norm
    after = run_probe(copy.deepcopy(model), make_batch, None, replace(config, **patch.config))
    before = run_probe(copy.deepcopy(model), make_batch, None, replace(config, **patch.baseline_config))
    assert len(after.step_rounds) == config.batches - 1 and all(len(r) == 4 for r in after.step_rounds)
    largest_after = max(x.update_to_weight or 0.0 for x in after.layers)
    largest_before = max(x.update_to_weight or 0.0 for x in before.layers)
    assert 0 < largest_after < largest_before


def test_lower_lr_on_an_exploding_builtin_scales_the_first_sgd_step() -> None:
    """Plain SGD moves the weights by lr x g: the first step's largest update/weight ratio scales
    with the rate, new lr / old lr, on the same gradients."""
    config = ScanConfig(steps=2)
    model, make_batch, report, measurements = _scanned(config)
    rec = _recommendation(report, RecommendationId.LOWER_LR)
    patch = training.lower_lr(_context(copy.deepcopy(model), rec, report, measurements, config))
    after = run_probe(copy.deepcopy(model), make_batch, None, replace(config, **patch.config))
    before = run_probe(copy.deepcopy(model), make_batch, None, replace(config, **patch.baseline_config))
    assert after.first_step_update is not None and before.first_step_update is not None
    assert after.first_step_update[0] == before.first_step_update[0]
    ratio = after.first_step_update[1] / before.first_step_update[1]
    assert ratio == pytest.approx(patch.config["lr"] / config.lr, rel=1e-4)
    assert patch.config["lr"] < config.lr


def test_weight_decay_is_not_claimed() -> None:
    rec = Recommendation(RecommendationId.WEIGHT_DECAY, "t", (), "", "")
    patch = training.weight_decay(_context(nn.Linear(2, 2), rec, cast(Report, None), cast(Measurements, None),
                                           ScanConfig(steps=3)))
    assert not patch.applied and "not verifiable" in patch.reason
