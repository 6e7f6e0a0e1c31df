"""Typed access to a model's parts in tests.

torch's stubs type `sequential[0]` as Module and any attribute a module sets at runtime as
`Tensor | Module`; these helpers narrow with a runtime check instead of a cast, so a test that
builds the wrong model fails loudly rather than type-checking by accident.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def narrow(module: object, kind: type[M]) -> M:
    """`module` as an instance of `kind` (raises TypeError when it is not one)."""
    if not isinstance(module, kind):
        raise TypeError(f"expected {kind.__name__}, got {type(module).__name__}")
    return module


def grad_of(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor.grad`, which must exist (raises AssertionError when backward did not reach it)."""
    grad = tensor.grad
    assert grad is not None, "no gradient"
    return grad
