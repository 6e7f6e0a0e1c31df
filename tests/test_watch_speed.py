"""The watch's cheaper paths (measure/watch.py) measure what the slow ones did: the norms of plain
dense gradients taken as they are (no detach per tensor), sparse gradients still by their values,
gradients of a create_graph backward without a graph, and the update ratio from ONE copy of the
weights (the post-step hook allocates nothing the size of a weight). bench/watch_overhead.py has
the timings; these are the properties."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gradcheck_cli.measure.series import NonfiniteEvent, StepBlock
from gradcheck_cli.measure.watch import WatchEngine


def _engine(model: nn.Module, optimizer: torch.optim.Optimizer | None, blocks: list[StepBlock]) -> WatchEngine:
    events: list[NonfiniteEvent] = []
    engine = WatchEngine(model, optimizer, every=1, sample_every=0, on_block=blocks.append, on_event=events.append)
    engine.attach()
    return engine


def _sq(tensors: list[torch.Tensor]) -> float:
    return sum(float(t.double().square().sum()) for t in tensors)


class _Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 4, sparse=True)
        self.out = nn.Linear(4, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(tokens).mean(dim=1))


def test_sparse_gradients_are_measured_by_their_values() -> None:
    torch.manual_seed(0)
    model = _Bag()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    blocks: list[StepBlock] = []
    engine = _engine(model, opt, blocks)
    model(torch.tensor([[1, 2, 2, 5]])).sum().backward()
    assert model.emb.weight.grad is not None and model.emb.weight.grad.layout == torch.sparse_coo
    expected = [_sq([model.emb.weight.grad.to_dense()]), _sq([p.grad for p in model.out.parameters()
                                                               if p.grad is not None])]
    opt.step()
    opt.zero_grad()
    engine.step(0.0)
    engine.detach()
    assert blocks[0].grad_sq[0] == pytest.approx(expected, rel=1e-6)
    assert min(expected) > 0


def test_create_graph_gradients_are_read_without_a_graph() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    blocks: list[StepBlock] = []
    engine = _engine(model, None, blocks)
    model(torch.randn(5, 3)).pow(2).sum().backward(create_graph=True)
    assert all(p.grad is not None and p.grad.requires_grad for p in model.parameters())
    pending = engine._pending
    assert pending is not None and not pending.requires_grad
    expected = [_sq([p.grad.detach() for p in model[i].parameters() if p.grad is not None]) for i in (0, 2)]
    engine.step(0.0)
    engine.detach()
    assert blocks[0].grad_sq[0] == pytest.approx(expected, rel=1e-6)
    for p in model.parameters():
        p.grad = None  # (create_graph: the grads reference the graph)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _tensors(v)] if isinstance(value, (list, tuple)) else []


class _Allocations(TorchDispatchMode):
    """The largest new tensor an op returned, in elements (views and in-place results share the
    storage of an input: not new)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in _tensors([*args, *(kwargs or {}).values()])}
        new = [t.numel() for t in _tensors(out) if t.untyped_storage().data_ptr() not in given]
        self.largest = max([self.largest, *new])
        return out


def test_the_update_ratio_allocates_nothing_the_size_of_a_weight_after_the_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    blocks: list[StepBlock] = []
    engine = _engine(model, opt, blocks)
    model(torch.randn(8, 64)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    engine._before_step(opt, (), {})  # step 0: the copy of the weights is taken here
    with torch.no_grad():
        for p in model.parameters():
            assert p.grad is not None
            p.sub_(0.1 * p.grad)  # the optimizer's step, by hand
    with _Allocations() as allocations:
        engine._after_step(opt, (), {})
    assert allocations.largest < 64  # per-layer vectors only: no w_after - w_before buffer
    engine.step(0.0)
    engine.detach()
    ratio = blocks[0].update_ratio
    assert ratio is not None
    expected = [math.sqrt(_sq([a.detach() - b for a, b in zip(m.parameters(), bs)]) / _sq(bs))
                for m, bs in ((model[0], before[:2]), (model[1], before[2:]))]
    assert ratio[0] == pytest.approx(expected, rel=1e-5)
