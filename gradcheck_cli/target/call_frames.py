"""Which of a model's modules are running, read from the Python call stack instead of from hooks.

Every module call goes through `nn.Module._call_impl` (the function that runs a module's forward
hooks around its forward), so the modules running at some point of a forward are exactly the
`_call_impl` frames on the Python stack whose `self` is one of the model's modules: the same set,
in the same order, that a pre-hook pushing and a post-hook popping on every module would keep. A
forward called directly (`block.forward(x)`) or a module whose `__call__` bypasses `_call_impl`
runs no hooks and has no such frame: the two agree there too. A module reused in two places has
the name `named_modules` gives it first (its hooks would have that name too).

Reading frames costs nothing until it is asked for, where a hook on every module costs ~75-120 us
per module per batch (bench/README.md): the measurement asks only on its rare paths (a functional
activation or an add seen by the function mode, activation_watch.py; a forward that raised,
forward_error.py).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any

from torch import nn

_CALL_IMPL = nn.Module._call_impl.__code__


class ModuleFrames:
    """The model's modules by identity, and the calls of them running now (innermost first)."""

    def __init__(self, modules: Iterable[tuple[str, nn.Module]]) -> None:
        """`modules`: the model's named_modules() (a module reused in two places is named once)."""
        self._names: dict[int, tuple[nn.Module, str]] = {}
        for name, module in modules:
            self._names.setdefault(id(module), (module, name or "(root)"))
        self.outer: FrameType | None = None
        """The root's outermost running call: a walk stops there (set by the caller, cleared after)."""

    def name_of(self, frame: FrameType) -> str | None:
        """The module name when `frame` is a call of one of the model's modules, else None."""
        if frame.f_code is not _CALL_IMPL:
            return None
        module = frame.f_locals.get("self")
        entry = self._names.get(id(module))
        return entry[1] if entry is not None and entry[0] is module else None

    def calls(self, start: FrameType | None = None) -> Iterator[tuple[str, FrameType]]:
        """(module name, its `_call_impl` frame) of each running module call, innermost first,
        from `start` (default: the caller's frame) out to `outer` (or the bottom of the stack)."""
        frame: FrameType | None = sys._getframe(1) if start is None else start
        while frame is not None:
            name = self.name_of(frame)
            if name is not None:
                yield name, frame
            if frame is self.outer:
                return
            frame = frame.f_back

    def innermost(self) -> str | None:
        """The innermost module running now, or None outside the model."""
        return next((name for name, _ in self.calls(sys._getframe(1))), None)

    def inputs(self) -> Iterator[tuple[str, Any]]:
        """(module, its first positional input) for each module running now, innermost first: the
        input after the module's forward pre-hooks, which is what its forward receives."""
        for name, frame in self.calls(sys._getframe(1)):
            args = frame.f_locals.get("args")
            yield name, args[0] if isinstance(args, tuple) and args else None

    def enter_root(self, start: FrameType) -> None:
        """Remember the root call around `start` (a root pre-hook's frame) as where walks stop."""
        self.outer = next((frame for _, frame in self.calls(start)), None)


def failed_calls(model: nn.Module, exc: BaseException) -> list[str]:
    """The module calls that `exc` left unfinished, outermost first, from its traceback: where a
    forward raised ('(root)' for the model itself)."""
    frames = ModuleFrames(model.named_modules())
    names = (frames.name_of(frame) for frame, _ in traceback.walk_tb(exc.__traceback__))
    return [name for name in names if name is not None]
