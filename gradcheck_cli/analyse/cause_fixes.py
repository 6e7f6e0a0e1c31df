"""Pure: the fixes for a measured cause (init scale, activations, plain depth), with exact numbers.

fixes.py owns the catalogue and the ranking; this module decides, from the findings and their
evidence, which of he-init, xavier-init, swap-activation, add-normalization and add-skip apply,
to which layers, why (with the measured numbers), and the code to paste. Each returns
`Fix(id, layers, why, code)` tuples that fixes.py turns into Recommendations.

* he-init / xavier-init: every init-scale finding (its evidence carries the exact target std),
  every vanishing/exploding layer whose weight std is outside the accepted band (init_std.py),
  a dead-relu layer whose negative bias keeps its units off (He init with a zero bias), and a
  saturated-activation layer whose weights are above the band (Xavier). The snippet sets each
  layer's std exactly (nn.init.normal_), with the equivalent kaiming_/xavier_ call.
* swap-activation: saturated-activation (ReLU family instead of sigmoid/tanh) and dead-relu
  (LeakyReLU / ELU / PReLU instead of ReLU), DOMAIN.md.
* add-normalization / add-skip: only when a vanishing, exploding or init-scale finding carries a
  geometric run (depth.py stack_* evidence); add-normalization when no normalization layer runs
  inside the run and the model has none (BatchNorm for conv/MLP stacks, LayerNorm for sequence
  models), add-skip when the probe saw no residual add in the model. A healthy model has no such
  finding, and a residual or normalized model shows no geometric run, so neither is offered there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gradcheck_cli.analyse.depth import describe, stack_kind
from gradcheck_cli.analyse.init_std import SCHEME_NAMES
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.report.records import Finding, FindingKind, Number, RecommendationId

R = RecommendationId
FORMULAS = {"he": "sqrt(2 / fan_in)", "xavier": "sqrt(2 / (fan_in + fan_out))", "lecun": "sqrt(1 / fan_in)"}
STRUCTURE_KINDS = (FindingKind.VANISHING, FindingKind.EXPLODING, FindingKind.INIT_SCALE)


@dataclass(frozen=True)
class Fix:
    id: RecommendationId
    layers: tuple[str, ...]
    why: str
    code: str


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
        if layer is None:
            continue
        if f.kind == FindingKind.INIT_SCALE:
            changes.setdefault(layer.name, _InitChange(
                layer.name, str(f.evidence["scheme"]), float(_num(f.evidence["target_std"])),
                f"weight std {_num(f.evidence['weight_std']):.3g} is {_num(f.evidence['std_ratio']):.3g}x "
                f"the {SCHEME_NAMES[str(f.evidence['scheme'])]} std {_num(f.evidence['target_std']):.3g} "
                f"({f.evidence['direction']})"))
        elif f.kind == FindingKind.DEAD_RELU and f.evidence.get("negative_bias"):
            change = _change(layer, force=True)
            if change is not None:
                changes.setdefault(layer.name, _InitChange(
                    layer.name, "he", change.std,
                    f"mean bias {_num(f.evidence['bias_mean']):.3g} keeps {_num(f.evidence['dead_fraction']):.0%} "
                    "of its ReLU units off; re-initialise with a zero bias"))
        elif f.kind == FindingKind.SATURATED_ACTIVATION and "target_std" in f.evidence:
            changes.setdefault(layer.name, _InitChange(
                layer.name, "xavier", float(_num(f.evidence["target_std"])),
                f"weight std {_num(f.evidence['weight_std']):.3g} drives "
                f"{_num(f.evidence['saturated_units']):.0%} of its {f.evidence['function']} units "
                "into the flat region"))
    for layer in flagged:
        change = _change(layer, force=False)
        if change is not None:
            changes.setdefault(layer.name, change)
    fixes = []
    for rid, schemes in ((R.HE_INIT, ("he",)), (R.XAVIER_INIT, ("xavier", "lecun"))):
        bucket = [c for c in changes.values() if c.scheme in schemes]
        if bucket:
            fixes.append(Fix(rid, tuple(c.layer for c in bucket), _init_why(bucket), _init_code(rid, bucket)))
    return fixes


def activation_fix(findings: Sequence[Finding]) -> Fix | None:
    """swap-activation for saturated (ReLU family) and dead (LeakyReLU/ELU/PReLU) activations."""
    saturated = [f for f in findings if f.kind == FindingKind.SATURATED_ACTIVATION]
    dead = [f for f in findings if f.kind == FindingKind.DEAD_RELU]
    if not saturated and not dead:
        return None
    whys, code = [], []
    if saturated:
        worst = max(saturated, key=lambda f: _num(f.evidence["saturated_units"]))
        whys.append(f"{len(saturated)} {worst.evidence['function']} activations saturate (up to "
                    f"{_num(worst.evidence['saturated_units']):.0%} of the units of "
                    f"'{worst.evidence['activation_module']}' sit in the flat region, derivative ~0)")
        code.append(f"nn.ReLU()  # or nn.GELU(), in place of nn.{worst.evidence['function']}() in hidden layers")
    if dead:
        worst = max(dead, key=lambda f: _num(f.evidence["dead_fraction"]))
        whys.append(f"{len(dead)} ReLU activations have dead units (up to "
                    f"{_num(worst.evidence['dead_fraction']):.0%} of '{worst.evidence['activation_module']}' "
                    "never fire, so their gradient is exactly 0)")
        code.append("nn.LeakyReLU(0.01)  # or nn.ELU() / nn.PReLU(): a negative slope keeps a gradient")
    names = tuple(dict.fromkeys(f.layer for f in [*saturated, *dead] if f.layer))
    return Fix(R.SWAP_ACTIVATION, names, "; ".join(whys), "\n".join(code))


def structure_fixes(findings: Sequence[Finding], layers: Sequence[LayerStats],
                    has_normalization: bool) -> list[Fix]:
    """add-normalization / add-skip for a geometric run through a stack (see the module docstring)."""
    carrying = [f for f in findings if f.kind in STRUCTURE_KINDS and "stack_trend" in f.evidence]
    if not carrying:
        return []
    carrying.sort(key=lambda f: (f.evidence["stack_signal"] != "gradient", -_num(f.evidence["stack_layers"])))
    evidence = carrying[0].evidence
    names = tuple(dict.fromkeys(f.layer for f in carrying if f.layer))
    run = describe(dict(evidence))
    fixes = []
    if not evidence["stack_normalized"] and not has_normalization:
        kind = stack_kind(layers)
        norm = {"sequence": "nn.LayerNorm(features)", "mlp": "nn.BatchNorm1d(features)"}.get(kind)
        if norm is None:
            dims = "3d" if any("3d" in x.type_name for x in layers) else (
                "1d" if any("1d" in x.type_name for x in layers) else "2d")
            norm = f"nn.BatchNorm{dims}(channels)"
        fixes.append(Fix(R.ADD_NORMALIZATION, names,
                         f"{run}, and no normalization layer re-centres the scale in between",
                         f"# after each layer of the stack:\nnn.Sequential(layer, {norm}, activation)"))
    if not evidence["stack_residual"]:
        fixes.append(Fix(R.ADD_SKIP, names,
                         f"{run}; a residual path y = x + F(x) gives the gradient a route with factor 1",
                         "class Residual(nn.Module):\n    def __init__(self, block):\n        super().__init__()\n"
                         "        self.block = block\n    def forward(self, x):\n        return x + self.block(x)"))
    return fixes


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


def _init_code(rid: RecommendationId, bucket: Sequence[_InitChange]) -> str:
    # One entry per line and the equivalent init call on its own comment line, so that every
    # line stays short enough to be printed (and pasted) without wrapping.
    stds = "".join(f'    "{c.layer}": {c.std:.4g},\n' for c in bucket)
    formula = " / ".join(dict.fromkeys(FORMULAS[c.scheme] for c in bucket))
    same = ""
    if all(c.scheme == "he" for c in bucket):
        same = '    # same as: nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")\n'
    elif all(c.scheme == "xavier" for c in bucket):
        same = "    # same as: nn.init.xavier_normal_(layer.weight)\n"
    return (f"# std = {formula} per layer\n"
            f"stds = {{\n{stds}}}\n"
            "for name, std in stds.items():\n"
            "    layer = model.get_submodule(name)\n"
            f"{same}"
            "    nn.init.normal_(layer.weight, mean=0.0, std=std)\n"
            "    if layer.bias is not None:\n"
            "        nn.init.zeros_(layer.bias)")


def _num(value: Number) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0
