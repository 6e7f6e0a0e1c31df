"""The user's forward raised: one line saying in which module, at which line, with which inputs, and
the likely fix (a dtype or device mismatch, a batch that does not fit, or a bug in the forward).

The module that was running is read from the exception's traceback: the innermost call of one of
the model's modules that did not finish (call_frames.py; no hook has to keep a call stack for it).
This module turns that and the exception into the UserError.
"""

from __future__ import annotations

import linecache
import os
import sysconfig
import traceback
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gradcheck_cli.errors import UserError
from gradcheck_cli.target.batches import tensors_in
from gradcheck_cli.target.call_frames import failed_calls
from gradcheck_cli.text import exception_text

_LIBRARY_DIRS = tuple(os.path.realpath(p) + os.sep for p in {
    os.path.dirname(torch.__file__),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # gradcheck_cli/
    *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")),
})
"""Code that is not the user's: torch, gradcheck, the standard library and installed packages."""


_GRADCHECK_DIR = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep


class InternalError(RuntimeError):
    """gradcheck's own code (a hook or watch it runs inside the user's forward) raised: a bug in
    gradcheck, never reported as the user's mistake (not a UserError: no exit-2 blame line)."""


def forward_failure(model: nn.Module, inputs: Any, exc: BaseException,
                    stack: list[str] | None = None) -> UserError | InternalError:
    """The UserError for `exc` raised by model(inputs); `stack`: the module calls it left
    unfinished, outermost first (default: read from its traceback, call_frames.failed_calls).
    An InternalError instead when gradcheck's own hook code raised it (gradcheck_location)."""
    own = gradcheck_location(exc)
    if own is not None:
        return InternalError(f"gradcheck's own code failed at {own} while the model ran its forward: "
                             f"{exception_text(exc)}; this is a bug in gradcheck, not in the model "
                             "(please report it with the output of --debug)")
    if stack is None:
        stack = failed_calls(model, exc)
    name = stack[-1] if stack else "(root)"
    module = dict(model.named_modules()).get("" if name == "(root)" else name, model)
    line = _user_line(exc)
    at = f" at {line}" if line else ""
    return UserError(f"the model failed on the probe batch in module '{name}' "
                     f"({type(module).__name__}){at}: {exception_text(exc)} "
                     f"(inputs: {describe_inputs(inputs)}); {_fix(model, inputs, exc, line)}")


def describe_inputs(obj: Any) -> str:
    """'(16, 8) float32', '[(16, 8) float32, (16,) int64]', '{ids: (16, 12) int64}'."""
    if isinstance(obj, torch.Tensor):
        return "(" + ", ".join(str(s) for s in obj.shape) + ") " + str(obj.dtype).removeprefix("torch.")
    if isinstance(obj, (tuple, list)):
        return "[" + ", ".join(describe_inputs(o) for o in obj) + "]"
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{k}: {describe_inputs(v)}" for k, v in obj.items()) + "}"
    return type(obj).__name__


def gradcheck_location(exc: BaseException) -> str | None:
    """'gradcheck_cli/measure/probe.py:470' when gradcheck's own code raised `exc` during the forward.

    Walks the traceback from the outermost frame in: the deepest frame that is either the user's
    or gradcheck's decides (torch, the standard library and installed packages run on someone's
    behalf and are skipped). A gradcheck frame counts only once a frame outside gradcheck has
    run (it is then a callback: a module or tensor hook, a TorchFunctionMode), so the probe's own
    call into the model (batches.call_model) never takes the blame for a scripted model's error;
    nor does a mode's line that passes the user's torch function through (`func(*args, ...)`):
    there the user's op raised.
    """
    entered, culprit = False, None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        real = os.path.realpath(filename) if not filename.startswith("<") else filename
        if real.startswith(_GRADCHECK_DIR):
            if entered:
                passes_through = "func(" in linecache.getline(filename, lineno)
                package_root = os.path.dirname(_GRADCHECK_DIR[:-1])
                culprit = None if passes_through else f"{os.path.relpath(real, package_root)}:{lineno}"
            continue
        entered = True
        if not real.startswith(_LIBRARY_DIRS):
            culprit = None  # the user's code ran deeper: the error is theirs
    return culprit


def _user_line(exc: BaseException) -> str | None:
    """'model.py:11': the deepest traceback line outside torch, gradcheck and installed packages."""
    frame = user_frame(exc)
    return frame[0] if frame else None


def user_frame(exc: BaseException) -> tuple[str, str] | None:
    """('model.py:11', 'forward'): the deepest traceback frame outside torch, gradcheck and
    installed packages, and its function's name."""
    found = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if filename.startswith("<"):
            continue
        real = os.path.realpath(filename)
        if not real.startswith(_LIBRARY_DIRS):
            rel = os.path.relpath(real)
            found = (f"{real if rel.startswith('..') else rel}:{lineno}", frame.f_code.co_name)
    return found


def _fix(model: nn.Module, inputs: Any, exc: BaseException, line: str | None) -> str:
    message = str(exc).lower()
    weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    dtypes = {t.dtype for t in tensors_in(inputs)}
    short = {d: str(d).removeprefix("torch.") for d in (*dtypes, weights) if d is not None}
    if weights is not None and "type" in message:
        integers = sorted(short[d] for d in dtypes if not (d.is_floating_point or d.is_complex))
        if integers:
            return (f"the inputs are {', '.join(integers)} but the model computes in "
                    f"{short[weights]}: return float tensors from make_batch (x.float()), or start "
                    "the model with an nn.Embedding if they are token ids")
        floats = sorted(short[d] for d in dtypes if d.is_floating_point and d != weights)
        if floats:
            return (f"the inputs are {', '.join(floats)} but the model's weights are "
                    f"{short[weights]}: return {short[weights]} tensors from make_batch "
                    f"(x.to({weights})), or convert the model in build_model")
    if "cuda" in message or "device" in message:
        return ("the model puts a tensor on a fixed device: create tensors on the input's device "
                "(torch.zeros(..., device=x.device)), or pass --device to match")
    if line:
        return f"fix the forward at {line}, or the batch (make_batch / --input-shape) if it does not fit"
    return "check that the batch fits the model: --input-shape, or what make_batch returns"
