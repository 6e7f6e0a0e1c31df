"""Probe inputs: synthetic batches when the target has no make_batch, and what make_batch returns.

A batch is `inputs` or `(inputs, target)`; `inputs` is a tensor (model(x)), a tuple or list (passed
positionally, model(*inputs)) or a dict (passed as keyword arguments, model(**inputs)).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from gradcheck_cli.errors import UserError
from gradcheck_cli.text import with_article as _a

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_TOKENS_PER_SAMPLE = 16
"""Sequence length of the synthetic tokens inferred for a model that starts with an Embedding."""


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'3x32x32' (or '3,32,32', '128') -> (3, 32, 32): the per-sample shape, without the batch."""
    cleaned = text.strip().strip("()[]").strip()
    parts = [p.strip() for p in re.split(r"[xX,*]", cleaned)] if cleaned else []
    if parts and parts[-1] == "" and "," in cleaned:  # "128," as Python writes a 1-tuple
        parts = parts[:-1]
    if not parts or not all(p.isdigit() for p in parts):
        raise UserError(f"invalid --input-shape '{text}': expected sizes like 3x32x32")
    sizes = tuple(int(p) for p in parts)
    if any(size <= 0 for size in sizes):
        raise UserError(f"invalid --input-shape '{text}': sizes must be positive, like 3x32x32")
    return sizes


def _first_layer(model: nn.Module) -> nn.Module | None:
    """The first module (in model.modules() order) that owns parameters directly."""
    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            return module
    return None


def _shape_example(layer: nn.Module | None) -> str:
    """A plausible --input-shape for the error message, from the first layer."""
    if isinstance(layer, nn.Conv1d):
        return f"{layer.in_channels}x128"
    if isinstance(layer, nn.Conv2d):
        return f"{layer.in_channels}x32x32"
    if isinstance(layer, nn.Conv3d):
        return f"{layer.in_channels}x16x32x32"
    if isinstance(layer, nn.RNNBase):
        return f"20x{layer.input_size}"
    if isinstance(layer, nn.LayerNorm):
        return "x".join(["20", *map(str, layer.normalized_shape)])
    return "3x32x32"


def synthetic_batch_maker(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
                          source: str | None = None) -> Callable[[int], Any]:
    """A make_batch(batch_size) for a target without one: random inputs, no target.

    With `input_shape` (per sample): `torch.randn(batch, *input_shape)` in the dtype of the first
    layer's weights (float64, bfloat16, complex), or integer tokens in
    [0, num_embeddings) when the model's first layer is an Embedding/EmbeddingBag. Without it, the
    shape is inferred only where the first layer makes it obvious (Linear: (in_features,);
    Embedding: 16 tokens); otherwise a UserError says how to provide it. `source` (the model file)
    only improves that message. The tensors are made on the CPU with the global torch RNG (seed it
    for repeatable batches); move them with `move_to`.
    """
    layer = _first_layer(model)
    if input_shape is None:
        if isinstance(layer, nn.Linear):
            input_shape = (layer.in_features,)
        elif isinstance(layer, _EMBEDDINGS):
            input_shape = (_TOKENS_PER_SAMPLE,)
        else:
            first = f"first layer {type(layer).__name__}" if layer is not None else "no layers"
            where = source.rpartition(".py:")[0] + ".py" if source and ".py:" in source else source
            in_file = f"in {where}" if where and where.endswith(".py") else "in your model file"
            raise UserError(f"cannot infer the input shape of {type(model).__name__} ({first}); "
                            f"pass --input-shape, e.g. --input-shape {_shape_example(layer)}, "
                            f"or define make_batch(batch_size) {in_file}")
    shape = tuple(int(s) for s in input_shape)

    if isinstance(layer, _EMBEDDINGS):
        vocab = int(layer.num_embeddings)

        def make_tokens(batch_size: int) -> torch.Tensor:
            return torch.randint(0, vocab, (batch_size, *shape))

        return make_tokens

    dtype = torch.get_default_dtype()
    if layer is not None:  # match a float64 / bfloat16 / complex model
        floats = [p for p in layer.parameters(recurse=False) if p.is_floating_point() or p.is_complex()]
        if floats:
            dtype = floats[0].dtype

    def make_floats(batch_size: int) -> torch.Tensor:
        if dtype.is_complex:  # real and imaginary parts both drawn (a cast would leave 0j)
            return torch.randn(batch_size, *shape, dtype=dtype)
        return torch.randn(batch_size, *shape).to(dtype)

    return make_floats


