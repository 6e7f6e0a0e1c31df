"""Function-level patches of a model COPY (verify/): calls inside its forward, rewritten.

Some fixes live in the body of a forward: `torch.sigmoid(h)` to swap for `torch.relu(h)`, a
`torch.log(x)` to guard with a clamp. A module's forward is wrapped (an instance attribute, on the
copy only) so that each call runs inside a TorchFunctionMode that offers every torch function call
to a `rewrite` callback; the callback returns a replacement result, or NOT_HANDLED to let the call
run as written. The wrapper is entered inside the module's call, after the measurement session's
own pre-hooks, so the session's function watch sees the rewritten calls (the fixed model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

NOT_HANDLED = object()
"""What a rewrite returns to leave a call as it is."""

Rewrite = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
"""rewrite(func, args, kwargs) -> the result to use instead, or NOT_HANDLED."""


class FunctionPatch(TorchFunctionMode):
    """Offers every torch function call made inside it to `rewrite`."""

    def __init__(self, rewrite: Rewrite) -> None:
        super().__init__()
        self.rewrite = rewrite

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        # Inside this method the mode is off: calls the rewrite makes go to the modes outside it
        # (the session's watch) and to torch, not back here.
        result = self.rewrite(func, args, kwargs)
        return func(*args, **kwargs) if result is NOT_HANDLED else result


def patch_forward(module: nn.Module, rewrite: Rewrite) -> None:
    """Run every later call of `module.forward` inside FunctionPatch(rewrite). For a copy only:
    the forward becomes an instance attribute (nn.Module.__call__ calls self.forward)."""
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        with FunctionPatch(rewrite):
            return original(*args, **kwargs)
    module.forward = forward  # type: ignore[method-assign]


def patch_own_forward(module: nn.Module, rewrite: Rewrite) -> None:
    """patch_forward, but `rewrite` sees only the calls that `module`'s own forward makes: while
    one of its submodules runs, every call goes through as written (a guard on the `log` a module
    calls itself leaves the `log` inside a layer it calls alone). Wraps the submodules' forwards
    too, to count their calls (a copy only)."""
    running = [0]

    def own(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return NOT_HANDLED if running[0] else rewrite(func, args, kwargs)
    for sub in module.modules():
        if sub is not module:
            _count_calls(sub, running)
    patch_forward(module, own)


def _count_calls(module: nn.Module, running: list[int]) -> None:
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        running[0] += 1
        try:
            return original(*args, **kwargs)
        finally:
            running[0] -= 1
    module.forward = forward  # type: ignore[method-assign]


class LayerTrace:
    """Where a forward of a model copy is, as the measurement session sees it: the module running
    innermost (`running`) and the layer that finished last (`last`, the producer of a functional
    activation: activation_watch.py), so that a rewrite can swap only the calls a given module
    makes itself on the output of given layers.

    Layers are the modules owning parameters directly (session.own_params). The hooks stay on the
    copy, like the patched forward; each forward of the root starts afresh.
    """

    def __init__(self, model: nn.Module) -> None:
        from gradcheck_cli.measure.session import own_params

        self.last: str | None = None
        self.stack: list[str] = []
        model.register_forward_pre_hook(self._start)
        layers = {id(module) for _, module, _ in own_params(model)[1]}
        for name, module in model.named_modules():
            module.register_forward_pre_hook(_Entered(self, name or "(root)"))
            # always_call: a forward that raised (a NaN replay, a failed batch) leaves no stale frame
            module.register_forward_hook(_Left(self, name or "(root)", id(module) in layers), always_call=True)

    @property
    def running(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def _start(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self.stack:  # the root's own call, not a recursive one
            self.last = None


class _Entered:
    """A module's pre-hook for LayerTrace (an object, not a closure, so that a deep copy of the
    model copies the trace with it)."""

    def __init__(self, trace: LayerTrace, name: str) -> None:
        self.trace = trace
        self.name = name

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.trace.stack.append(self.name)


class _Left:
    def __init__(self, trace: LayerTrace, name: str, layer: bool) -> None:
        self.trace = trace
        self.name = name
        self.layer = layer

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.trace.stack and self.trace.stack[-1] == self.name:
            self.trace.stack.pop()
        if self.layer and isinstance(output, torch.Tensor) and output.is_floating_point():
            self.trace.last = self.name
