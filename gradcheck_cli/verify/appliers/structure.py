"""add-normalization and add-skip: change the structure around each named layer (docs/fixes).

Both read the shapes the layers really see, on one forward of the probe's first batch
(measure/shapes.py), never the layers' configuration.

add-normalization puts a norm after each named layer, chosen from the layer's output shape:
(N, C) -> BatchNorm1d(C) (LayerNorm(C) when the parameters ask for LayerNorm, as for sequence
models), (N, C, L) of a convolution -> BatchNorm1d(C), (N, L, D) otherwise -> LayerNorm(D),
(N, C, H, W) -> BatchNorm2d(C), (N, C, D, H, W) -> BatchNorm3d(C). The norm is registered as a
child of the layer ("<layer>.verify_norm") and applied by a forward hook on the layer, so the
layer keeps its name and what follows it sees the normalized output.

add-skip makes each named block residual, y = x + F(x), where the layer's input and output shapes
match. F is the layer and the activation module that follows it in the same parent (a layer +
activation block, as in ResNet's units), else the layer alone. The block is wrapped in a Residual
module in the layer's place, so the layer's name changes ("net.0" -> "net.0.block.0"); the renames
are reported in the patch.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gradcheck_cli.measure.activation_watch import channels_first_layer
from gradcheck_cli.measure.shapes import ModuleShapes, measure_shapes
from gradcheck_cli.report.parameters import NormalizationParameters, SkipParameters
from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.target.guards import is_out_of_memory
from gradcheck_cli.verify.applier import Applier, ApplyContext, Patch, not_applicable
from gradcheck_cli.verify.appliers.surgery import (
    LayerAndActivation,
    Moved,
    Residual,
    current_name,
    measured,
    module_at,
    outcome_reason,
    placed_like,
    replace_module,
)

NORM_CHILD = "verify_norm"
"""The name of the norm added to a layer: "<layer>.verify_norm"."""


def _normalize(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """The forward hook that applies a layer's added norm to its output."""
    return module.get_submodule(NORM_CHILD)(output)


def _shapes(ctx: ApplyContext) -> dict[str, ModuleShapes] | str:
    """The shapes of the copy's modules on the first probe batch, or why they could not be measured."""
    try:
        return measure_shapes(ctx.model, ctx.sample_inputs())
    except Exception as exc:  # noqa: BLE001 - the user's forward, run once more
        if is_out_of_memory(exc):
            raise  # no fault of the patch: the scan reports it (api.py)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"the model's forward failed while measuring its shapes ({type(exc).__name__}: {first})"


def norm_for(layer: nn.Module, shape: tuple[int, ...], norm: str) -> nn.Module | str:
    """The norm for a layer's output of this shape (the module docstring), or why there is none."""
    if len(shape) < 2:
        return f"its output {shape} has no feature dimension"
    if norm == "LayerNorm":
        return nn.LayerNorm(shape[-1])
    if len(shape) == 2:
        return nn.BatchNorm1d(shape[1])
    if len(shape) == 3:
        return nn.BatchNorm1d(shape[1]) if channels_first_layer(layer) else nn.LayerNorm(shape[-1])
    if len(shape) in (4, 5):
        return (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm3d)(shape[1])
    return f"no norm for an output of {len(shape)} dims {shape}"


def apply_add_normalization(ctx: ApplyContext) -> Patch:
    parameters = ctx.recommendation.parameters
    if not isinstance(parameters, NormalizationParameters) or not parameters.layers:
        return not_applicable("the recommendation names no layer to normalize")
    shapes = _shapes(ctx)
    if isinstance(shapes, str):
        return not_applicable(shapes)
    done, skipped = [], []
    for name in parameters.layers:
        now = current_name(ctx.model, name)  # after an add-skip applied before on this copy
        layer = module_at(ctx.model, now)
        seen = shapes.get(now)
        if layer is None or seen is None:
            skipped.append(f"{name} did not run on the probe batch")
        elif seen.output is None:
            skipped.append(f"{name}'s output is not a single tensor")
        elif hasattr(layer, NORM_CHILD):
            skipped.append(f"{name} has a {NORM_CHILD} already")
        else:
            chosen = norm_for(layer, seen.output, parameters.norm)
            if isinstance(chosen, str):
                skipped.append(f"{name}: {chosen}")
                continue
            layer.add_module(NORM_CHILD, placed_like(chosen, layer))
            layer.register_forward_hook(_normalize)
            done.append(f"{name} -> {_described(chosen)}")
    if not done:
        return not_applicable("; ".join(skipped))
    return Patch(applied=True, reason=outcome_reason("added a norm after", done, skipped))