def _describe(obj: Any) -> str:
    if obj is None:
        return "None"
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"{_a(type(obj).__name__)} of {len(obj)} items"
    return _a(type(obj).__name__)


_EXPECTED = ("expected inputs (a tensor, a tuple of tensors or a dict of keyword arguments) "
             "or (inputs, target)")


def _check_inputs(inputs: Any, raw: Any) -> Any:
    if isinstance(inputs, (torch.Tensor, tuple, list, Mapping)):
        return inputs
    raise UserError(f"make_batch returned {_describe(raw)} whose inputs are {_describe(inputs)}; "
                    f"{_EXPECTED}")


def split_batch(raw: Any) -> tuple[Any, Any]:
    """What make_batch returned -> (inputs, target or None).

    A tensor or a dict is the inputs alone; a tuple/list of two is (inputs, target); a 1-tuple is
    (inputs,). Several positional inputs with a target: ((x1, x2), target).
    """
    if isinstance(raw, (torch.Tensor, Mapping)):
        return raw, None
    if isinstance(raw, (tuple, list)):
        if len(raw) == 2:
            return _check_inputs(raw[0], raw), raw[1]
        if len(raw) == 1:
            return _check_inputs(raw[0], raw), None
        raise UserError(f"make_batch returned {_describe(raw)}; {_EXPECTED}: for several "
                        "model inputs return ((x1, x2, ...), target) or a dict")
    hint = " (is a `return` missing?)" if raw is None else ""
    raise UserError(f"make_batch returned {_describe(raw)}{hint}; {_EXPECTED}")


def call_model(model: nn.Module, inputs: Any) -> Any:
    """model(x) for a tensor, model(*inputs) for a tuple/list, model(**inputs) for a dict."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    raise UserError(f"cannot pass {_describe(inputs)} to the model; {_EXPECTED}")


def move_to(obj: Any, device: torch.device | str) -> Any:
    """`obj` with every tensor in it (nested tuples, lists, dicts) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        if obj.is_meta and torch.device(device).type != "meta":  # .to() would raise deep in torch
            raise UserError(f"the batch holds a tensor of shape {tuple(obj.shape)} on the meta "
                            "device, which has no data; return real tensors from make_batch "
                            "(e.g. torch.randn(batch_size, ...))")
        return obj.to(device)
    if isinstance(obj, tuple):
        items = [move_to(item, device) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)  # namedtuple
    if isinstance(obj, list):
        return [move_to(item, device) for item in obj]
    if isinstance(obj, Mapping):
        moved = {key: move_to(value, device) for key, value in obj.items()}
        kind: Any = type(obj)
        try:
            return kind(moved)  # keeps OrderedDict, HF BatchEncoding, ...
        except Exception:
            return moved
    return obj


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in `obj` (nested tuples, lists, dicts), depth first."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from tensors_in(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from tensors_in(item)


def batch_has_nonfinite(inputs: Any, target: Any) -> bool:
    """True when a floating (or complex) tensor anywhere in the batch holds NaN or Inf."""
    for tensor in tensors_in((inputs, target)):
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel():
            if not bool(torch.isfinite(_stored_values(tensor)).all()):
                return True
    return False


def _stored_values(tensor: torch.Tensor) -> torch.Tensor:
    """The values a tensor stores: a sparse tensor's specified elements (torch.isfinite has no
    sparse kernel; a GCN's sparse adjacency matrix is a common input), a dense tensor itself."""
    if tensor.layout == torch.sparse_coo:
        return tensor._values()
    if tensor.layout in (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc):
        return tensor.values()
    return tensor
