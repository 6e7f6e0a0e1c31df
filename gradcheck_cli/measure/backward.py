"""The probe's gradients: torch.autograd.grad, or .backward() where a reentrant checkpoint needs it.

torch.autograd.grad returns the gradients without touching any .grad, which is why the probe uses
it. A reentrant checkpoint (`torch.utils.checkpoint.checkpoint(..., use_reentrant=True)`) cannot
run under it: its backward re-runs the segment's forward and calls .backward() on it, which torch
refuses under .grad() ("incompatible with .grad()"), and when the segment's parameters are not
among what autograd.grad was asked for, autograd prunes the checkpoint's node and the segment's
parameters silently get no gradient at all. So when the graph holds such a node (and only then),
the gradients are taken with loss.backward() into temporary .grad fields: every leaf of the graph
has its .grad set aside first and put back afterwards, so the user's .grad values (and any other
leaf's, such as an input that requires grad) come back as they were. The numbers are those of
plain autograd either way (tests/test_dtypes.py compares them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.parameter import is_lazy

REENTRANT_NODES = frozenset({"CheckpointFunctionBackward"})
"""Autograd nodes whose backward calls .backward() itself (torch.utils.checkpoint's reentrant
variant)."""


def gradients(loss: torch.Tensor, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """d loss / d tensors, None for a tensor the loss does not depend on."""
    if any(is_lazy(t) for t in tensors):
        # A lazy module the forward never reached still holds an UninitializedParameter, which
        # autograd refuses outright; it received no gradient, like any unused parameter.
        ready = [k for k, t in enumerate(tensors) if not is_lazy(t)]
        found = dict(zip(ready, gradients(loss, [tensors[k] for k in ready])))
        return tuple(found.get(k) for k in range(len(tensors)))
    if any(hasattr(t, "to_local") for t in tensors):
        # FSDP2 (gradcheck scan --shard): the forward ran on gathered copies of the sharded
        # parameters, so autograd.grad finds none of them; backward() reduce-scatters into .grad.
        return _gradients_by_backward(loss, tensors, list(tensors))
    leaves = _reentrant_graph_leaves(loss)
    if leaves is None:
        return torch.autograd.grad(loss, list(tensors), allow_unused=True)
    return _gradients_by_backward(loss, tensors, leaves)


def _reentrant_graph_leaves(loss: torch.Tensor) -> list[torch.Tensor] | None:
    """Every leaf tensor of the loss's graph when it holds a reentrant node, else None."""
    if loss.grad_fn is None:
        return None
    nodes = _graph_nodes(loss.grad_fn)
    if not any(type(node).__name__ in REENTRANT_NODES for node in nodes):
        return None
    variables = (getattr(node, "variable", None) for node in nodes)  # AccumulateGrad: a leaf
    return [v for v in variables if isinstance(v, torch.Tensor)]


def _graph_nodes(root: object) -> list[object]:
    seen: set[object] = set()
    stack = [root]
    nodes = []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes.append(node)
        stack.extend(fn for fn, _ in node.next_functions)  # type: ignore[attr-defined]
    return nodes


def _gradients_by_backward(loss: torch.Tensor, tensors: Sequence[torch.Tensor],
                           leaves: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    # The leaves inside a checkpointed segment are not in the outer graph (the segment ran
    # without grad): the tensors asked for are set aside too.
    held = {id(t): t for t in [*leaves, *tensors]}
    saved = {key: t.grad for key, t in held.items()}
    try:
        for t in held.values():
            t.grad = None
        loss.backward()
        return tuple(t.grad for t in tensors)
    finally:
        for key, t in held.items():
            t.grad = saved[key]