def _described(norm: nn.Module) -> str:
    size = norm.num_features if isinstance(norm, nn.modules.batchnorm._NormBase) else (
        norm.normalized_shape[0] if isinstance(norm, nn.LayerNorm) else "")
    return f"{type(norm).__name__}({size})"


def apply_add_skip(ctx: ApplyContext) -> Patch:
    parameters = ctx.recommendation.parameters
    if not isinstance(parameters, SkipParameters) or not parameters.layers:
        return not_applicable("the recommendation names no block to make residual")
    shapes = _shapes(ctx)
    if isinstance(shapes, str):
        return not_applicable(shapes)
    done: list[str] = []
    skipped: list[str] = []
    renamed: dict[str, str] = {}
    for name in parameters.layers:
        why_not = _skip_mismatch(name, shapes.get(name))
        if why_not is None and module_at(ctx.model, name) is ctx.model:
            why_not = f"{name} is the whole model"
        elif why_not is None and current_name(ctx.model, name) != name:
            why_not = f"{name} is residual already"
        if why_not is not None:
            skipped.append(why_not)
            continue
        activation = _following_activation(ctx, name, shapes)
        renamed[name] = _wrap_residual(ctx.model, name, activation)
        done.append(f"{name}{f' + {activation}' if activation else ''}")
    if not done:
        return not_applicable("; ".join(skipped))
    return Patch(applied=True, reason=outcome_reason("made residual, y = x + F(x)", done, skipped),
                 renamed=renamed)


def _skip_mismatch(name: str, seen: ModuleShapes | None) -> str | None:
    """Why `name` cannot have an identity skip around it (the shapes), or None."""
    if seen is None:
        return f"{name} did not run on the probe batch"
    if seen.input is None or seen.output is None or seen.input != seen.output:
        shown = [str(tuple(s)) if s is not None else "not a tensor" for s in (seen.input, seen.output)]
        return f"{name}: input {shown[0]} -> output {shown[1]}, no identity path of that shape"
    return None


def _following_activation(ctx: ApplyContext, name: str, shapes: dict[str, ModuleShapes]) -> str | None:
    """The activation module measured after `name`, when it is `name`'s next sibling, follows no
    other layer, and keeps the shape: it joins the block."""
    lm = measured(ctx.measurements, name)
    where = lm.activation_counts.where if lm is not None and lm.activation_counts is not None else None
    if where is None or ":" in where or where.rpartition(".")[0] != name.rpartition(".")[0]:
        return None
    if any(m.name != name and m.activation_counts is not None and m.activation_counts.where == where
           for m in ctx.measurements.layers):
        return None
    parent = module_at(ctx.model, name.rpartition(".")[0])
    siblings = list(parent._modules) if parent is not None else []
    layer_child, act_child = name.rpartition(".")[2], where.rpartition(".")[2]
    if layer_child not in siblings or siblings.index(layer_child) + 1 >= len(siblings) or \
            siblings[siblings.index(layer_child) + 1] != act_child:
        return None
    seen = shapes.get(where)
    return where if seen is not None and seen.output == shapes[name].output else None


def _wrap_residual(model: nn.Module, name: str, activation: str | None) -> str:
    """Residual(layer) or Residual(LayerAndActivation(layer, activation)) in the layer's place (a
    Moved in the activation's place); the layer's new name."""
    layer = model.get_submodule(name)
    if activation is None:
        replace_module(model, name, Residual(layer))
        return f"{name}.block"
    act = model.get_submodule(activation)
    replace_module(model, activation, Moved(f"{name}.block.1"))
    replace_module(model, name, Residual(LayerAndActivation(layer, act)))
    return f"{name}.block.0"


APPLIERS: dict[RecommendationId, Applier] = {
    RecommendationId.ADD_NORMALIZATION: apply_add_normalization,
    RecommendationId.ADD_SKIP: apply_add_skip,
}
