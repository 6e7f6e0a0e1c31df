"""Applier for guard-nonfinite: guard the op that produced NaN/Inf, at its call, in a copy.

The scan's replay named the op as the user wrote it (`log`, `div`, `softmax`, ...) and the module
whose own forward called it ("(root)" for the model, "(loss)" for the loss computation). The guard
is a function-level rewrite (measure/function_patch.py) of exactly that op in exactly that module's
own forward body; every other call runs as written. What each guard does is the recommendation's
snippet (docs/fixes/guard-nonfinite.md):

* log / sqrt / div / pow: the unsafe input (the log's argument, the denominator, the base of a
  fractional or negative power) is clamped from below at the recommendation's bound; exp at most at
  its bound. A bound the tensor's dtype cannot hold is replaced by the nearest one it can.
* softmax / log_softmax of a row whose every entry is -inf: that row gets finfo(dtype).min instead,
  which gives it uniform weights instead of 0/0.
* scaled_dot_product_attention with a boolean attn_mask that leaves a query no key:
  mask | ~mask.any(-1) (such a query attends everywhere); an additive mask's all -inf rows become 0.
* multi_head_attention_forward with a key_padding_mask that masks every key of a sequence: its
  first key is unmasked.

No op named ("generic"), or an op outside these: not applicable, saying why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from gradcheck_cli.measure.function_patch import NOT_HANDLED, Rewrite, patch_own_forward
from gradcheck_cli.measure.nonfinite_origin import op_name
from gradcheck_cli.report.parameters import GUARD_BOUNDS, GuardParameters
from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.verify.applier import Applier, ApplyContext, Patch, not_applicable

Args = tuple[tuple[Any, ...], dict[str, Any]]
Guard = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], "Args | None"]
"""guard(func, args, kwargs) -> the guarded (args, kwargs) to call func with; None: leave the call."""

_CLAMPED = {
    "log": ("log", "log2", "log10"), "sqrt": ("sqrt", "rsqrt"), "exp": ("exp", "expm1", "exp2"),
    "pow": ("pow", "float_power"),
    "div": ("div", "true_divide", "floor_divide", "remainder", "fmod", "reciprocal"),
}
"""Per clamp guard, the ops it knows where the unsafe input is (and their in-place forms)."""
_REVERSED = ("__rtruediv__", "__rfloordiv__", "__rpow__")
"""Python operators with the tensor on the right: for a / t and x ** t, `self` is t."""


def guard_nonfinite(context: ApplyContext) -> Patch:
    params = context.recommendation.parameters
    if not isinstance(params, GuardParameters):
        return not_applicable("the recommendation carries no op to guard")
    if params.guard == "generic" or params.op is None or params.module is None:
        return not_applicable("the op that produced the NaN/Inf could not be named, so there is no call "
                              "to guard; apply the generic guards by hand")
    guard = _guard_for(params)
    if guard is None:
        return not_applicable(f"no guard for `{params.op}` here: the {params.guard} guard knows "
                              f"{', '.join(_CLAMPED.get(params.guard, (params.guard,)))}")
    rewrite = _rewrite(params.op, guard)
    what = f"`{params.op}` {_describe(params)}"
    if params.module == "(loss)":
        return Patch(applied=True, reason=f"guarded {what} in the loss", loss_rewrite=rewrite)
    if params.module == "(root)":
        module = context.model
    else:
        found = dict(context.model.named_modules()).get(params.module)
        if found is None:
            return not_applicable(f"'{params.module}', where `{params.op}` ran, is no module of the model")
        module = found
    patch_own_forward(module, rewrite)
    return Patch(applied=True, reason=f"guarded {what} in the forward of '{params.module}'")


def _describe(params: GuardParameters) -> str:
    bound = _bound(params)
    return {
        "exp": f"(input clamped at max {bound:g})", "div": f"(divisor clamped at min {bound:g})",
        "pow": f"(base of a fractional or negative power clamped at min {bound:g})",
        "softmax": "(rows all -inf get finfo.min)",
        "scaled_dot_product_attention": "(queries left no key by attn_mask attend to every key)",
        "multi_head_attention_forward": "(sequences all padding get their first key unmasked)",
    }.get(params.guard, f"(input clamped at min {bound:g})")


def _bound(params: GuardParameters) -> float:
    return params.bound if params.bound is not None else GUARD_BOUNDS.get(params.guard, math.nan)


def _guard_for(params: GuardParameters) -> Guard | None:
    """The guard for the named op, or None when this guard family does not know it."""
    op, bound = (params.op or "").rstrip("_"), _bound(params)
    if params.guard in _CLAMPED:
        if op not in _CLAMPED[params.guard]:
            return None
        return _clamp_max(bound) if params.guard == "exp" else _clamp_min(params.guard, op, bound)
    masked: dict[str, Guard] = {"softmax": _softmax_rows, "scaled_dot_product_attention": _sdpa_rows,
                                "multi_head_attention_forward": _padding_rows}
    return masked.get(params.guard)


def _rewrite(op: str, guard: Guard) -> Rewrite:
    """Calls of `op` (named as the replay named it: measure/nonfinite_origin.op_name) run guarded."""
    def rewrite(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if op_name(func) != op:
            return NOT_HANDLED
        guarded = guard(func, args, kwargs)
        if guarded is None:
            return NOT_HANDLED
        return func(*guarded[0], **guarded[1])
    return rewrite


# --- clamps --------------------------------------------------------------------------------------

def _clamp_min(family: str, op: str, bound: float) -> Guard:
    def guard(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args | None:
        name = getattr(func, "__name__", "")
        if family == "div" and op != "reciprocal" and name not in _REVERSED:
            return _replace(args, kwargs, 1, "other", _floor_at(bound, in_place=False))
        if family == "pow" and (name in _REVERSED or not _unsafe_exponent(_get(args, kwargs, 1, "exponent"))):
            return None  # a scalar base, or a power that is safe at 0 (x ** 2)
        return _replace(args, kwargs, 0, "input", _floor_at(bound, in_place=name.endswith("_")
                                                            and not name.startswith("__")))
    return guard


def _unsafe_exponent(exponent: Any) -> bool:
    """A fractional or negative power is NaN for x < 0 or Inf at 0; a tensor exponent may be either."""
    if isinstance(exponent, torch.Tensor):
        return True
    return isinstance(exponent, (int, float)) and (exponent < 0 or not float(exponent).is_integer())


def _floor_at(bound: float, in_place: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def clamp(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            low = max(bound, float(torch.finfo(t.dtype).tiny))  # 1e-12 is 0 in float16
        elif t.dtype in (torch.bool, torch.complex64, torch.complex128):
            return t
        else:
            low = 1  # integer counts: the snippet's b.clamp(min=1)
        return t.clamp_min_(low) if in_place else t.clamp_min(low)
    return clamp


def _clamp_max(bound: float) -> Guard:
    def guard(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args | None:
        name = getattr(func, "__name__", "")

        def clamp(t: torch.Tensor) -> torch.Tensor:
            if not t.is_floating_point():
                return t
            # float32's exp is finite up to ~88.7; a narrower dtype (float16: ~11.1) overflows sooner
            high = min(bound, math.floor(math.log(float(torch.finfo(t.dtype).max))))
            return t.clamp_max_(high) if name.endswith("_") else t.clamp_max(high)
        return _replace(args, kwargs, 0, "input", clamp)
    return guard


# --- masked rows ---------------------------------------------------------------------------------

def _softmax_rows(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args | None:
    scores = _get(args, kwargs, 0, "input")
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        return None
    dim = _get(args, kwargs, 1, "dim")
    if dim is None:  # F.softmax's implicit dim (its legacy rule)
        dim = 0 if scores.dim() in (0, 1, 3) else 1

    def finite_rows(t: torch.Tensor) -> torch.Tensor:
        empty = torch.isneginf(t).all(dim=dim, keepdim=True)
        return t.masked_fill(empty, torch.finfo(t.dtype).min)
    return _replace(args, kwargs, 0, "input", finite_rows)


def _sdpa_rows(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args | None:
    """attn_mask: True = may attend (boolean), or added to the scores (float, -inf = masked)."""
    def guard_rows(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return mask | ~mask.any(dim=-1, keepdim=True)
        return mask.masked_fill(torch.isneginf(mask).all(dim=-1, keepdim=True), 0.0)
    return _replace(args, kwargs, 3, "attn_mask", guard_rows)


_KEY_PADDING_MASK = 14
"""The position of key_padding_mask in F.multi_head_attention_forward's signature."""


