"""swap-activation: replace the activation that follows each named layer (docs/fixes).

The activation is the one the scan measured after the layer (measure/activation_watch.py: the
layer that finished last before it): an activation module (its name, e.g. "net.1") is replaced
by the parameters' `use` under the same name in the same parent; a functional call ("block:
sigmoid", a `torch.sigmoid` in block's forward) is rewritten in that module's forward
(measure/function_patch.py), only where the module makes the call itself on the output of a
named layer. Sigmoid/Tanh swapped for a rectifier (ReLU, GELU) re-initialise the layer they
follow with He's std sqrt(2 / fan_in), the init a rectifier needs (docs/findings/init-scale.md);
a ReLU with dead units becomes a LeakyReLU(0.01) and keeps its layer's weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gradcheck_cli.activations import RELU_FAMILY
from gradcheck_cli.analyse.structure import fan_in
from gradcheck_cli.measure.activation_watch import FUNCTIONAL
from gradcheck_cli.measure.function_patch import NOT_HANDLED, LayerTrace, patch_forward
from gradcheck_cli.report.parameters import ActivationSwap, SwapActivationParameters
from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.verify.applier import Applier, ApplyContext, Patch, not_applicable
from gradcheck_cli.verify.appliers.initialisation import reinit_normal, seeded_generator
from gradcheck_cli.verify.appliers.surgery import current_name, measured, module_at, outcome_reason, replace_module

_USABLE = {"ReLU", "GELU", "LeakyReLU", "ELU", "SiLU"}
"""The activations a swap may put in (the parameters' `use`, e.g. "nn.LeakyReLU(0.01)")."""


def new_activation(use: str) -> nn.Module | None:
    """The module `use` names ("nn.ReLU()", "nn.LeakyReLU(0.01)"), or None for anything else."""
    match = re.fullmatch(r"nn\.(\w+)\(([-+0-9.e]*)\)", use.strip())
    if match is None or match.group(1) not in _USABLE:
        return None
    arguments = [float(match.group(2))] if match.group(2) else []
    module: nn.Module = getattr(nn, match.group(1))(*arguments)
    return module


@dataclass
class _Plan:
    """What one application does: module swaps done so far, functional swaps per module."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    swapped_modules: set[str] = field(default_factory=set)
    functional: dict[str, dict[str, tuple[str, nn.Module]]] = field(default_factory=dict)
    """Enclosing module -> producing layer -> (the function type replaced, its replacement)."""
    reinit: list[str] = field(default_factory=list)


def apply_swap_activation(ctx: ApplyContext) -> Patch:
    parameters = ctx.recommendation.parameters
    if not isinstance(parameters, SwapActivationParameters) or not parameters.swaps:
        return not_applicable("the recommendation names no activation to swap")
    plan = _Plan()
    named = {swap.layer for swap in parameters.swaps}
    for swap in parameters.swaps:
        _plan_swap(ctx, swap, named, plan)
    for module_name, swaps in plan.functional.items():
        _patch_functional(ctx.model, module_name, swaps)
    generator = seeded_generator(ctx.seed)
    for layer in plan.reinit:
        lm = measured(ctx.measurements, layer)
        fans = fan_in(lm.weight_shape, lm.io_features) if lm is not None else None
        why_not = reinit_normal(ctx.model, layer, math.sqrt(2.0 / fans), generator) if fans else (
            f"{layer} has no measured fan-in for He's std")
        if why_not is not None:
            plan.skipped.append(f"He re-init: {why_not}")
    if not plan.done:
        return not_applicable("; ".join(plan.skipped))
    what = "swapped the activations after"
    if plan.reinit:
        what = f"{what} (their layers He re-initialised)"
    return Patch(applied=True, reason=outcome_reason(what, plan.done, plan.skipped))


def _plan_swap(ctx: ApplyContext, swap: ActivationSwap, named: set[str], plan: _Plan) -> None:
    """Swap one activation module now, or plan its functional rewrite; say why not otherwise."""
    replacement = new_activation(swap.use)
    lm = measured(ctx.measurements, swap.layer)
    counts = lm.activation_counts if lm is not None else None
    if replacement is None:
        plan.skipped.append(f"{swap.layer}: cannot build {swap.use}")
        return
    if counts is None:
        plan.skipped.append(f"no activation follows {swap.layer} in the scan's measurements")
        return
    where = counts.where
    label = f"{swap.layer} ({swap.replaces} -> {type(replacement).__name__})"
    if ":" in where:
        enclosing = current_name(ctx.model, where.rpartition(":")[0])  # names now, after an add-skip
        if module_at(ctx.model, enclosing) is None:
            plan.skipped.append(f"{swap.layer}: its activation's module '{enclosing}' is not in the model")
            return
        producer = current_name(ctx.model, swap.layer)
        plan.functional.setdefault(enclosing, {})[producer] = (swap.replaces, replacement)
        plan.done.append(label)
    else:
        why_not = _swap_module(ctx, where, swap.replaces, replacement, plan.swapped_modules)
        if why_not is not None:
            plan.skipped.append(f"{swap.layer}: {why_not}")
            return
        shared = [m.name for m in ctx.measurements.layers if m.activation_counts is not None
                  and m.activation_counts.where == where and m.name not in named]
        plan.done.append(label + (f", shared with {', '.join(shared)}" if shared else ""))
    if swap.cause != "dead" and type(replacement).__name__ in RELU_FAMILY:
        plan.reinit.append(swap.layer)


def _swap_module(ctx: ApplyContext, where: str, replaces: str, replacement: nn.Module,
                 swapped: set[str]) -> str | None:
    """Replace the activation module `where`; the reason it cannot, or None."""
    where = current_name(ctx.model, where)  # after an add-skip applied before on this copy
    if where in swapped:
        return None  # one module after several named layers: swapped once
    current = module_at(ctx.model, where)
    if current is None or where in ("", "(root)"):
        return f"its activation '{where}' is not a replaceable module of the model"
    if type(current).__name__ != replaces:
        return f"'{where}' is a {type(current).__name__}, not a {replaces}"
    replace_module(ctx.model, where, replacement)
    swapped.add(where)
    return None


def _patch_functional(model: nn.Module, module_name: str, swaps: dict[str, tuple[str, nn.Module]]) -> None:
    """Rewrite, in `module_name`'s own forward, the calls of each swapped function on the output
    of its producing layer (the layer that finished last, as the scan measured it)."""
    module = module_at(model, module_name)
    if module is None:
        return
    trace = LayerTrace(model)

    def rewrite(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = getattr(func, "__name__", "")
        entry = swaps.get(trace.last or "")
        if trace.running != module_name or entry is None or FUNCTIONAL.get(name) != entry[0] or not args:
            return NOT_HANDLED
        x = args[0]
        if name.endswith("_"):  # in place, as called: x becomes the new activation of itself
            return x.copy_(entry[1].forward(x.clone()))
        return entry[1].forward(x)

    patch_forward(module, rewrite)


APPLIERS: dict[RecommendationId, Applier] = {RecommendationId.SWAP_ACTIVATION: apply_swap_activation}
