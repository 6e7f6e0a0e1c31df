"""Pure: the fixes for a measured cause (init scale, activations, plain depth), with exact numbers.

fixes.py owns the catalogue and the ranking; this module decides, from the findings and their
typed evidence (report/evidence.py), which of he-init, xavier-init, swap-activation,
add-normalization and add-skip apply, to which layers, why (with the measured numbers), and with
which parameters (report/parameters.py, from which the snippet is rendered). Each returns `Fix`
candidates that fixes.py turns into Recommendations.

* he-init / xavier-init: every init-scale finding (its evidence carries the exact target std),
  every vanishing/exploding layer whose weight std is outside the accepted band (init_std.py),
  a dead-relu layer whose negative bias keeps its units off (He init with a zero bias), and a
  saturated-activation layer whose weights are above the band (Xavier). The snippet sets each
  layer's std exactly (nn.init.normal_), with the equivalent kaiming_/xavier_ call.
* swap-activation: sigmoid/tanh layers behind a vanishing stack, saturated-activation (ReLU
  family instead of sigmoid/tanh) and dead-relu (LeakyReLU / ELU / PReLU instead of ReLU)
  (docs/fixes/swap-activation.md).
* add-normalization / add-skip: only when a vanishing, exploding or init-scale finding carries a
  geometric run (depth.py, its stack_* evidence); add-normalization when no normalization layer
  runs inside the run and the model has none (BatchNorm for conv/MLP stacks, LayerNorm for sequence
  models), add-skip when the probe saw no residual add in the model. A healthy model has no such
  finding, and a residual or normalized model shows no geometric run, so neither is offered there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gradcheck_cli.activations import SATURATING
from gradcheck_cli.analyse.depth import describe, stack_kind
from gradcheck_cli.analyse.init_std import SCHEME_NAMES
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import DEFAULTS, Thresholds
from gradcheck_cli.report.evidence import (
    DeadReluEvidence,
    InitScaleEvidence,
    OverflowGrowthEvidence,
    SaturationEvidence,
    StackRun,
    StatusEvidence,
)
from gradcheck_cli.report.parameters import (
    ActivationSwap,
    InitParameters,
    LayerInit,
    NormalizationParameters,
    Parameters,
    SkipParameters,
    SwapActivationParameters,
)
from gradcheck_cli.report.records import Finding, FindingKind, RecommendationId

R = RecommendationId
STRUCTURE_KINDS = (FindingKind.VANISHING, FindingKind.EXPLODING, FindingKind.INIT_SCALE)


@dataclass(frozen=True)
class Fix:
    """A candidate recommendation: its id, layers, the measured why, and its parameters."""

    id: RecommendationId
    layers: tuple[str, ...]
    why: str
    parameters: Parameters


@dataclass(frozen=True)
class _InitChange:
    layer: str
    scheme: str
    std: float
    reason: str


def init_fixes(findings: Sequence[Finding], flagged: Sequence[LayerStats],
               layers: Sequence[LayerStats]) -> list[Fix]:
    """he-init and xavier-init with the exact std per layer (see the module docstring)."""
    by_name = {x.name: x for x in layers}
    changes: dict[str, _InitChange] = {}
    for f in findings:
        layer = by_name.get(f.layer or "")
        change = _finding_change(f, layer) if layer is not None else None
        if change is not None:
            changes.setdefault(change.layer, change)
    for layer in flagged:
        change = _change(layer, force=False)
        if change is not None:
            changes.setdefault(layer.name, change)
    fixes = []
    for rid, schemes in ((R.HE_INIT, ("he",)), (R.XAVIER_INIT, ("xavier", "lecun"))):
        bucket = [c for c in changes.values() if c.scheme in schemes]
        if bucket:
            parameters = InitParameters(tuple(LayerInit(c.layer, c.scheme, c.std) for c in bucket))
            fixes.append(Fix(rid, tuple(c.layer for c in bucket), _init_why(bucket), parameters))
    return fixes


def _finding_change(f: Finding, layer: LayerStats) -> _InitChange | None:
    """The init change a finding on `layer` asks for: init-scale's target std, He with a zero bias
    for units a negative bias keeps off, Xavier for units too large a weight std saturates."""
    ev = f.evidence
    if isinstance(ev, InitScaleEvidence):
        return _InitChange(layer.name, ev.scheme, ev.target_std,
                           f"weight std {ev.weight_std:.3g} is {ev.std_ratio:.3g}x the "
                           f"{SCHEME_NAMES[ev.scheme]} std {ev.target_std:.3g} ({ev.direction})")
    if isinstance(ev, DeadReluEvidence) and ev.negative_bias and ev.bias_mean is not None:
        change = _change(layer, force=True)
        if change is None:
            return None
        return _InitChange(layer.name, "he", change.std,
                           f"mean bias {ev.bias_mean:.3g} keeps {ev.dead_fraction:.0%} "
                           "of its ReLU units off; re-initialise with a zero bias")
    if isinstance(ev, SaturationEvidence) and ev.target_std is not None and ev.weight_std is not None:
        return _InitChange(layer.name, "xavier", ev.target_std,
                           f"weight std {ev.weight_std:.3g} drives {ev.saturated_units:.0%} of its "
                           f"{ev.function} units into the flat region")
    return None


def activation_fix(findings: Sequence[Finding], vanishing: Sequence[LayerStats],
                   layers: Sequence[LayerStats], t: Thresholds = DEFAULTS) -> Fix | None:
    """swap-activation: for the sigmoid/tanh layers behind a vanishing stack, saturated (ReLU
    family) and dead (LeakyReLU/ELU/PReLU) activations; one recommendation, their reasons joined."""
    depth = _depth_swaps(vanishing, layers, t) if vanishing else None
    saturated = [(f, f.evidence) for f in findings if isinstance(f.evidence, SaturationEvidence)]
    dead = [(f, f.evidence) for f in findings if isinstance(f.evidence, DeadReluEvidence)]
    whys, swaps = ([depth[1]], list(depth[0])) if depth else ([], [])
    if saturated:
        ranked = sorted(saturated, key=lambda p: -p[1].saturated_units)  # the worst first
        worst = ranked[0][1]
        whys.append(f"{len(saturated)} {worst.function} activations saturate (up to "
                    f"{worst.saturated_units:.0%} of the units of "
                    f"'{worst.activation_module}' sit in the flat region, derivative ~0)")
        swaps += [ActivationSwap(f.layer, ev.function, "nn.ReLU()", "saturated") for f, ev in ranked if f.layer]
    if dead:
        worst_dead = max((ev for _, ev in dead), key=lambda ev: ev.dead_fraction)
        whys.append(f"{len(dead)} ReLU activations have dead units (up to "
                    f"{worst_dead.dead_fraction:.0%} of '{worst_dead.activation_module}' "
                    "never fire, so their gradient is exactly 0)")
        swaps += [ActivationSwap(f.layer, ev.function, "nn.LeakyReLU(0.01)", "dead") for f, ev in dead if f.layer]
    if not whys:
        return None
    names = tuple(dict.fromkeys([*(swap.layer for swap in (depth[0] if depth else ())),
                                 *(f.layer for f, _ in [*saturated, *dead] if f.layer)]))
    why = "; ".join(whys)
    return Fix(R.SWAP_ACTIVATION, names, why, SwapActivationParameters(tuple(swaps)))


def _depth_swaps(vanishing: Sequence[LayerStats], layers: Sequence[LayerStats],
                 t: Thresholds) -> tuple[tuple[ActivationSwap, ...], str] | None:
    """The sigmoid/tanh layers that divide the gradient of a vanishing stack, and why."""
    # Sigmoid's derivative is <= 0.25 everywhere, so it always divides the gradient; tanh only
    # when most of its outputs sit in the flat region (otherwise its derivative is ~1).
    saturating = [x for x in layers if x.role == "dense" and (
        x.activation.get("function") == "Sigmoid"
        or (x.activation.get("function") in SATURATING
            and float(x.activation.get("saturated_fraction") or 0.0) > t.swap_saturated_fraction))]
    if not saturating:
        return None
    fractions = [float(x.activation.get("saturated_fraction") or 0.0) for x in saturating]
    func = saturating[0].activation.get("function")
    bound = "sigmoid' <= 0.25: each layer divides the gradient by >= 4" if func == "Sigmoid" \
        else f"{max(fractions):.0%} of outputs sit in the flat region where the derivative is ~0"
    swaps = tuple(ActivationSwap(x.name, str(x.activation.get("function")), "nn.ReLU()", "depth")
                  for x in saturating)
    return swaps, f"{len(vanishing)} layers vanish behind {len(saturating)} {func} activations ({bound})"


def _stack_of(f: Finding) -> StackRun | None:
    ev = f.evidence
    if f.kind in STRUCTURE_KINDS and isinstance(ev, (StatusEvidence, InitScaleEvidence, OverflowGrowthEvidence)):
        return ev.stack
    return None


def structure_fixes(findings: Sequence[Finding], layers: Sequence[LayerStats],
                    has_normalization: bool) -> list[Fix]:
    """add-normalization / add-skip for a geometric run through a stack (see the module docstring)."""
    carrying = [(f, stack) for f in findings if (stack := _stack_of(f)) is not None]
    if not carrying:
        return []
    carrying.sort(key=lambda p: (p[1].stack_signal != "gradient", -p[1].stack_layers))
    run = carrying[0][1]
    names = tuple(dict.fromkeys(f.layer for f, _ in carrying if f.layer))
    said = describe(run)
    fixes = []
    if not run.stack_normalized and not has_normalization:
        norm, size = _normalization_for(layers)
        fixes.append(Fix(R.ADD_NORMALIZATION, names,
                         f"{said}, and no normalization layer re-centres the scale in between",
                         NormalizationParameters(names, norm, size)))
    if not run.stack_residual:
        fixes.append(Fix(R.ADD_SKIP, names,
                         f"{said}; a residual path y = x + F(x) gives the gradient a route with factor 1",
                         SkipParameters(names)))
    return fixes


def _normalization_for(layers: Sequence[LayerStats]) -> tuple[str, str]:
    """LayerNorm for sequence models, BatchNorm1d for MLPs, BatchNorm{1,2,3}d for conv stacks."""
    kind = stack_kind(layers)
    if kind == "sequence":
        return "LayerNorm", "features"
    if kind == "mlp":
        return "BatchNorm1d", "features"
    dims = "3d" if any("3d" in x.type_name for x in layers) else (
        "1d" if any("1d" in x.type_name for x in layers) else "2d")
    return f"BatchNorm{dims}", "channels"


def _change(layer: LayerStats, force: bool) -> _InitChange | None:
    target = layer.init_target
    if layer.weight_std is None or target is None or layer.role != "dense":
        return None
    mismatch = target.mismatch(layer.weight_std)
    if mismatch == 1.0 and not force:
        return None
    direction = "too small" if mismatch < 1 else "too large"
    return _InitChange(layer.name, target.scheme, target.std,
                       f"weight std {layer.weight_std:.3g} is {layer.weight_std / target.std:.3g}x the "
                       f"{SCHEME_NAMES[target.scheme]} std {target.std:.3g} ({direction})")


def _init_why(bucket: Sequence[_InitChange]) -> str:
    first = bucket[0]
    more = f"; {len(bucket) - 1} more layers likewise" if len(bucket) > 1 else ""
    return f"{first.layer}: {first.reason}{more}"
