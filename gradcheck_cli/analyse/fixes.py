"""The recommendation catalogue: stable ids, ranked from findings, each with a snippet to paste.

Every recommendation is justified by at least one finding and quotes the measured numbers; the
mapping from cause to fix follows DOMAIN.md ("Fixes, and when each is the right one").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheck_cli.activations import SATURATING
from gradcheck_cli.analyse.cause_fixes import activation_fix, init_fixes, structure_fixes
from gradcheck_cli.analyse.recurrence import effective_horizon, oriented_steps
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.report.records import Finding, FindingKind, Recommendation, RecommendationId

R = RecommendationId

# Most urgent first: data and NaN sources, then what stops a diverging run, then root causes.
RANK = (R.CHECK_INPUTS, R.GUARD_NONFINITE, R.LOSS_SCALING, R.CLIP_GRADIENTS, R.LOWER_LR,
        R.HE_INIT, R.XAVIER_INIT, R.SWAP_ACTIVATION, R.GATED_RNN, R.ADD_NORMALIZATION, R.ADD_SKIP,
        R.WEIGHT_DECAY)

TITLES = {
    R.SWAP_ACTIVATION: "Use a non-saturating activation (ReLU/GELU) in hidden layers",
    R.HE_INIT: "Re-initialise ReLU-family layers with He (Kaiming) init",
    R.XAVIER_INIT: "Re-initialise tanh/sigmoid/linear layers with Xavier (Glorot) init",
    R.ADD_NORMALIZATION: "Add normalization layers (BatchNorm / LayerNorm)",
    R.ADD_SKIP: "Add residual (skip) connections",
    R.GATED_RNN: "Use a gated recurrent layer (LSTM or GRU)",
    R.CLIP_GRADIENTS: "Clip the gradient norm",
    R.LOWER_LR: "Lower the learning rate",
    R.WEIGHT_DECAY: "Add weight decay",
    R.GUARD_NONFINITE: "Guard the operation that produces NaN/Inf",
    R.CHECK_INPUTS: "Clean the input data: the batch already holds NaN/Inf",
    R.LOSS_SCALING: "Scale the loss for fp16 training",
}

RECURRENT_VANILLA = {"RNN", "RNNCell"}


def recommend(findings: Sequence[Finding], layers: Sequence[LayerStats],
              has_normalization: bool) -> list[Recommendation]:
    by_name = {layer.name: layer for layer in layers}
    kinds: dict[FindingKind, list[LayerStats]] = {}
    for f in findings:
        kinds.setdefault(f.kind, [])
        if f.layer in by_name:
            kinds[f.kind].append(by_name[f.layer])
    recs: dict[R, Recommendation] = {}

    if FindingKind.NONFINITE_INPUT in kinds:
        recs[R.CHECK_INPUTS] = _rec(
            R.CHECK_INPUTS, (), "the probe batch or its target contains NaN/Inf before the model runs",
            "assert torch.isfinite(inputs).all() and torch.isfinite(target).all()\n"
            "inputs = torch.nan_to_num(inputs)  # or drop the bad samples / fix the loader")
    elif FindingKind.NONFINITE in kinds:
        _nonfinite_fixes(recs, findings, kinds[FindingKind.NONFINITE], layers)

    exploding = kinds.get(FindingKind.EXPLODING, [])
    vanishing = kinds.get(FindingKind.VANISHING, [])
    if exploding:
        _explosion_fixes(recs, exploding, layers)
    _init_fixes(recs, exploding + vanishing, layers, findings)
    if vanishing:
        _vanishing_fixes(recs, vanishing, layers, has_normalization)
    _activation_fixes(recs, findings)
    _through_time_fixes(recs, kinds.get(FindingKind.VANISHING_THROUGH_TIME, []),
                        kinds.get(FindingKind.EXPLODING_THROUGH_TIME, []), exploding, layers)
    for fix in structure_fixes(findings, layers, has_normalization):
        recs[fix.id] = _rec(fix.id, fix.layers, fix.why, fix.code)
    divergence = next((f for f in findings if f.kind == FindingKind.DIVERGENCE), None)
    if divergence is not None:
        _divergence_fixes(recs, divergence)
    return [recs[rid] for rid in _ranking(findings) if rid in recs]


def _ranking(findings: Sequence[Finding]) -> tuple[R, ...]:
    """RANK, except that an init-scale finding makes the init the cause: its fix (he-init /
    xavier-init) comes before clip-gradients and lower-lr, which only contain what a mis-scaled init
    sets off (a lower rate or a clip cannot give the layers the scale they need)."""
    if not any(f.kind == FindingKind.INIT_SCALE for f in findings):
        return RANK
    inits = (R.HE_INIT, R.XAVIER_INIT)
    rest = [rid for rid in RANK if rid not in inits]
    at = rest.index(R.CLIP_GRADIENTS)
    return (*rest[:at], *inits, *rest[at:])


def _explosion_fixes(recs: dict[R, Recommendation], exploding: list[LayerStats],
                     layers: Sequence[LayerStats]) -> None:
    worst = max(exploding, key=lambda x: x.grad_norm or 0.0)
    _clip_fix(recs, exploding, layers, f"gradient norms reach {worst.grad_norm:.3g} in {worst.name}")
    ratios = [x.grad_to_weight for x in exploding if x.grad_to_weight]
    if ratios:
        peak = max(ratios)
        lr = _round_sig(1e-3 / peak)
        recs[R.LOWER_LR] = _rec(
            R.LOWER_LR, _names(exploding),
            f"grad/weight reaches {peak:.3g}: with SGD a step changes the weights by lr x {peak:.3g}; "
            f"lr={lr:g} brings the largest update/weight ratio to the healthy ~1e-3",
            f"optimizer = torch.optim.SGD(model.parameters(), lr={lr:g})\n"
            "# or Adam with warmup:\n"
            "# torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, total_iters=1000)")


def _clip_fix(recs: dict[R, Recommendation], flagged: list[LayerStats], layers: Sequence[LayerStats],
              what: str) -> None:
    """clip-gradients for `flagged`, max_norm calibrated on the measured norms of the other layers."""
    healthy = [x.grad_norm for x in layers if x not in flagged and x.grad_norm is not None
               and x.grad_to_weight is not None and x.grad_to_weight <= 1.0]
    if healthy:
        max_norm = _round_sig(math.sqrt(sum(g * g for g in healthy)) * 2)
        basis = f"twice the total norm {max_norm / 2:.3g} of the layers that are not exploding"
    else:
        max_norm, basis = 1.0, "the common default (no layer is healthy enough to calibrate on)"
    recs[R.CLIP_GRADIENTS] = _rec(
        R.CLIP_GRADIENTS, _names(flagged), f"{what}; max_norm={max_norm:g} is {basis}",
        f"loss.backward()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm:g})\n"
        "optimizer.step()")


def _through_time_fixes(recs: dict[R, Recommendation], vanishing: list[LayerStats],
                        exploding: list[LayerStats], generic_exploding: list[LayerStats],
                        layers: Sequence[LayerStats]) -> None:
    """gated-rnn for a vanilla RNN vanishing through time; clip-gradients for one exploding through
    time (Pascanu et al. 2013: clipping bounds the step however large the product of Jacobians)."""
    recurrent = [x for x in vanishing if x.type_name in RECURRENT_VANILLA or x.recurrent_cell == "vanilla"]
    if recurrent:
        x = recurrent[0]
        steps = oriented_steps(x.step_grad_rms, x.step_entry_grad_rms, x.bidirectional)
        horizon = effective_horizon(steps)
        reach = f", below 1e-3 of its value at the loss {horizon} steps back" if horizon else ""
        # A cell called in a loop (cell_watch.py) is replaced by a gated cell in the same loop.
        code = ("self.cell = nn.GRUCell(input_size, hidden_size)\n"
                "# in the loop: h = self.cell(x_t, h); or nn.LSTMCell:\n"
                "# h, c = self.cell(x_t, (h, c)); the cell state gives\n"
                "# the gradient a path with factor ~1" if x.recurrent_cell else
                "self.rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)\n"
                "# or nn.GRU(...): the cell state gives the gradient a path with factor ~1")
        recs[R.GATED_RNN] = _rec(
            R.GATED_RNN, _names(recurrent),
            f"the gradient reaching the far end of {x.name}'s {len(steps)}-step sequence is "
            f"{_far_over_peak(steps):.2g} of its peak{reach}: the recurrence shrinks it at every step",
            code)
    if exploding:
        x = exploding[0]
        steps = oriented_steps(x.step_grad_rms, x.step_entry_grad_rms, x.bidirectional)
        growth = steps[0] / steps[-1] if steps and steps[-1] > 0 else math.inf
        _clip_fix(recs, [*generic_exploding, *exploding], layers,
                  f"the gradient grows {growth:.3g}x back through the {len(steps)} steps of {x.name}")


def _init_fixes(recs: dict[R, Recommendation], flagged: list[LayerStats],
                layers: Sequence[LayerStats], findings: Sequence[Finding] = ()) -> None:
    """He/Xavier init with the exact std: init-scale findings, flagged layers whose weight std is
    outside the accepted band, and the init causes of dead/saturated units (cause_fixes.py)."""
    for fix in init_fixes(findings, flagged, layers):
        recs[fix.id] = _rec(fix.id, fix.layers, fix.why, fix.code)


def _activation_fixes(recs: dict[R, Recommendation], findings: Sequence[Finding]) -> None:
    """swap-activation for saturated or dead units, merged with the sigmoid-depth one if present."""
    fix = activation_fix(findings)
    if fix is None:
        return
    old = recs.get(R.SWAP_ACTIVATION)
    if old is None:
        recs[R.SWAP_ACTIVATION] = _rec(fix.id, fix.layers, fix.why, fix.code)
    else:
        recs[R.SWAP_ACTIVATION] = _rec(fix.id, tuple(dict.fromkeys(old.layers + fix.layers)),
                                       f"{old.why}; {fix.why}",
                                       "\n".join(dict.fromkeys(old.code.splitlines() + fix.code.splitlines())))


def _vanishing_fixes(recs: dict[R, Recommendation], vanishing: list[LayerStats],
                     layers: Sequence[LayerStats], has_normalization: bool) -> None:
    # Sigmoid's derivative is <= 0.25 everywhere, so it always divides the gradient; tanh only
    # when most of its outputs sit in the flat region (otherwise its derivative is ~1).
    saturating = [x for x in layers if x.role == "dense" and (
        x.activation.get("function") == "Sigmoid"
        or (x.activation.get("function") in SATURATING
            and float(x.activation.get("saturated_fraction") or 0.0) > 0.5))]
    if saturating:
        fractions = [float(x.activation.get("saturated_fraction") or 0.0) for x in saturating]
        func = saturating[0].activation.get("function")
        bound = "sigmoid' <= 0.25: each layer divides the gradient by >= 4" if func == "Sigmoid" \
            else f"{max(fractions):.0%} of outputs sit in the flat region where the derivative is ~0"
        recs[R.SWAP_ACTIVATION] = _rec(
            R.SWAP_ACTIVATION, _names(saturating),
            f"{len(vanishing)} layers vanish behind {len(saturating)} {func} activations ({bound})",
            "# in place of nn.Sigmoid()/nn.Tanh() in hidden layers:\nnn.ReLU()  # or nn.GELU()")


def _far_over_peak(steps: Sequence[float]) -> float:
    finite = [s for s in steps if math.isfinite(s)]
    return steps[0] / max(finite) if finite and max(finite) > 0 else 0.0


def _names(layers: Sequence[LayerStats]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x.name for x in layers))


def _rec(rid: R, layers: tuple[str, ...], why: str, code: str) -> Recommendation:
    return Recommendation(rid, TITLES[rid], layers, why, code)


def _round_sig(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    return float(f"{value:.1g}")


# --- non-finite values and divergence -----------------------------------------------------------

_GUARDS = (
    (("log",), "x = torch.log(x.clamp_min(1e-6))  # instead of torch.log(x)\n"
               "# a learned positive quantity: F.softplus(raw) + 1e-6, or predict its log"),
    (("sqrt", "rsqrt"), "d = torch.sqrt(u + 1e-12)  # instead of torch.sqrt(u): finite slope at 0\n"
                        "# distances: torch.cdist(a, b), or mask the diagonal before the sqrt"),
    (("div", "true_divide", "floor_divide", "reciprocal", "remainder", "fmod"),
     "y = a / b.clamp_min(1e-8)  # instead of a / b (for counts: b.clamp(min=1))"),
    (("exp", "expm1"), "y = torch.exp(x.clamp(max=80.0))  # float32 exp overflows above ~88.7\n"
                       "# or stay in log space: torch.logsumexp, F.log_softmax, "
                       "F.poisson_nll_loss(log_input=True)"),
    (("pow", "float_power"), "y = x.clamp_min(1e-12) ** p  # a fractional or negative power needs x > 0"),
)
_MASKED_GUARDS = (
    (("scaled_dot_product_attention",),
     "# attn_mask (True = attend) leaves some queries no key: guard those rows\n"
     "attn_mask = attn_mask | ~attn_mask.any(dim=-1, keepdim=True)"),
    (("multi_head_attention_forward",),
     "# a sequence that is all padding leaves its queries no key to attend to:\n"
     "# unmask one position (e.g. the first) in rows that mask every key\n"
     "empty = key_padding_mask.all(dim=-1)\n"
     "key_padding_mask[empty, 0] = False  # or drop empty sequences from the batch"),
    (("softmax", "log_softmax"),
     "# a finite mask value: a fully masked row gets uniform weights, not 0/0\n"
     "scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)\n"
     "# or guard rows with no position left: keep = keep | ~keep.any(-1, True)"),
)
_GENERIC_GUARD = ("x = torch.log(x.clamp_min(1e-6))        # instead of torch.log(x)\n"
                  "x = torch.sqrt(x.clamp_min(0) + 1e-12)  # instead of torch.sqrt(x)\n"
                  "y = a / (b + 1e-8)                      # instead of a / b\n"
                  "loss = F.cross_entropy(logits, target)  # instead of log(softmax(...))")


def _nonfinite_fixes(recs: dict[R, Recommendation], findings: Sequence[Finding],
                     flagged: list[LayerStats], layers: Sequence[LayerStats]) -> None:
    """The fix follows the cause (checks/nonfinite.py): guard-nonfinite names the unsafe op and its
    module; an overflow is the end of a growth, so clip-gradients, lower-lr and the init fixes."""
    evidence = next(f.evidence for f in findings if f.kind == FindingKind.NONFINITE)
    origin, op, cause = evidence.get("origin"), str(evidence.get("op") or ""), evidence.get("cause")
    if "affected_layers" in evidence:  # one finding per origin, the affected layers in its evidence
        affected = set(str(evidence["affected_layers"]).split(", "))
        flagged = [x for x in layers if x.name in affected]
    magnitude = evidence.get("input_max_abs")
    where = "the loss" if origin == "(loss)" else f"'{origin}'"
    if evidence.get("after") and evidence.get("after") != origin and origin != "(loss)":
        where += f" (right after '{evidence.get('after')}')"
    if cause in ("overflow", "weights"):
        what = (f"`{op}` in {where} overflowed to {_produced(evidence.get('produced'))}: "
                f"its inputs had already reached {_number(magnitude)}") if cause == "overflow" else \
            f"the weights of {where} are already NaN/Inf"
        dense = [x for x in layers if x.role == "dense"]
        _clip_fix(recs, flagged or dense, layers, what)
        recs[R.LOWER_LR] = _rec(
            R.LOWER_LR, _names(flagged or dense),
            f"{what}; smaller steps keep the weights, and so the activations, from growing out of range",
            "optimizer = torch.optim.SGD(model.parameters(), lr=lr / 10)  # a learning rate 10x lower\n"
            "# or warmup:\n# torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, total_iters=1000)")
        if cause == "overflow":  # weights made NaN by steps say nothing about the init
            _init_fixes(recs, dense, layers)
        return
    if cause == "all-masked":
        masked = next((snippet for ops, snippet in _MASKED_GUARDS if op in ops), _MASKED_GUARDS[-1][1])
        recs[R.GUARD_NONFINITE] = _rec(
            R.GUARD_NONFINITE, (str(origin),),
            f"`{op}` in {where} gets {evidence.get('masked_rows')} of {evidence.get('rows')} rows with "
            "every position masked (-inf): the softmax of such a row is 0/0 = NaN. Not an overflow "
            f"(its finite inputs reach {_number(magnitude)}): mask with a large negative finite value, "
            "or guard fully masked rows", masked)
        return
    if origin is None:
        why = f"{len(flagged)} layers get NaN/Inf gradients; no single op could be named"
    elif evidence.get("direction") == "backward":
        why = (f"the backward of `{op}` in {where} is the first to return NaN/Inf gradients from a "
               "finite incoming gradient: " + ("check that custom backward for 0/0, division by zero "
                                               "and log/sqrt at 0" if op.endswith("Backward") else
                                               "its derivative is infinite at these inputs"))
    else:
        why = (f"`{op}` in {where} is the first op to output {_produced(evidence.get('produced'))} "
               f"from finite inputs (max |x| {_number(magnitude)})")
    code = next((snippet for ops, snippet in _GUARDS if op.rstrip("_") in ops
                 or op.startswith(ops[0])), _GENERIC_GUARD)
    named = origin is not None and origin != "(unknown)"
    recs[R.GUARD_NONFINITE] = _rec(R.GUARD_NONFINITE, (str(origin),) if named else _names(flagged),
                                   why, code)


def _divergence_fixes(recs: dict[R, Recommendation], divergence: Finding) -> None:
    """lower-lr with the rate derived from the steps before the loss rose (checks/divergence.py:
    their largest update/weight ratio brought to ~1e-3, within lr/1000..lr/10), and clip-gradients
    at the norm measured before any step."""
    ev = divergence.evidence
    lr, suggested, ratio = ev.get("lr"), ev.get("suggested_lr"), ev.get("max_update_to_weight")
    optimizer = str(ev.get("optimizer") or "sgd")
    name = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}.get(optimizer, optimizer)
    moved = (f"before the loss rose, a step changed {ev.get('max_update_layer')}'s weights by "
             f"{_number(ratio)} of their norm")
    basis = {
        "update-ratio": f"{moved}; lr {_number(lr)} x 1e-3 / {_number(ratio)} brings that near the healthy 1e-3",
        "floor": (f"{moved}, more than the weights themselves: lr x 1e-3 / {_number(ratio)} would be below "
                  "lr/1000, so the rate stops at lr/1000 (re-scan at it and read the update/w column: a "
                  "ratio still far above 1e-3 means gradients out of scale, which the init and clip fixes "
                  "address, not a rate)"),
    }.get(str(ev.get("suggested_lr_basis")), "a learning rate 10x lower (the step ratio asks for no more)"
          if isinstance(ratio, float) and math.isfinite(ratio) else "no step ratio to calibrate on, so 10x lower")
    recs[R.LOWER_LR] = _rec(
        R.LOWER_LR, (), f"the loss diverges at lr {_number(lr)}: {basis}",
        f"optimizer = torch.optim.{name}(model.parameters(), lr={suggested:g})\n"
        "# then warm up to it:\n"
        "# torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, total_iters=1000)")
    norm = ev.get("initial_grad_norm")
    if isinstance(norm, float) and math.isfinite(norm) and norm > 0:
        max_norm = _round_sig(norm)
        recs[R.CLIP_GRADIENTS] = _rec(
            R.CLIP_GRADIENTS, (),
            f"the total gradient norm before any step was {_number(norm)}; clipping at max_norm="
            f"{max_norm:g} bounds every step to that size however the loss grows (Pascanu et al. 2013)",
            f"loss.backward()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm:g})\n"
            "optimizer.step()")


def _produced(value: object) -> str:
    return {"nan": "NaN", "inf": "Inf"}.get(str(value), "NaN/Inf")


def _number(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)
