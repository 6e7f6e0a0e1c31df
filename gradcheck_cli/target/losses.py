"""A model output (and the batch's target) -> the scalar loss the probe differentiates.

Rules (DESIGN.md, "The model file contract"): the user's loss_fn(output, target) if given; else an
output's own scalar `.loss` (Hugging Face style); else cross-entropy for integer targets, MSE for
float targets of the output's shape, and the mean of squared outputs without a target.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from gradcheck_cli.errors import UserError
from gradcheck_cli.text import exception_text as _exc_text
from gradcheck_cli.text import with_article as _a

_IGNORE_INDEX = -100
"""F.cross_entropy's default ignore_index: targets equal to it are skipped, not out of range."""


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))


def _found_tensor(value: Any) -> torch.Tensor | None:
    return value if isinstance(value, torch.Tensor) else None


def _first_tensor(values: list[Any]) -> torch.Tensor | None:
    for value in values:
        found = _search(value)
        if found is not None:
            return found
    return None


def _search(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        logits = _found_tensor(output.get("logits"))
        if logits is not None:
            return logits
        return _prediction_first(list(output.items()))
    if isinstance(output, (tuple, list)):
        return _first_tensor(list(output))
    logits = _found_tensor(getattr(output, "logits", None))
    if logits is not None:
        return logits
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return _prediction_first([(f.name, getattr(output, f.name, None))
                                  for f in dataclasses.fields(output)])
    return None


def _prediction_first(items: list[tuple[Any, Any]]) -> torch.Tensor | None:
    """First tensor among named entries; a `loss` entry is not the prediction, so it comes last."""
    found = _first_tensor([value for key, value in items if key != "loss"])
    if found is None:
        found = _first_tensor([value for key, value in items if key == "loss"])
    return found


def _describe(obj: Any) -> str:
    if obj is None:
        return "None"
    if isinstance(obj, (tuple, list)):
        return f"{_a(type(obj).__name__)} of {len(obj)} items without a tensor"
    if isinstance(obj, Mapping):
        keys = ", ".join(map(str, list(obj)[:5]))
        return f"{_a(type(obj).__name__)} without a tensor (keys: {keys})"
    return _a(type(obj).__name__)


def primary_tensor(output: Any) -> torch.Tensor:
    """The tensor taken as the model's prediction.

    A tensor is itself; a dict or object with `logits` gives the logits; a tuple/list gives its
    first tensor (searched recursively); a dict its first tensor value; a dataclass (e.g. a
    Hugging Face ModelOutput) its first tensor field. A `loss` entry is used only when nothing
    else is there.
    """
    found = _search(output)
    if found is None:
        raise UserError(f"the model returned {_describe(output)}: no tensor to compute a loss on; "
                        "return a tensor (or a tuple/dict/object with one, e.g. .logits), "
                        "or define loss_fn(output, target) in the model file")
    return found


def _loss_fn_location(loss_fn: Any, exc: BaseException) -> str:
    """' (at file.py:LINE)' for the deepest traceback line in the file defining loss_fn."""
    code = getattr(getattr(loss_fn, "__wrapped__", loss_fn), "__code__", None)
    if code is None:
        return ""
    where = ""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == code.co_filename:
            where = f" (at {os.path.basename(code.co_filename)}:{lineno})"
    return where


def _integer_output_error(tensor: torch.Tensor) -> UserError:
    return UserError(f"the model's output is an integer tensor ({tensor.dtype}, shape "
                     f"{_shape(tensor)}), so no gradient can flow through it (is the output an "
                     "argmax?); return the logits / scores, or define loss_fn(output, target)")


def _model_loss(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return None
    if isinstance(output, Mapping):
        loss = output.get("loss")
    else:
        loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss
    return None


def _cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    b = pred.shape[0] if pred.dim() else None
    if pred.dim() == 2 and target.dim() == 1 and target.shape[0] == b:
        logits, labels = pred, target  # (B, C) with (B,)
    elif (pred.dim() >= 3 and target.dim() == pred.dim() - 1
          and tuple(target.shape) == (pred.shape[0], *pred.shape[2:])):
        logits, labels = pred, target  # (B, C, d1, ...) with (B, d1, ...), as F.cross_entropy
    elif pred.dim() == 3 and target.dim() == 2 and tuple(target.shape) == tuple(pred.shape[:2]):
        logits, labels = pred.reshape(-1, pred.shape[-1]), target.reshape(-1)  # (B, T, C), (B, T)
    else:
        raise UserError(f"integer target of shape {_shape(target)} does not fit the output of "
                        f"shape {_shape(pred)} for cross-entropy: expected logits (B, C) with "
                        "target (B,), (B, C, d1, ...) with (B, d1, ...), or (B, T, C) with (B, T); "
                        "fix make_batch or define loss_fn(output, target)")
    classes = logits.shape[1]
    valid = labels[labels != _IGNORE_INDEX]
    if valid.numel():
        low, high = int(valid.min()), int(valid.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise UserError(f"integer target holds class {bad} but the output of shape "
                            f"{_shape(pred)} has {classes} classes (0..{classes - 1}); "
                            "fix make_batch or define loss_fn(output, target)")
    return F.cross_entropy(logits, labels.long())


def _default_loss(output: Any, target: Any) -> tuple[torch.Tensor, str]:
    own = _model_loss(output)
    if own is not None:
        return own, "model_loss"
    pred = primary_tensor(output)
    if pred.is_complex():
        raise UserError(f"the model's output is complex ({pred.dtype}, shape {_shape(pred)}); "
                        "define loss_fn(output, target) returning a real scalar")
    if not pred.is_floating_point():
        raise _integer_output_error(pred)
    if target is None:
        return pred.pow(2).mean(), "mean_square"
    if not isinstance(target, torch.Tensor):
        raise UserError(f"the batch's target is {_a(type(target).__name__)}, not a tensor; "
                        "return a tensor target from make_batch, or define loss_fn(output, target)")
    if target.dtype == torch.bool:
        raise UserError(f"the target of shape {_shape(target)} is boolean; return integer class "
                        "indices (cross-entropy) or float values (MSE), or define "
                        "loss_fn(output, target)")
    if not target.is_floating_point():
        return _cross_entropy(pred, target), "cross_entropy"
    if tuple(target.shape) != tuple(pred.shape):
        raise UserError(f"float target of shape {_shape(target)} does not match the output of "
                        f"shape {_shape(pred)} for MSE; return a target of the output's shape (or "
                        "integer class indices for cross-entropy), or define "
                        "loss_fn(output, target)")
    return F.mse_loss(pred, target.to(pred.dtype)), "mse"


def compute_loss(output: Any, target: Any, loss_fn: Any = None) -> tuple[torch.Tensor, str]:
    """(scalar loss tensor, kind); kind is one of loss_fn, model_loss,
    cross_entropy, mse, mean_square (the report's loss.kind). Every user mistake is a UserError."""
    if loss_fn is not None:
        try:
            loss = loss_fn(output, target)
        except UserError:
            raise
        except Exception as exc:
            where = _loss_fn_location(loss_fn, exc)
            raise UserError(f"loss_fn raised {_exc_text(exc)}{where}; fix loss_fn(output, target) "
                            "(--debug shows the traceback)") from exc
        kind, source = "loss_fn", "loss_fn"
    else:
        loss, kind = _default_loss(output, target)
        source = {"model_loss": "the model's .loss"}.get(kind, f"the {kind} loss")
    if not isinstance(loss, torch.Tensor):
        raise UserError(f"{source} returned {_a(type(loss).__name__)}, not a tensor; return a "
                        "scalar tensor computed from the output, e.g. "
                        "F.cross_entropy(output, target)")
    if loss.numel() != 1:
        raise UserError(f"{source} returned a tensor of shape {_shape(loss)}; return a scalar, "
                        "e.g. .mean()")
    if not (loss.is_floating_point() or loss.is_complex()):
        raise UserError(f"{source} returned an integer tensor ({loss.dtype}); the loss does not "
                        "depend on any trainable parameter (is the output an argmax or detached?); "
                        "return a float loss computed from the model's output")
    if not loss.requires_grad:
        raise UserError("the loss does not depend on any trainable parameter (is the output an "
                        "argmax or detached?); compute it from the model's output without "
                        ".detach()/.item()/argmax, and keep some parameters requires_grad=True")
    return loss.reshape(()), kind
