"""Where a NaN/Inf is born: the op watch used by the diagnostic replay of one failing batch.

When a probe batch produced a non-finite module output, loss or gradient, probe.py runs that batch
once more (same weights, same RNG state) under `OriginWatch`, a TorchFunctionMode that sees every
torch function the user's forward and loss call:

* forward: the first op whose output holds NaN/Inf while all its floating inputs were finite
  (docs/findings/nonfinite.md, unsafe ops: the first place a non-finite value appears). Ops whose
  inputs are already non-finite only propagate it. The op is named as the user wrote it (`log`,
  `div`, `exp`, `linear`), with the innermost module running at that moment and the module that
  finished just before it (usually the producer of the op's input).
* masks: an op handed an explicit -inf (`masked_fill(mask, float("-inf"))`, `torch.full(...,
  -inf)`, nn.MultiheadAttention turning a boolean mask into an additive one) whose output is
  finite or -inf writes an attention mask on purpose: it is no origin. The softmax that reads the
  mask is: softmax / log_softmax of a row whose every entry is -inf, or an attention op
  (F.multi_head_attention_forward, F.scaled_dot_product_attention) whose masks leave a query row
  no key, returns NaN from inputs that were finite or masked (`masked_rows` counts those rows).
* raises: when an op (or the user's Python code, e.g. loss_fn) raises during the replay, the watch
  records which op raised and whether its inputs held NaN/Inf, so that probe.py can tell a NaN
  that made `binary_cross_entropy` refuse its input from an ordinary user error.
* backward (only when the forward was clean): `backward_hook` builds, for every op output that has
  a grad_fn, a hook that probe.py registers on the autograd node; the first node, in backward
  order, that returns a NaN/Inf gradient while the gradient it received was finite is the origin
  (sqrt at 0, a custom backward). Nodes no torch function made (a custom autograd.Function) are
  hooked too: through the module whose output they produced, else by walking the graph.

The replay never runs on a healthy model, so it costs nothing there. Only probe.py registers hooks:
this module builds the hook functions and records what they see. No tensor leaves the replay: the
result is a measurements.NonfiniteOrigin of plain numbers and strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from gradcheck_cli.measure.records import NonfiniteOrigin
from gradcheck_cli.text import exception_text

Location = tuple[str, str, "str | None"]
"""(innermost module running, its type, the module that finished just before)."""

# Python operator names -> the op a user recognises.
_OPERATORS = {"truediv": "div", "rtruediv": "div", "itruediv": "div_", "floordiv": "floor_divide",
              "rfloordiv": "floor_divide", "pow": "pow", "rpow": "pow", "ipow": "pow_",
              "mul": "mul", "rmul": "mul", "imul": "mul_", "add": "add", "radd": "add",
              "iadd": "add_", "sub": "sub", "rsub": "sub", "isub": "sub_", "matmul": "matmul",
              "rmatmul": "matmul", "neg": "neg", "setitem": "setitem"}


def op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or str(func)
    if name.startswith("__") and name.endswith("__"):
        return _OPERATORS.get(name.strip("_"), name.strip("_"))
    return name


class OriginWatch(TorchFunctionMode):
    """Records the first op that turns finite inputs into a NaN/Inf output (forward origin).

    `where()` tells the current location; `on_node(node, op, location)`, when given, is called
    once per autograd node created by an op of the forward, so that probe.py can register
    `backward_hook(op, location)` on it.
    """

    def __init__(self, where: Callable[[], Location],
                 on_node: Callable[[Any, str, Location], None] | None = None) -> None:
        super().__init__()
        self.where = where
        self.on_node = on_node
        self.forward_origin: NonfiniteOrigin | None = None
        self.backward_origin: NonfiniteOrigin | None = None
        self.raised_by: tuple[str, Location, bool, BaseException] | None = None
        """The last op that raised: (op, location, whether its inputs were all finite, the error)."""
        self._seen_nodes: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.forward_origin is not None and self.on_node is None:
            return self._call(func, args, kwargs)
        name = op_name(func)
        inputs = _float_tensors((args, kwargs))
        in_place = name.endswith("_") or name == "setitem"
        # In-place ops overwrite their input: look at it before the call.
        inputs_finite_before = _all_finite(inputs) if in_place and self.forward_origin is None else None
        out = self._call(func, args, kwargs, inputs_finite_before)
        outputs = _float_tensors(out) or (inputs[:1] if in_place else [])
        if self.forward_origin is None and outputs and not _all_finite(outputs):
            finite_in = inputs_finite_before if in_place else _all_finite(inputs)
            if finite_in and not _writes_mask(args, kwargs, outputs):
                self.forward_origin = _origin("forward", name, self.where(), inputs, outputs)
            elif not finite_in and name in MASKING_OPS:
                self.forward_origin = _masked_origin(name, self.where(), args, kwargs, inputs, outputs)
        if self.on_node is not None:
            location = self.where()
            for tensor in outputs:
                self.watch_node(tensor.grad_fn, name, location)
        return out

    def _call(self, func: Any, args: Sequence[Any], kwargs: dict[str, Any],
              finite_before: bool | None = None) -> Any:
        """func(*args, **kwargs), recording the first op that raises (and whether its inputs,
        before an in-place op touched them, were all finite)."""
        try:
            return func(*args, **kwargs)
        except Exception as error:
            finite = finite_before if finite_before is not None else _all_finite(_float_tensors((args, kwargs)))
            self.raised_by = (op_name(func), self.where(), finite, error)
            raise

    def _raising_op(self, error: BaseException) -> tuple[str, Location, bool] | None:
        """The op that raised `error` (None: Python code raised it, e.g. a loss_fn's own check;
        an op error the user's code caught earlier is not it)."""
        if self.raised_by is None or self.raised_by[3] is not error:
            return None
        return self.raised_by[:3]

    def raised_on_nonfinite(self, error: BaseException, output_nonfinite: bool) -> bool:
        """Whether a NaN/Inf born in this forward is what made it raise `error`: an origin was
        seen, and the error came from an op whose inputs held NaN/Inf, or from Python code (a
        loss_fn's own check) after the NaN/Inf reached a module's output (`output_nonfinite`);
        not from an op whose inputs were all finite (a shape mistake), nor from Python code while
        every output was finite: an Inf that the model masks on purpose (T5's log of a zero
        relative position, replaced by torch.where) does not explain an AttributeError."""
        op = self._raising_op(error)
        if self.forward_origin is None:
            return False
        return output_nonfinite if op is None else not op[2]

    def describe_raise(self, error: BaseException) -> str:
        """"`binary_cross_entropy` in the loss raised RuntimeError: ..." for the report."""
        text = exception_text(error)
        op = self._raising_op(error)
        if op is None:
            return f"the model or loss_fn raised {text}"
        name, (module, _, _), _ = op
        where = "the loss" if module == "(loss)" else f"'{module}'"
        return f"`{name}` in {where} raised {text}"

    def watch_node(self, node: Any, op: str, location: Location) -> None:
        """Have `on_node` hook `node` once (also nodes no torch function made: custom Functions)."""
        if self.on_node is not None and node is not None and id(node) not in self._seen_nodes:
            self._seen_nodes.add(id(node))
            self.on_node(node, op, location)

    def watch_graph(self, root: Any) -> None:
        """Hook every node of the graph behind `root` not seen yet. A custom autograd.Function's
        apply is not a torch function, so the mode never sees it: its node is named after its class
        (e.g. "ClampGradBackward") and its module is unknown unless it produced a module's output."""
        stack, seen = [root], set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if type(node).__name__ != "AccumulateGrad":
                self.watch_node(node, type(node).__name__, ("(unknown)", "", None))
            stack.extend(next_node for next_node, _ in getattr(node, "next_functions", ()))

    def backward_hook(self, op: str, location: Location) -> Callable[..., None]:
        """A hook for autograd's Node.register_hook: (grad_inputs, grad_outputs) -> None."""
        def hook(grad_inputs: Sequence[torch.Tensor | None],
                 grad_outputs: Sequence[torch.Tensor | None]) -> None:
            if self.backward_origin is not None:
                return
            produced = [g for g in grad_inputs if isinstance(g, torch.Tensor) and g.is_floating_point()]
            received = [g for g in grad_outputs if isinstance(g, torch.Tensor) and g.is_floating_point()]
            if produced and not _all_finite(produced) and _all_finite(received):
                self.backward_origin = _origin("backward", op, location, received, produced)
        return hook


def _origin(direction: str, op: str, location: Location, inputs: list[torch.Tensor],
            outputs: list[torch.Tensor]) -> NonfiniteOrigin:
    module, module_type, after = location
    with torch.no_grad():
        magnitude = max((float(t.detach().abs().max()) for t in inputs if t.numel()), default=0.0)
        nan = any(bool(torch.isnan(t).any()) for t in outputs)
        inf = any(bool(torch.isinf(t).any()) for t in outputs)
    dtype = inputs[0].dtype if inputs else outputs[0].dtype
    return NonfiniteOrigin(
        direction=direction, module=module, module_type=module_type, op=op, after=after,
        input_max_abs=magnitude, dtype=str(dtype).replace("torch.", ""),
        dtype_max=float(torch.finfo(dtype).max),
        produced="nan+inf" if nan and inf else ("nan" if nan else "inf"))


MASKING_OPS = frozenset({"softmax", "log_softmax", "multi_head_attention_forward",
                         "scaled_dot_product_attention"})
"""Ops that read -inf as "masked out": a row with no position left has no softmax (0/0 = NaN)."""


def _writes_mask(args: Any, kwargs: Any, outputs: list[torch.Tensor]) -> bool:
    """An op handed an explicit -inf whose output holds no NaN and no +inf: a mask written on
    purpose (masked_fill(mask, float("-inf")), torch.full(..., -inf)), not an origin."""
    leaves, _ = tree_flatten((args, kwargs))
    if not any(isinstance(x, float) and x == -math.inf for x in leaves):
        return False
    with torch.no_grad():
        return not any(bool((torch.isnan(t) | (t == math.inf)).any()) for t in outputs)


def _masked_origin(op: str, location: Location, args: Any, kwargs: Any, inputs: list[torch.Tensor],
                   outputs: list[torch.Tensor]) -> NonfiniteOrigin | None:
    """The origin at a softmax/attention op whose NaN output comes from rows with every position
    masked; None when no row is fully masked or the inputs already held NaN/+inf (spread)."""
    with torch.no_grad():
        if any(bool((torch.isnan(t) | (t == math.inf)).any()) for t in inputs):
            return None
        masked, rows = fully_masked_rows(op, args, kwargs)
        if not masked:
            return None
        finite = [t[torch.isfinite(t)] for t in inputs]
        magnitude = max((float(t.abs().max()) for t in finite if t.numel()), default=0.0)
    # The magnitude of the finite scores: the -inf entries are the mask, not a growth.
    return replace(_origin("forward", op, location, inputs, outputs), input_max_abs=magnitude,
                   masked_rows=masked, rows=rows)


def fully_masked_rows(op: str, args: Any, kwargs: Any) -> tuple[int, int]:
    """(rows with no position left to attend to, all rows) at a MASKING_OPS call; (0, 0) when
    the call's form is not one understood here."""
    allowed, rows_shape = _allowed_positions(op, list(args), dict(kwargs))
    if allowed is None or allowed.dim() == 0:
        return 0, 0
    empty = ~allowed.any(dim=-1)
    try:
        shape = torch.broadcast_shapes(empty.shape, rows_shape)
    except RuntimeError:
        shape = empty.shape
    return int(empty.expand(shape).sum()), math.prod(shape)


def _allowed_positions(op: str, args: list[Any], kwargs: dict[str, Any]
                       ) -> tuple[torch.Tensor | None, tuple[int, ...]]:
    """A boolean tensor, True where a position may be attended to (last dim: the positions), and
    the shape of the query rows it applies to."""
    def arg(index: int, name: str) -> Any:
        return args[index] if len(args) > index else kwargs.get(name)

    if op in ("softmax", "log_softmax"):
        x, dim = arg(0, "input"), arg(1, "dim")
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return None, ()
        if dim is None:  # F.softmax's deprecated implicit dim (torch.nn.functional._get_softmax_dim)
            dim = 0 if x.dim() in (0, 1, 3) else 1
        allowed = (x != -math.inf).movedim(dim, -1)
        return allowed, tuple(allowed.shape[:-1])
    if op == "scaled_dot_product_attention":
        query, mask = arg(0, "query"), arg(3, "attn_mask")
        if not isinstance(query, torch.Tensor) or not isinstance(mask, torch.Tensor):
            return None, ()
        return (mask if mask.dtype == torch.bool else mask != -math.inf), tuple(query.shape[:-1])
    if op == "multi_head_attention_forward":
        return _mha_allowed(args, kwargs)
    return None, ()


def _mha_allowed(args: list[Any], kwargs: dict[str, Any]) -> tuple[torch.Tensor | None, tuple[int, ...]]:
    """nn.MultiheadAttention's key_padding_mask (B, S) and attn_mask (L, S) or (B * heads, L, S),
    True or -inf where masked, combined as (B, heads or 1, L, S)."""
    query, heads = args[0], args[4] if len(args) > 4 else kwargs.get("num_heads")
    if not isinstance(query, torch.Tensor) or not isinstance(heads, int):
        return None, ()
    if (len(args) > 7 and args[7] is not None) or (len(args) > 9 and args[9]):
        return None, ()  # bias_k / add_zero_attn add a key that every query may attend to
    length, batch = query.shape[0], query.shape[1] if query.dim() == 3 else 1
    allowed = torch.ones(batch, 1, length, 1, dtype=torch.bool, device=query.device)
    padding, mask = kwargs.get("key_padding_mask"), kwargs.get("attn_mask")
    if not isinstance(padding, torch.Tensor) and not isinstance(mask, torch.Tensor):
        return None, ()
    try:
        if isinstance(padding, torch.Tensor):
            keep = ~padding if padding.dtype == torch.bool else padding != -math.inf
            allowed = allowed & keep.reshape(batch, 1, 1, -1)
        if isinstance(mask, torch.Tensor):
            keep = ~mask if mask.dtype == torch.bool else mask != -math.inf
            if keep.dim() == 3 and keep.shape[0] == batch * heads:
                keep = keep.reshape(batch, heads, *keep.shape[1:])
            allowed = allowed & keep
    except RuntimeError:  # a mask layout not understood here: no claim about masked rows
        return None, ()
    return allowed, (batch, 1, length)


def _float_tensors(tree: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return [x for x in leaves if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel()]


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    with torch.no_grad():
        return all(bool(torch.isfinite(t).all()) for t in tensors)
