"""Real training runs with plain torch for the watch's detectors over time (test_grad_trend.py,
test_weight_growth.py), and their folding into a Timeline as the watch hands blocks over."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.analyse.timeline import Timeline
from gradcheck_cli.measure.series import StepBlock


def mlp_run(optimizer: str, lr: float, classify: bool, steps: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """A real run with plain torch: an MLP on a fixed regression or classification task, minibatch
    steps; returns each step's loss, per layer the squared gradient norm (before the step) and the
    squared weight norm (after it)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x = torch.randn(512, 8)
    y = (x @ torch.randn(8, 4)).argmax(1) if classify else torch.sin(x @ torch.randn(8, 1)) + 0.1 * torch.randn(512, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 4 if classify else 1))
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer](model.parameters(), lr=lr)
    layers = [m for m in model if isinstance(m, nn.Linear)]
    losses, grads, weights = [], [], []
    for _ in range(steps):
        index = torch.randint(0, 512, (32,))
        out = model(x[index])
        loss = nn.functional.cross_entropy(out, y[index]) if classify else ((out - y[index]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        grads.append(tuple(squared(p.grad for p in m.parameters()) for m in layers))
        opt.step()
        losses.append(loss.item())
        weights.append(tuple(squared(p.detach() for p in m.parameters()) for m in layers))
    return losses, grads, weights


def watched_regression(model: Any, lr: float, x: Any, y: Any, steps: int, output: Any):  # type: ignore[no-untyped-def]
    """Full-batch SGD on mean squared error under gradcheck_cli.watch (every=25); the watch's report."""
    import torch

    from gradcheck_cli import watch

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with watch(model, optimizer, every=25, output=output, quiet=True) as w:
        for _ in range(steps):
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            w.step(loss)
    assert w.report is not None
    return w.report


def squared(tensors: Iterable[Any]) -> float:
    """The squared L2 norm of the tensors together (plain autograd's numbers, no gradcheck)."""
    return math.fsum(float(t.pow(2).sum()) for t in tensors if t is not None)


def fold_run(losses: list[float], grads: list[tuple[float, ...]], weights: list[tuple[float, ...]],
             every: int) -> Timeline:
    timeline = Timeline(["0", "2", "4"], Thresholds())
    for first in range(0, len(losses), every):
        last = min(first + every, len(losses)) - 1
        timeline.add(StepBlock(first, tuple(losses[first:last + 1]), tuple(grads[first:last + 1]), None,
                               weights[last], (0, 0, 0)))
    return timeline
