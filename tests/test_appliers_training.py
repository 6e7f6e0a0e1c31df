"""The training appliers (clip-gradients, lower-lr, weight-decay) and the probe's clipped steps.

Plain-autograd references: a hand loop with loss.backward(), torch.nn.utils.clip_grad_norm_ and
optimizer.step() on a deep copy of the same tiny seeded model gives the losses and update ratios
that the probe's clipped steps must reproduce.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.measure.steps import clip_gradients

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
