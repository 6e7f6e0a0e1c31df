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
