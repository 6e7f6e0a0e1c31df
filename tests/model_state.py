"""A snapshot of everything a scan must give back to the user's model (restore and interrupt tests)."""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "values": {k: v.clone() for k, v in model.state_dict().items()},
        "objects": [id(t) for t in [*model.parameters(), *model.buffers()]],
        "data_ptrs": [p.data_ptr() for p in model.parameters()],
        "grads": [None if p.grad is None else (id(p.grad), p.grad.clone()) for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
                  for m in model.modules()],
        "tensor_hooks": [p._backward_hooks for p in model.parameters()],
    }


def assert_unchanged(before: dict[str, object], model: nn.Module) -> None:
    after = snapshot(model)
    for key in ("objects", "data_ptrs", "requires_grad", "training", "hooks", "tensor_hooks"):
        assert after[key] == before[key], key
    for name, value in before["values"].items():  # type: ignore[attr-defined]
        assert torch.equal(after["values"][name], value), name  # type: ignore[index]
    for a, b in zip(after["grads"], before["grads"]):  # type: ignore[call-overload]
        assert (a is None) == (b is None)
        if a is not None:
            assert a[0] == b[0] and torch.equal(a[1], b[1])
