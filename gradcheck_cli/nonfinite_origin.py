"""Where a NaN/Inf is born: the op watch used by the diagnostic replay of one failing batch.

When a probe batch produced a non-finite module output, loss or gradient, probe.py runs that batch
once more (same weights, same RNG state) under `OriginWatch`, a TorchFunctionMode that sees every
torch function the user's forward and loss call:

* forward: the first op whose output holds NaN/Inf while all its floating inputs were finite
  (DOMAIN.md, "numerically unsafe ops": the first place a non-finite value appears). Ops whose
  inputs are already non-finite only propagate it. The op is named as the user wrote it (`log`,
  `div`, `exp`, `linear`), with the innermost module running at that moment and the module that
  finished just before it (usually the producer of the op's input).
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

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .measurements import NonfiniteOrigin

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
        self._seen_nodes: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if self.forward_origin is not None and self.on_node is None:
            return func(*args, **kwargs)
        name = op_name(func)
        inputs = _float_tensors((args, kwargs))
        in_place = name.endswith("_") or name == "setitem"
        # In-place ops overwrite their input: look at it before the call.
        inputs_finite_before = _all_finite(inputs) if in_place and self.forward_origin is None else None
        out = func(*args, **kwargs)
        outputs = _float_tensors(out) or (inputs[:1] if in_place else [])
        if self.forward_origin is None and outputs and not _all_finite(outputs):
            finite_in = inputs_finite_before if in_place else _all_finite(inputs)
            if finite_in:
                self.forward_origin = _origin("forward", name, self.where(), inputs, outputs)
        if self.on_node is not None:
            location = self.where()
            for tensor in outputs:
                self.watch_node(tensor.grad_fn, name, location)
        return out

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


def _float_tensors(tree: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return [x for x in leaves if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel()]


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    with torch.no_grad():
        return all(bool(torch.isfinite(t).all()) for t in tensors)


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The RNG state before a batch's forward, so that a replay sees the same dropout masks."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
