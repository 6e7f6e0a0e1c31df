"""The scan reads tensors back to the host a fixed number of times, whatever the number of layers.

On an accelerator every read (Tensor.item, .tolist, float(t), bool(t), .cpu(), ...) waits for the
queue to drain; a scan that read per layer (weight norm, std, bias mean, output sums, activation
counts: five or more per layer) stalled thousands of times on a deep model. The measurement session
now reads once per forward, once per batch and once at the end (measure/norms.py DeferredSquares,
measure/finish.py HostRead). These tests count the reads of a whole scan on two models that differ
only in depth, and ask for the same count.

Two counters: a TorchFunctionMode around the scan (what the user's code and gradcheck run outside
its own hooks), and the Tensor methods themselves wrapped, which also sees the session's module
hooks (they run with torch functions disabled, hooks.py `_unwatched`, so no mode sees them).
"""

from __future__ import annotations

import collections
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradcheck_cli.api import scan
from gradcheck_cli.target.resolve import Target

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")


def _stack(depth: int) -> Target:
    """depth x (Linear(8, 8), Tanh), seeded: a plain autograd MLP."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(8, 8), nn.Tanh())])

    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, 8), torch.randn(batch_size, 8)
    return Target(f"stack-{depth}", build, make_batch)


def _conv_stack(depth: int) -> Target:
    """depth x (Conv2d, BatchNorm2d, ReLU) then a Linear head: parameters with biases, channel norms
    and a dead-unit (ReLU) site per block."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        blocks = [m for _ in range(depth) for m in (nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())]
        return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, 4, 6, 6), torch.randint(0, 3, (batch_size,))
    return Target(f"conv-{depth}", build, make_batch)


class _CountReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in READS:
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


def _reads_seen_by_mode(target: Target, **options: Any) -> int:
    counter = _CountReads()
    with counter:
        scan(target, batches=3, batch_size=4, **options)
    return sum(counter.reads.values())


@contextmanager
def _wrapped_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter[str]]:
    reads: collections.Counter[str] = collections.Counter()

    def wrap(name: str) -> Callable[..., Any]:
        original = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            reads[name] += 1
            return original(self, *args, **kwargs)
        return read
    with monkeypatch.context() as patch:
        for name in READS:
            patch.setattr(torch.Tensor, name, wrap(name))
        yield reads


def _all_reads(monkeypatch: pytest.MonkeyPatch, target: Target, **options: Any) -> int:
    with _wrapped_reads(monkeypatch) as reads:
        scan(target, batches=3, batch_size=4, **options)
    return sum(reads.values())


@pytest.mark.parametrize("model", [_stack, _conv_stack])
def test_reads_seen_by_a_function_mode_do_not_grow_with_depth(model: Callable[[int], Target]) -> None:
    shallow, deep = _reads_seen_by_mode(model(10)), _reads_seen_by_mode(model(50))
    assert deep == shallow
    assert shallow <= 3 * 8 + 4  # a few per batch and a few at the end, not one per layer


@pytest.mark.parametrize("model", [_stack, _conv_stack])
def test_reads_inside_the_hooks_do_not_grow_with_depth(monkeypatch: pytest.MonkeyPatch,
                                                       model: Callable[[int], Target]) -> None:
    shallow, deep = _all_reads(monkeypatch, model(10)), _all_reads(monkeypatch, model(50))
    assert deep == shallow
    assert shallow <= 3 * 8 + 4


def test_steps_read_per_step_not_per_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """--steps adds the steps' own reads (the loss after each step), none per layer. (SGD: on the
    CPU torch.optim.Adam itself reads its step counter once per parameter.)"""
    shallow = _all_reads(monkeypatch, _stack(10), steps=2, optimizer="sgd")
    deep = _all_reads(monkeypatch, _stack(50), steps=2, optimizer="sgd")
    assert deep == shallow


class _RecordsCollector(nn.Module):
    """A Linear whose forward notes whether the garbage collector is on."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(gc.isenabled())
        return self.linear(x)


@pytest.mark.parametrize("enabled_before", [True, False])
def test_the_collector_is_off_during_the_probe_and_put_back(enabled_before: bool) -> None:
    model = _RecordsCollector()
    target = Target("collector", lambda: model, lambda n: (torch.randn(n, 4), torch.randn(n, 4)))
    was = gc.isenabled()
    try:
        if not enabled_before:
            gc.disable()
        scan(target, batches=2, batch_size=4)
        assert gc.isenabled() is enabled_before
    finally:
        if was:
            gc.enable()
    assert model.seen == [False, False]


def test_norms_flushed_early_give_the_same_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooks' norms flushed after every tensor (the memory bound, norms.FLUSH_ELEMENTS) give the
    same report as one flush per forward: a container returning its last child's output is
    measured once either way."""
    from gradcheck_cli.measure import norms

    once = scan(_conv_stack(3), batches=2, batch_size=4).to_dict()
    monkeypatch.setattr(norms, "FLUSH_ELEMENTS", 0)
    assert scan(_conv_stack(3), batches=2, batch_size=4).to_dict() == once


def test_an_in_place_op_after_a_layer_leaves_its_measured_output() -> None:
    """nn.ReLU(inplace=True) overwrites the Linear's output after its hook: the layer's output RMS
    is that of the Linear's output as it was (plain autograd: mean of squares of linear(x))."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    model = nn.Sequential(linear, nn.ReLU(inplace=True), nn.Linear(5, 2))
    x = torch.linspace(-3.0, 3.0, 4 * 6).reshape(4, 6)
    with torch.no_grad():
        want = float(linear(x).pow(2).mean().sqrt())
        overwritten = float(torch.relu(linear(x)).pow(2).mean().sqrt())
    report = scan(Target("inplace", lambda: model, lambda n: (x, torch.zeros(4, 2))), batches=2).to_dict()
    assert report["layers"][0]["activation"]["rms"] == pytest.approx(want, rel=1e-6)
    assert want > 1.5 * overwritten  # what measuring after the overwrite would give is far off
