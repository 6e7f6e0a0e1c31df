"""The recommendation catalogue: stable ids, ranked from findings, each with a snippet to paste.

Every recommendation is justified by at least one finding and quotes the measured numbers; the
mapping from cause to fix follows DOMAIN.md ("Fixes, and when each is the right one").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .recurrence import effective_horizon, oriented_steps
from .report import Finding, FindingKind, Recommendation, RecommendationId
from .stats import LayerStats

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

SATURATING = {"Sigmoid", "Tanh", "Hardtanh", "Softsign", "Hardsigmoid"}
RECTIFIERS = {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU",
              "SiLU", "Mish", "Softplus", "Hardswish"}
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
        origin = next((f.evidence.get("origin") for f in findings
                       if f.kind == FindingKind.NONFINITE and f.evidence.get("origin")), None)
        names = (str(origin),) if origin else _names(kinds[FindingKind.NONFINITE])
        where = f"the output of '{origin}' is the first to turn NaN/Inf while the inputs were finite" \
            if origin else f"{len(kinds[FindingKind.NONFINITE])} layers get NaN/Inf gradients from finite inputs"
        recs[R.GUARD_NONFINITE] = _rec(
            R.GUARD_NONFINITE, names, where,
            "x = torch.log(x.clamp_min(1e-6))        # instead of torch.log(x)\n"
            "x = torch.sqrt(x.clamp_min(0) + 1e-12)  # instead of torch.sqrt(x)\n"
            "y = a / (b + 1e-8)                      # instead of a / b\n"
            "loss = F.cross_entropy(logits, target)  # instead of log(softmax(...))")

    exploding = kinds.get(FindingKind.EXPLODING, [])
    vanishing = kinds.get(FindingKind.VANISHING, [])
    if exploding:
        _explosion_fixes(recs, exploding, layers)
    if exploding or vanishing:
        _init_fixes(recs, exploding + vanishing, layers)
    if vanishing:
        _vanishing_fixes(recs, vanishing, layers, has_normalization)
    _through_time_fixes(recs, kinds.get(FindingKind.VANISHING_THROUGH_TIME, []),
                        kinds.get(FindingKind.EXPLODING_THROUGH_TIME, []), exploding, layers)
    if exploding and _dense_count(exploding) >= 3:
        if not has_normalization:
            _normalization_fix(recs, exploding, "grow")
        _skip_fix(recs, exploding, "grow")
    return [recs[rid] for rid in RANK if rid in recs]


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
            "# or Adam with warmup: torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, total_iters=1000)")


def _clip_fix(recs: dict[R, Recommendation], flagged: list[LayerStats], layers: Sequence[LayerStats],
              what: str) -> None:
    """clip-gradients for `flagged`, max_norm calibrated on the measured norms of the other layers."""
    healthy = [x.grad_norm for x in layers if x not in flagged and x.grad_norm is not None
               and x.grad_to_weight is not None and x.grad_to_weight <= 1.0]
    if healthy:
        max_norm = _round_sig(math.sqrt(sum(g * g for g in healthy)) * 2)
        basis = f"twice the total norm {max_norm / 2:.3g} of the layers that are not exploding"
    else:
        max_norm, basis = 1.0, "no layer is healthy to calibrate on, so the common default 1.0"
    recs[R.CLIP_GRADIENTS] = _rec(
        R.CLIP_GRADIENTS, _names(flagged), f"{what}; max_norm={max_norm:g} is {basis}",
        f"loss.backward()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm:g})\n"
        "optimizer.step()")


def _through_time_fixes(recs: dict[R, Recommendation], vanishing: list[LayerStats],
                        exploding: list[LayerStats], generic_exploding: list[LayerStats],
                        layers: Sequence[LayerStats]) -> None:
    """gated-rnn for a vanilla RNN vanishing through time; clip-gradients for one exploding through
    time (Pascanu et al. 2013: clipping bounds the step however large the product of Jacobians)."""
    recurrent = [x for x in vanishing if x.type_name in RECURRENT_VANILLA]
    if recurrent:
        x = recurrent[0]
        steps = oriented_steps(x.step_grad_rms, x.step_entry_grad_rms, x.bidirectional)
        horizon = effective_horizon(steps)
        reach = f", below 1e-3 of its value at the loss {horizon} steps back" if horizon else ""
        recs[R.GATED_RNN] = _rec(
            R.GATED_RNN, _names(recurrent),
            f"the gradient reaching the far end of {x.name}'s {len(steps)}-step sequence is "
            f"{_far_over_peak(steps):.2g} of its peak{reach}: the recurrence shrinks it at every step",
            "self.rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)\n"
            "# or nn.GRU(...): the cell state gives the gradient a path with factor ~1")
    if exploding:
        x = exploding[0]
        steps = oriented_steps(x.step_grad_rms, x.step_entry_grad_rms, x.bidirectional)
        growth = steps[0] / steps[-1] if steps and steps[-1] > 0 else math.inf
        _clip_fix(recs, [*generic_exploding, *exploding], layers,
                  f"the gradient grows {growth:.3g}x back through the {len(steps)} steps of {x.name}")


def _init_fixes(recs: dict[R, Recommendation], flagged: list[LayerStats],
                layers: Sequence[LayerStats]) -> None:
    """He/Xavier init where the weight std is far from the variance-preserving std."""
    he: list[tuple[LayerStats, float]] = []
    xavier: list[tuple[LayerStats, float]] = []
    for layer in flagged:
        if layer.weight_std is None or not layer.fan_in:
            continue
        follower = str(layer.activation.get("function", ""))
        if follower in RECTIFIERS:
            target, bucket = math.sqrt(2.0 / layer.fan_in), he
        else:
            target, bucket = math.sqrt(1.0 / layer.fan_in), xavier
        # Off by more than 2x in std: the signal scale changes >= 2x per layer, compounding.
        if not (0.5 < layer.weight_std / target < 2.0):
            bucket.append((layer, target))
    for rid, bucket, snippet in (
        (R.HE_INIT, he, "for m in model.modules():\n    if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
                        "        nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\")\n"
                        "        nn.init.zeros_(m.bias)"),
        (R.XAVIER_INIT, xavier, "for m in model.modules():\n    if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
                                "        nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(\"tanh\"))\n"
                                "        nn.init.zeros_(m.bias)"),
    ):
        if bucket:
            layer, target = bucket[0]
            recs[rid] = _rec(rid, _names([x for x, _ in bucket]),
                             f"weight std of {layer.name} is {layer.weight_std:.3g}, the "
                             f"variance-preserving std for fan_in {layer.fan_in} is {target:.3g}",
                             snippet)


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
            "nn.ReLU()  # or nn.GELU(), in place of nn.Sigmoid()/nn.Tanh() in hidden layers")
    if not has_normalization and _dense_count(vanishing) >= 3:
        _normalization_fix(recs, vanishing, "decay")
        _skip_fix(recs, vanishing, "decay")


def _skip_fix(recs: dict[R, Recommendation], flagged: list[LayerStats], trend: str) -> None:
    ratios = [x.grad_to_weight for x in flagged if x.grad_to_weight]
    extreme = (min(ratios) if trend == "decay" else max(ratios)) if ratios else 0.0
    recs[R.ADD_SKIP] = _rec(
        R.ADD_SKIP, _names(flagged),
        f"gradients {trend} through {_dense_count(flagged)} stacked layers (grad/weight reaches "
        f"{extreme:.3g}); a residual path y = x + F(x) gives the gradient a route with factor 1",
        "class Residual(nn.Module):\n    def __init__(self, block):\n        super().__init__()\n"
        "        self.block = block\n    def forward(self, x):\n        return x + self.block(x)")


def _normalization_fix(recs: dict[R, Recommendation], flagged: list[LayerStats], trend: str) -> None:
    convs = any("Conv" in x.type_name for x in flagged)
    sequence = any(x.type_name in {"RNN", "LSTM", "GRU", "MultiheadAttention"} for x in flagged)
    norm = "nn.LayerNorm(features)" if sequence else (
        "nn.BatchNorm2d(channels)" if convs else "nn.BatchNorm1d(features)")
    recs[R.ADD_NORMALIZATION] = _rec(
        R.ADD_NORMALIZATION, _names(flagged),
        f"gradients {trend} through {_dense_count(flagged)} stacked layers and the model has no "
        "normalization layer to re-centre the activation scale",
        f"nn.Sequential(layer, {norm}, activation)  # after each flagged layer")


def _far_over_peak(steps: Sequence[float]) -> float:
    finite = [s for s in steps if math.isfinite(s)]
    return steps[0] / max(finite) if finite and max(finite) > 0 else 0.0


def _dense_count(layers: list[LayerStats]) -> int:
    return sum(1 for x in layers if x.role == "dense")


def _names(layers: Sequence[LayerStats]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x.name for x in layers))


def _rec(rid: R, layers: tuple[str, ...], why: str, code: str) -> Recommendation:
    return Recommendation(rid, TITLES[rid], layers, why, code)


def _round_sig(value: float) -> float:
    if value <= 0 or not math.isfinite(value):
        return 1.0
    return float(f"{value:.1g}")
