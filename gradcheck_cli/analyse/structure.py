"""Structural facts derived from what was measured: fans of a layer's weight, normalization present.

Pure functions of shapes and type names (the measurement records the raw weight shape and the
layer's input/output widths; the analysis decides what they mean).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def layer_role(type_name: str, param_dims: int) -> str:
    """Role from the module type (also third-party norms such as LlamaRMSNorm, T5LayerNorm)."""
    if "Norm" in type_name:
        return "normalization"
    if "Embedding" in type_name:
        return "embedding"
    return "dense" if param_dims >= 2 else "other"


def has_normalization(module_types: Iterable[str]) -> bool:
    """Whether any module below the root is a normalization layer (the root's class name is the
    user's: "ReluNormalInitMLP" is no norm layer, so the measurement leaves the root out)."""
    return any(layer_role(type_name, 1) == "normalization" for type_name in module_types)


def transposed(shape: tuple[int, ...], io_features: tuple[int, int] | None) -> bool:
    """Whether a 2-D weight is stored (in_features, out_features) and applied as x @ W (Hugging
    Face's Conv1D in GPT-2, hand-written `x @ self.W` layers), not as nn.Linear's (out, in): the
    layer's own input and output widths say so. A square weight has equal fans either way."""
    return len(shape) == 2 and io_features is not None and shape[0] != shape[1] and tuple(shape) == io_features


def fan_out(shape: tuple[int, ...] | None, io_features: tuple[int, int] | None = None) -> int | None:
    """As torch.nn.init computes it (dim 0 times the kernel size), for the weight's real layout."""
    if shape is None:
        return None
    if transposed(shape, io_features):
        return int(shape[1])
    return int(shape[0] * math.prod(shape[2:]))


def fan_in(shape: tuple[int, ...] | None, io_features: tuple[int, int] | None = None) -> int | None:
    """As torch.nn.init computes it (dim 1 times the kernel size), for the weight's real layout."""
    if shape is None:
        return None
    if transposed(shape, io_features):
        return int(shape[0])
    return int(shape[1] * math.prod(shape[2:]))