def _padding_rows(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args | None:
    """key_padding_mask (batch, keys): True = padding (boolean), or -inf = padding (float; what
    nn.MultiheadAttention hands on)."""
    def unmask_first(mask: torch.Tensor) -> torch.Tensor:
        first = torch.zeros_like(mask, dtype=torch.bool)
        first[..., 0] = True
        if mask.dtype == torch.bool:
            return mask & ~(first & mask.all(dim=-1, keepdim=True))
        return mask.masked_fill(first & torch.isneginf(mask).all(dim=-1, keepdim=True), 0.0)
    return _replace(args, kwargs, _KEY_PADDING_MASK, "key_padding_mask", unmask_first)


# --- arguments -----------------------------------------------------------------------------------

def _get(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _replace(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str,
             change: Callable[[torch.Tensor], torch.Tensor]) -> Args | None:
    """(args, kwargs) with the argument at `index` (or keyword `name`) changed; None when it is
    no tensor (a Python number: nothing to guard)."""
    value = _get(args, kwargs, index, name)
    if not isinstance(value, torch.Tensor):
        return None
    if len(args) > index:
        return (*args[:index], change(value), *args[index + 1:]), kwargs
    return args, {**kwargs, name: change(value)}


APPLIERS: dict[RecommendationId, Applier] = {RecommendationId.GUARD_NONFINITE: guard_nonfinite}
