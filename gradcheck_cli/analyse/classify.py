"""Pure: per-layer statistics + thresholds -> per-layer status and the model verdict.

Why these quantities (docs/findings/vanishing.md, "Mechanism"): backpropagation multiplies the local Jacobians of
the layers, so a vanishing or exploding network shows a gradient that changes geometrically with
depth, or one that is uniformly far too small or too large.

* Relative learning speed. grad_to_weight = |dL/dW| / |W| is, times the learning rate, the relative
  change SGD makes to a layer per step. A layer whose ratio is below `vanish_relative` (1e-3) of the
  fastest dense layer's learns a thousand times slower: it is vanishing. This is AUTOTRAINER's
  first/last gradient ratio rule (Zhang et al., ICSE 2021: < 1e-3 vanishing, > 70 exploding),
  applied to every layer against the best one, so it also holds when the last layer is special.
  Vanishing through depth shrinks the gradient towards the input, so the rule uses the largest
  ratio of the layer *and every dense layer before it* in execution order: a side branch whose
  gradient is small while the layers upstream of it learn well (an attention gate at init, whose
  softmax is nearly uniform) is a local dip, not a vanishing gradient.
* Absolute floors. The weight gradient dW = delta * h^T multiplies the backward signal by the forward
  activation, so in ReLU nets the first/last ratio stays near 1 at any init scale (forward and
  backward shrinkage cancel): then every layer's gradient is uniformly tiny. A layer whose
  grad_to_weight is below `vanish_grad_to_weight` (1e-7: even at lr = 1 the weights would move by
  less than 1e-7 per step, three decades under TheDeepChecker's lower bound of 1e-4 on the update
  ratio) is vanishing; healthy models measure >= 3e-5 here. SageMaker Debugger's rule (mean |g| <
  1e-7) is used only where no ratio exists (weights that are zero): per-element gradient size falls
  with layer size and loss scale, and a healthy mean-reduced autoencoder measured 9e-7.
* Absolute ceiling. grad_to_weight above `explode_grad_to_weight` (1e3) means that even a learning
  rate of 1e-4 changes the weights by more than 10% in one step, above TheDeepChecker's upper bound
  (log10 update ratio <= -1): the gradient has exploded. (Healthy models measure 1e-3..5 here; the
  margin absorbs sum-reduced losses.)
* Growth through a stack. In a stack of identical dense layers (same type and size, at least
  `min_stack` of them), a gradient arriving at a layer's output more than `explode_relative` (70,
  AUTOTRAINER) times the gradient at the stack's last layer is a geometric growth towards the input:
  exploding. Comparing like with like makes the rule independent of the loss scale and of heads of
  other shapes. It holds with normalization too: a deep plain BatchNorm stack explodes at init
  (Yang et al. 2019), while residual BatchNorm networks measure a growth below 5. Each layer's
  growth is read off the stack's least-squares geometric fit, not off the two noisy layers alone:
  in the 31-layer plain BatchNorm stack of the corpus the boundary layer measured 61..70.5 over
  seeds 0-4 from raw ratios and flipped; from the fit, 59..69 (and its neighbour 74..87).
* Signal collapse. In a plain stack whose every layer shrinks the signal (ReLU at weight variance
  1/fan_in: LeCun, or kaiming with the wrong gain) the activation scale decays towards the output
  and the output gradient towards the input, ~2^-1/2 per layer each; dW = delta h^T multiplies the
  two, so the weight gradients are uniformly small and neither the relative rule nor the floors
  see it. When both decays through a plain segment fall below `collapse` (1e-3, AUTOTRAINER; He et
  al. 2015: a 30-layer ReLU net at variance 1/fan_in does not learn), every layer of the segment
  is vanishing (depth.find_collapses says how it stays silent on pooling, strides, widths,
  normalization and residual adds).
* Borderline calls. Every rule records the number it decided on and its threshold
  (LayerVerdict.measured / threshold); a finding within a factor of 2 of its threshold carries
  that factor as `margin` in its evidence (checks/context.margin_evidence).
* Recurrent layers: the gradient reaching each time step of the layer's input (through the
  recurrence, not only each step's direct share), ordered from the far end of the sequence to the
  end nearest the loss (recurrence.oriented_steps: the first step for a unidirectional layer; for
  a bidirectional one, the end opposite to where the output gradient enters). A cell called once
  per step in a Python loop is measured at the state passed between its calls (cell_watch.py).
  Vanilla RNNs (nn.RNN, nn.RNNCell and user cells with no path around the layer) whose
  far end receives less than `vanish_relative` of the peak vanish through time; any recurrent
  layer whose far end receives more than `explode_relative` times the near end's explodes through
  time (Pascanu, Mikolov & Bengio 2013). These rules come first for recurrent layers (the
  recurrence is the cause, whatever the grad/weight ratio says), and mark the verdict
  `through_time`. Gated cells (LSTM/GRU) are not called vanishing: their forget gates decay the
  gradient at init (forget bias 0 gives a factor ~0.5 per step) and learn to keep it; they are the fix.

Normalization affine parameters and embedding tables are judged only by the absolute rules and
non-finite values: their grad_to_weight is not comparable with a weight matrix's (a LayerNorm's
scale is 1, an embedding's rows are touched sparsely), so they would make false alarms.

Designs that look broken at step 0 and are not (each measured on torchvision models at init, each
with a broken twin in tests/test_designed_inits.py that is still caught):
* A dense layer whose weights are all zero (ViT's head) passes exactly zero gradient to everything
  before it until its first update; layers before it with exactly zero gradient are not judged.
* The absolute ceiling applies to weight matrices and kernels only (role "dense"; size-1
  dimensions do not count, so a (C, 1, 1) layer scale is a vector): a vector initialised near zero
  (ConvNeXt's layer scale 1e-6, ReZero's 0) has a huge grad/weight by construction. Such a gate
  (typical element below `gate_rms`) also exempts the layers of the branch it scales (its
  submodules) from vanishing: their gradient is scaled by the gate, by design.
* The relative rule's reference is the fastest *sanely initialised* dense layer (weight std inside
  init_std's band): SqueezeNet's and RegNet's N(0, 0.01) classifiers learn fast relative to their
  tiny weights and would make every other layer look slow. When no layer is sanely initialised
  (the whole init is too small), every dense layer counts again. A layer's own ratio always
  counts as its upstream: in a stack whose hidden layers share a too-small init under a sanely
  initialised output layer, none of them is a yardstick, and without its own ratio a layer would
  have no upstream and the rule would switch itself off where the gradient decays (0.15x per
  layer through such a tanh stack).
* A query/key projection (its output feeds a softmax over scores, seen by mechanism in
  attention_scores.py) gets a small gradient while attention is near uniform at init (BERT/GPT
  std 0.02): it is healthy while the value path at its depth learns and no block's score layers
  are `vanish_relative` slower than another's (_attention_scores_at_init); a real decay through
  depth still shows there and is still flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradcheck_cli.analyse.depth import Collapse, collapse_of, describe_collapse, find_collapses
from gradcheck_cli.analyse.recurrence import near_end, oriented_steps
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.report.records import VERDICT_ORDER, Status

VANILLA_RECURRENT = {"RNN"}


@dataclass(frozen=True)
class LayerVerdict:
    status: Status
    reason: str
    """Which rule fired, in words with the measured numbers (empty when healthy)."""
    through_time: bool = False
    """The status comes from the gradient through time of a recurrent layer (the finding is
    vanishing-through-time / exploding-through-time instead of vanishing / exploding)."""
    measured: float | None = None
    threshold: float | None = None
    """The number the rule that fired decided on, and its threshold (the finding's `margin`)."""


def classify_layers(layers: list[LayerStats], thresholds: Thresholds) -> list[LayerVerdict]:
    """Layers must be in execution order (as compute_stats returns them)."""
    yardsticks = _reference_layers(layers)
    reference = _best_dense_ratio(layers, yardsticks)
    growth = _stack_growth(layers, thresholds.min_stack)
    zero_layer = _first_zero_weight_layer(layers)
    gates = _near_zero_gates(layers, thresholds.gate_rms)
    collapses = find_collapses(layers, thresholds)
    verdicts = []
    for layer, upstream in zip(layers, _upstream_best_ratios(layers, yardsticks)):
        ran_before_zero = zero_layer is not None and (layer.index < zero_layer.index or layer.output_rms is None)
        if ran_before_zero and layer.grad_norm == 0.0 and zero_layer is not None:
            # A zero-initialised layer downstream (ViT's head, a zero-init output) passes exactly
            # zero gradient at step 0 by design; the first update makes it non-zero. Zero here
            # says nothing about vanishing, so the layer is not judged.
            verdicts.append(LayerVerdict(Status.HEALTHY, f"no gradient passes the zero-initialised "
                                                         f"layer {zero_layer.name} at step 0"))
            continue
        verdict_ = _classify(layer, upstream, reference, growth.get(layer.name), thresholds)
        collapse = collapse_of(layer.name, collapses)
        if verdict_.status == Status.HEALTHY and verdict_.reason == "" and collapse is not None:
            verdict_ = _collapsed(collapse, thresholds)
        gate = next((g for g in gates if layer.name.startswith(g.name + ".")), None)
        if verdict_.status == Status.VANISHING and gate is not None:
            # A residual branch scaled by a near-zero parameter of its block (ConvNeXt/CaiT layer
            # scale 1e-6, ReZero alpha 0): the branch's small gradient is the design, the trunk
            # carries the signal, and the scale's own (large) gradient grows it in a few steps.
            verdict_ = LayerVerdict(Status.HEALTHY, f"its branch is scaled by the near-zero parameters of "
                                                    f"{gate.name} at init, by design")
        verdicts.append(verdict_)
    return _attention_scores_at_init(layers, verdicts, thresholds)


def _first_zero_weight_layer(layers: list[LayerStats]) -> LayerStats | None:
    """The first dense layer (execution order) whose weights are all exactly zero."""
    return next((layer for layer in layers if layer.role == "dense" and layer.weight_norm == 0.0
                 and layer.trainable), None)


def _near_zero_gates(layers: list[LayerStats], gate_rms: float) -> list[LayerStats]:
    """Vector parameters whose typical element is below `gate_rms` (Thresholds.gate_rms): gates
    initialised near zero (layer scale starts at 1e-6..1e-4, ReZero at 0), far below any affine
    scale (1.0) or bias in use."""
    return [layer for layer in layers if layer.role == "other" and layer.params > 0 and layer.trainable
            and layer.weight_norm / math.sqrt(layer.params) < gate_rms]




def _attention_scores_at_init(layers: list[LayerStats], verdicts: list[LayerVerdict],
                              t: Thresholds) -> list[LayerVerdict]:
    """A query/key projection is not vanishing at init unless the same decay is seen through depth.

    Its output feeds a softmax over scores (attention_scores.py, by mechanism). At BERT/GPT's init
    (std 0.02) the scores are near zero, attention is near uniform, and the softmax's Jacobian
    diag(p) - p p^T passes little gradient back to the scores: the projection learns 10-100x
    slower than the value projection at the same depth by design (measured on BERT-style
    encoders), in every block alike. A real decay through depth shows in two places, and either
    keeps the verdict: the score layers of some block get less than `vanish_relative` of the best
    score layer's grad/weight (the same decay across blocks), or the first dense layer after it
    that is not a score layer (the value path at that depth) is vanishing too. A projection whose
    weights are above the sane init band is not exempt: its softmax may be saturated, not uniform.
    """
    scores = [x.grad_to_weight for x in layers if x.attention_scores and x.grad_to_weight is not None]
    result = list(verdicts)
    for i, (layer, verdict_) in enumerate(zip(layers, verdicts)):
        gtw = layer.grad_to_weight
        if (verdict_.status != Status.VANISHING or verdict_.through_time or not layer.attention_scores
                or layer.role != "dense" or gtw is None or gtw < t.vanish_relative * max(scores)
                or _too_large_for_uniform_attention(layer)):
            continue
        value_path = next((k for k in range(i + 1, len(layers))
                           if _dense_measured(layers[k]) and not layers[k].attention_scores), None)
        if value_path is None or verdicts[value_path].status != Status.HEALTHY:
            continue
        result[i] = LayerVerdict(
            Status.HEALTHY, f"its output feeds a softmax over attention scores, near uniform at init: its "
                            f"grad/weight {gtw:.3g} is small by design, while {layers[value_path].name} at the "
                            f"same depth learns ({layers[value_path].grad_to_weight:.3g}) and no block's score "
                            f"layers are {1 / t.vanish_relative:g}x slower than another's")
    return result


def _too_large_for_uniform_attention(layer: LayerStats) -> bool:
    """Weights above init_std's band can make the scores large and the softmax saturate (one-hot
    attention, whose gradient to the scores is also small, and which does not recover by itself):
    the near-uniform design no longer explains a small gradient there."""
    target = layer.init_target
    return target is not None and layer.weight_std is not None and layer.weight_std > target.high


def verdict(statuses: list[Status]) -> Status:
    for status in VERDICT_ORDER:
        if status in statuses:
            return status
    return Status.HEALTHY


def _yardstick(layer: LayerStats) -> bool:
    """Whether a layer's learning speed may serve as the reference of the relative rule.

    A dense layer initialised deliberately below every sane std (SqueezeNet's and RegNet's
    N(0, 0.01) classifiers, GPT-style 0.02 heads) has a grad/weight inflated by its tiny weights:
    it is no measure of how fast the rest of the model should learn."""
    if not _dense_measured(layer):
        return False
    target = layer.init_target
    if target is not None and layer.weight_std:
        return layer.weight_std >= target.low
    return True


def _dense_measured(layer: LayerStats) -> bool:
    gtw = layer.grad_to_weight
    return layer.role == "dense" and gtw is not None and math.isfinite(gtw)


def _reference_layers(layers: list[LayerStats]) -> set[str]:
    """Names of the layers whose speed the relative rule compares against: the sanely initialised
    dense layers, or every dense layer when none is (a model whose whole init is too small)."""
    sane = {layer.name for layer in layers if _yardstick(layer)}
    return sane or {layer.name for layer in layers if _dense_measured(layer)}


def _best_dense_ratio(layers: list[LayerStats], reference: set[str]) -> float | None:
    ratios = [layer.grad_to_weight for layer in layers
              if layer.name in reference and layer.grad_to_weight is not None]
    return max(ratios) if ratios else None


def _upstream_best_ratios(layers: list[LayerStats], reference: set[str]) -> list[float | None]:
    """For each layer: the largest grad_to_weight among it and the yardstick layers before it.

    The layer's own ratio always counts: a stack whose hidden layers are all initialised too
    small (none of them a yardstick) would otherwise have no upstream at all below the first sane
    layer, and the relative rule would switch itself off exactly where the gradient decays."""
    best: float | None = None
    result = []
    for layer in layers:
        gtw = layer.grad_to_weight
        if layer.name in reference and gtw is not None:
            best = gtw if best is None else max(best, gtw)
        own = gtw if _dense_measured(layer) else None
        result.append(best if own is None else own if best is None else max(best, own))
    return result


def _stack_growth(layers: list[LayerStats], min_stack: int) -> dict[str, float]:
    """Output-gradient RMS of each layer of a stack over that of the stack's last layer, read off
    the stack's least-squares geometric fit (log RMS linear in the position): the growth is a
    property of the whole stack, and one layer's batch noise (the last layer's, which every ratio
    shares) would otherwise move the boundary between flagged and unflagged layers from one seed
    to the next."""
    stacks: dict[tuple[str, int], list[LayerStats]] = {}
    for layer in layers:
        og = layer.output_grad_rms
        if layer.role == "dense" and og is not None and math.isfinite(og) and og > 0:
            stacks.setdefault((layer.type_name, layer.params), []).append(layer)
    growth = {}
    for stack in stacks.values():
        if len(stack) >= min_stack:
            slope = _log_slope([math.log(layer.output_grad_rms or 0.0) for layer in stack])
            for position, layer in enumerate(stack):
                growth[layer.name] = math.exp(slope * (position - (len(stack) - 1)))
    return growth


def _log_slope(values: list[float]) -> float:
    """Least-squares slope of `values` against their positions 0, 1, 2, ..."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    spread = sum((x - mean_x) ** 2 for x in range(n))
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / spread


def _classify(layer: LayerStats, upstream: float | None, reference: float | None,
              growth: float | None, t: Thresholds) -> LayerVerdict:
    if not layer.trainable:
        return LayerVerdict(Status.FROZEN, "no parameter requires grad")
    if not layer.received:
        return LayerVerdict(Status.UNUSED, "requires grad but received no gradient")
    # Only NaN/Inf elements make a layer nonfinite: a finite gradient, however large (1e20 and
    # beyond), is measured with its real magnitude (norms.py) and judged by the exploding rules.
    if layer.nonfinite_grads or layer.grad_norm is None or math.isnan(layer.grad_norm):
        return LayerVerdict(Status.NONFINITE, f"{layer.nonfinite_grads} gradient elements are NaN/Inf")
    through_time = _through_time(layer, t)
    if through_time is not None:
        return through_time
    gtw = layer.grad_to_weight
    # Only weight matrices: a vector parameter deliberately initialised near zero (ConvNeXt's
    # layer scale 1e-6, ReZero's alpha) has a huge grad/weight by construction, not by explosion.
    if gtw is not None and gtw > t.explode_grad_to_weight and layer.role != "other":
        return LayerVerdict(Status.EXPLODING, f"grad/weight {gtw:.3g} > {t.explode_grad_to_weight:g}",
                            measured=gtw, threshold=t.explode_grad_to_weight)
    if growth is not None and growth > t.explode_relative:
        return LayerVerdict(Status.EXPLODING,
                            f"the gradient at its output is {growth:.3g}x that at the last layer of its "
                            f"stack of identical {layer.type_name} layers (> {t.explode_relative:g})",
                            measured=growth, threshold=t.explode_relative)
    if gtw is None and layer.grad_rms is not None and layer.grad_rms < t.vanish_grad_rms:
        return LayerVerdict(Status.VANISHING,
                            f"gradient RMS {layer.grad_rms:.3g} < {t.vanish_grad_rms:g}",
                            measured=layer.grad_rms, threshold=t.vanish_grad_rms)
    if gtw is not None and gtw < t.vanish_grad_to_weight:
        return LayerVerdict(Status.VANISHING, f"grad/weight {gtw:.3g} < {t.vanish_grad_to_weight:g}",
                            measured=gtw, threshold=t.vanish_grad_to_weight)
    if (layer.role == "dense" and gtw is not None and upstream is not None and reference
            and upstream < t.vanish_relative * reference):
        return LayerVerdict(Status.VANISHING,
                            f"grad/weight {gtw:.3g} is {gtw / reference:.2g} of the best layer's "
                            f"{reference:.3g} (< {t.vanish_relative:g}), and no layer before it "
                            "learns faster", measured=upstream / reference, threshold=t.vanish_relative)
    return LayerVerdict(Status.HEALTHY, "")


def _collapsed(collapse: Collapse, t: Thresholds) -> LayerVerdict:
    """Vanishing by signal collapse: the layer's weight gradient carries both decays of its plain
    segment (depth.find_collapses), which no ratio between layers can show."""
    return LayerVerdict(Status.VANISHING, f"the signal collapses: {describe_collapse(collapse)} "
                                          f"(both < {t.collapse:g})",
                        measured=collapse.worst_total, threshold=t.collapse)


def _through_time(layer: LayerStats, t: Thresholds) -> LayerVerdict | None:
    steps = oriented_steps(layer.step_grad_rms, layer.step_entry_grad_rms, layer.bidirectional)
    finite = [s for s in steps if math.isfinite(s)]
    if len(finite) < 2 or len(finite) != len(steps) or max(finite) <= 0:
        return None
    far, near, peak = steps[0], steps[-1], max(steps)
    ends = ("first", "last") if near_end(layer.step_entry_grad_rms, layer.bidirectional) == "last" \
        else ("last", "first")
    if near > 0 and far > t.explode_relative * near:
        return LayerVerdict(Status.EXPLODING,
                            f"the gradient at the {ends[0]} time step is {far / near:.3g}x that at the "
                            f"{ends[1]} (> {t.explode_relative:g}) over {len(steps)} steps", through_time=True,
                            measured=far / near, threshold=t.explode_relative)
    vanilla = layer.type_name in VANILLA_RECURRENT or layer.recurrent_cell == "vanilla"
    if vanilla and far < t.vanish_relative * peak:
        return LayerVerdict(Status.VANISHING,
                            f"the gradient at the {ends[0]} time step is {far / peak:.2g} of its peak "
                            f"(< {t.vanish_relative:g}) over {len(steps)} steps", through_time=True,
                            measured=far / peak, threshold=t.vanish_relative)
    return None
