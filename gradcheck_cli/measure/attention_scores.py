"""Which layers compute attention scores: layers whose output feeds a softmax.

Why (docs/findings/vanishing.md, "Not judged at step 0, by design"): a query or key projection reaches the loss only
through the softmax of its scores. At init (BERT/GPT std 0.02) the scores are close to zero, the
attention is near uniform, and the softmax's Jacobian diag(p) - p p^T is small there, so these
layers get small gradients by design while the value path at the same depth learns normally.
classify.py uses this to tell that dip from a gradient that vanishes through depth.

How it is seen, by mechanism rather than by names (q/k/query/key/c_attn/in_proj differ between
libraries, and a fused qkv projection or a hand-written scorer has none of them):
* the probe marks each layer's output tensor with the layer's name (`mark`);
* FunctionalWatch passes every torch function call of the probe's forwards here (`observe`). Ops
  that only reshape, slice, scale, mask, rotate or multiply tensors (view, transpose, split,
  matmul, masked_fill, cat, ...: the ops between a projection and its scores) carry the union of
  their inputs' origins to their outputs (a learned scale or bias added in does not stop them);
  any other op (a norm, an activation, a matmul with the user's own parameter) carries nothing,
  and a layer's output starts afresh with its own name. A union larger than `MAX_ORIGINS` (a
  residual stream summing many layers) is dropped: scores are a query times a key, plus at most a
  position bias;
* the origins of a softmax's input, and of the query and key of F.scaled_dot_product_attention,
  are score layers (`layers`). The value never is.
A layer that computes q/k inside itself from its own parameters (nn.MultiheadAttention's packed
in_proj_weight) is not marked: its gradient holds the value path's too.

No tensor leaves this module: `layers` holds names.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

MAX_ORIGINS = 4
# Ops that carry a projection's output to its scores without transforming it by parameters.
CARRY = frozenset({
    "view", "reshape", "transpose", "transpose_", "permute", "contiguous", "flatten", "unflatten",
    "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "select", "split", "split_with_sizes",
    "chunk", "unbind", "tensor_split", "__getitem__", "t", "__get__", "swapaxes", "movedim", "to",
    "float", "half", "bfloat16", "double", "type_as", "clone", "repeat", "repeat_interleave", "cat",
    "concat", "stack", "neg", "__neg__", "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div",
    "div_", "__truediv__", "__itruediv__", "add", "add_", "__add__", "__radd__", "__iadd__", "sub",
    "__sub__", "__rsub__", "masked_fill", "masked_fill_", "where", "matmul", "__matmul__", "bmm",
    "baddbmm", "einsum", "tril", "triu",
})
# A parameter multiplied in by one of these is the user's own linear map (x @ self.W): a layer.
LINEAR_MAPS = frozenset({"matmul", "__matmul__", "bmm", "baddbmm", "einsum"})
SOFTMAX = frozenset({"softmax", "_softmax", "softmax_"})
SDPA = "scaled_dot_product_attention"


class ScoreTracker:
    """Origins of the tensors of one forward, and the score layers found over all forwards."""

    def __init__(self) -> None:
        self.layers: set[str] = set()
        self._origins: dict[int, tuple[weakref.ref[torch.Tensor], frozenset[str]]] = {}

    def start(self) -> None:
        """A new forward: forget the previous one's tensors."""
        self._origins.clear()

    def mark(self, out: torch.Tensor, layer: str) -> None:
        """`out` is the output of `layer`."""
        self._set(out, frozenset((layer,)))

    def observe(self, name: str, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> None:
        if name in SOFTMAX:
            self.layers.update(self._get(args[0] if args else kwargs.get("input")))
        elif name == SDPA:
            self.layers.update(self._get(args[0] if args else kwargs.get("query")))
            self.layers.update(self._get(args[1] if len(args) > 1 else kwargs.get("key")))
        elif name in CARRY and self._origins:
            self._carry(name, args, kwargs, out)

    def _carry(self, name: str, args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> None:
        origins: set[str] = set()
        for tensor in _tensors((args, kwargs)):
            if name in LINEAR_MAPS and isinstance(tensor, nn.Parameter):
                return  # x @ self.W: the user's own linear map, a layer of its own
            origins.update(self._get(tensor))
        if origins and len(origins) <= MAX_ORIGINS:
            found = frozenset(origins)
            for tensor in _tensors(out):
                self._set(tensor, found)

    def _get(self, tensor: Any) -> frozenset[str]:
        entry = self._origins.get(id(tensor))
        if entry is None or entry[0]() is not tensor:  # a freed tensor's id reused
            return frozenset()
        return entry[1]

    def _set(self, tensor: torch.Tensor, origins: frozenset[str]) -> None:
        try:
            self._origins[id(tensor)] = (weakref.ref(tensor), origins)
        except TypeError:  # not weak-referenceable (a tensor subclass): not followed
            pass


def _tensors(value: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """The tensors in args, kwargs, tuples and lists (two levels: cat's list inside args)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif depth < 3 and isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, depth + 1)
