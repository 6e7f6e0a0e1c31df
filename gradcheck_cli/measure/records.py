"""What a measurement session saw: plain numbers per layer and per session (no tensors, no torch).

The per-layer numbers are sufficient statistics (statistics.py): sums of squares, counts, maxima,
flags. `Measurements.merge` combines two sessions (batches 1-2 and batch 3, two ranks, a watch's
intervals) into the measurements of one session that saw both; the analysis (analyse/) reads the
derived values (grad_norms, output_rms, ...) as properties.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Any

from gradcheck_cli.measure.statistics import (
    ActivationCounts,
    SquareSum,
    StepSquares,
    merge_optional,
)


@dataclass(frozen=True)
class RecurrentWeight:
    """Spectrum of one recurrent weight matrix (or gate block), from the weights (recurrence.py)."""

    name: str
    """The parameter, e.g. "weight_hh_l0" or "weight_hh_l1_reverse"."""
    block: str
    """"all" (nn.RNN), "cell" (the tanh candidate block of an LSTM/GRU) or "gates" (the largest
    over its sigmoid gate blocks)."""
    spectral_radius: float | None
    """Largest |eigenvalue| (None for a non-square block, as with LSTM proj_size)."""
    largest_singular_value: float
    bound: float
    """1/gamma, gamma the bound on the activation's derivative (tanh, relu: 1; sigmoid: 4):
    below it the gradient must vanish through time (Pascanu et al. 2013)."""


LOG2_LOW = -127
"""Headroom.grad_log2_counts: the exponent of its first bin, which counts everything below 2^-126
too (fp32's smallest normal: the probe reads the exponents off float32, whose subnormals it does
not tell apart; far below what fp16, 2^-24, or any loss scale brings back)."""
LOG2_HIGH = 40
"""Headroom.grad_log2_counts: the exponent of its last bin (everything above is counted there)."""
UPDATE_RESOLUTION = 2.0 ** -8
"""A bf16 weight keeps 8 significant bits: an update below 2^-8 of the weight rounds away."""


@dataclass(frozen=True)
class Headroom:
    """Per layer, what mixed precision needs to know (measure/headroom.py; docs/architecture.md).

    Measured in every precision: from an fp32 probe it predicts what fp16/bf16 would do, from an
    fp16/bf16 probe it is what the autocast forward and backward actually produced. The gradients
    are UNSCALED: under a loss scale S (Measurements.loss_scale, final_loss_scale) the backward ran
    at S * g and the hooks divide by S before counting, so an element that the fp16 backward
    flushed to zero at that scale is counted in `grad_zero`, and one that survived has its true
    exponent. A candidate scale S' shifts the exponents by log2 S'.
    """

    activation_max_abs: float
    """Largest |x| of the layer's outputs on the first probe batch (like every field here: one
    batch gives the shares as well as three, at a third of the cost); Inf kept; an output tensor
    holding NaN is left out, and NaN when every one did."""
    grad_max_abs: float
    """Largest |g| of the (unscaled) gradient arriving at the layer's output (NaN as above)."""
    grad_log2_counts: tuple[int, ...]
    """Histogram of floor(log2 |g|) over the nonzero finite output-gradient elements (the activation
    gradients: what runs in fp16 in the backward) of the first probe batch: bin k counts exponent
    LOG2_LOW + k, for LOG2_HIGH - LOG2_LOW + 1 bins, the exponents outside clamped into the first
    and last bin."""
    grad_zero: int
    """Output-gradient elements of the first probe batch that were exactly zero."""
    grad_count: int
    """All output-gradient elements of the first probe batch (zero, nonzero finite and NaN/Inf)."""
    update_small: int | None = None
    """Weight elements whose update |Δw_i| is below UPDATE_RESOLUTION * |w_i| (lost in a bf16
    weight), among `update_count`."""
    update_count: int | None = None
    """Weight elements with a nonzero update in the optimizer's first step, predicted from the first
    probe batch's gradients at the initial weights (SGD: lr * |g_i|; Adam/AdamW: lr * |g_i| /
    (|g_i| + eps) plus AdamW's decay); None: no estimate (none of its weights got a gradient)."""

    def merge(self, other: Headroom) -> Headroom:
        """Both sessions' headroom: maxima of the maxima, counts added."""
        return Headroom(
            activation_max_abs=_known_max(self.activation_max_abs, other.activation_max_abs),
            grad_max_abs=_known_max(self.grad_max_abs, other.grad_max_abs),
            grad_log2_counts=tuple(a + b for a, b in zip(self.grad_log2_counts, other.grad_log2_counts)),
            grad_zero=self.grad_zero + other.grad_zero,
            grad_count=self.grad_count + other.grad_count,
            update_small=merge_optional(self.update_small, other.update_small, operator.add),
            update_count=merge_optional(self.update_count, other.update_count, operator.add),
        )


def _known_max(a: float, b: float) -> float:
    """The larger; NaN (no finite maximum was seen) only when both are."""
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)


@dataclass(frozen=True)
class LayerMeasurement:
    """Raw measurements of one layer (a module owning parameters directly), kept as sums that
    merge (`merge`); the properties derive what the analysis reads (grad_norms, output_rms, ...)."""

    name: str
    type_name: str
    params: int
    param_dim: int
    """Largest number of dimensions among the layer's parameters (2+ means a weight matrix)."""
    weight_shape: tuple[int, ...] | None
    """Shape of the layer's weight matrix or kernel: its largest parameter of 2+ dims (None without
    one). The analysis derives the fans from it (analyse/structure.py)."""
    weight_std: float | None
    """Standard deviation of that weight, to compare with the variance-preserving init. With --steps
    this, weight_sq, bias_mean, output and output_grad are those of the model as built: measured on
    the first probe batch, before the first optimizer step (probe.py, as_built)."""
    trainable: bool
    order: int
    """Execution order of the first call; -1 when the module never ran."""
    weight_sq: float
    """Sum of squares of the layer's own parameters (when measured: the end of the session)."""
    grad_sq: tuple[float, ...]
    """Squared L2 norm of the layer's own parameter gradients, one per batch (empty: no gradient)."""
    nonfinite_grads: int
    output: SquareSum | None = None
    """Sum of squares and count of the elements of the layer's outputs (None: no float output)."""
    output_grad: SquareSum | None = None
    """Sum of squares and count of the gradients reaching those outputs (None: none arrived)."""
    output_nonfinite: bool = False
    """An output held NaN/Inf (over all batches; with --steps too, unlike `output`)."""
    activation_counts: ActivationCounts | None = None
    """Per-unit counts of the activation fed by this layer, if any (activation_watch.py)."""
    io_features: tuple[int, int] | None = None
    """Last dim of the layer's input and of its output on its first call: tells a weight stored
    (in, out) and applied as x @ W from nn.Linear's (out, in) (analyse/structure.py)."""
    bias_mean: float | None = None
    """Mean of the layer's `bias` parameter (None without one): a large negative one kills ReLUs."""
    steps: StepSquares = StepSquares()
    """Recurrent layers: the gradient w.r.t. the input at each time step (first → last)."""
    entry_steps: StepSquares = StepSquares()
    """Recurrent layers: the gradient w.r.t. the output sequence at each time step, i.e.
    the share each step gets directly from the loss (tells a bidirectional layer's near end)."""
    bidirectional: bool = False
    recurrent_weights: tuple[RecurrentWeight, ...] = ()
    recurrent_cell: str = ""
    """A layer called once per step of a hand-written loop, its output fed back (cell_watch.py):
    "vanilla" (every path from one state to the next passes through the layer: nn.RNNCell,
    makemore's tanh cell), "gated" (a path goes around it: nn.GRUCell/LSTMCell, gates, a residual
    add) or "unknown"; "" when the layer is no such cell. Its steps are then the gradient
    reaching the state passed from each call to the next, first call to last."""
    update_to_weight: float | None = None
    """With --steps: the largest, over the optimizer steps, relative change of the layer's weights
    per step, |Δw| / |w| (lr * |g| / |w| for SGD; measured around optimizer.step() otherwise)."""
    attention_scores: bool = False
    """The layer's output feeds a softmax over scores (a query/key projection; attention_scores.py)."""
    headroom: Headroom | None = None
    """Mixed-precision headroom of the layer's outputs, output gradients and updates (None: not
    measured: a layer that never ran, or measurements built without the scan's probe)."""

    @property
    def weight_norm(self) -> float:
        return math.sqrt(self.weight_sq)

    @property
    def grad_norms(self) -> tuple[float, ...]:
        """L2 norm of the layer's own parameter gradients, one per batch (NaN/Inf kept as such)."""
        return tuple(math.sqrt(v) if math.isfinite(v) else v for v in self.grad_sq)

    @property
    def output_rms(self) -> float | None:
        return self.output.rms if self.output is not None else None

    @property
    def output_grad_rms(self) -> float | None:
        return self.output_grad.rms if self.output_grad is not None else None

    @property
    def activation(self) -> dict[str, Any]:
        """Statistics of the activation fed by this layer ({}: none; ActivationCounts.summary)."""
        return self.activation_counts.summary() if self.activation_counts is not None else {}

    @property
    def step_grad_rms(self) -> tuple[float, ...]:
        """Recurrent layers: RMS of the gradient w.r.t. the input at each time step (first → last)."""
        return self.steps.rms

    @property
    def step_entry_grad_rms(self) -> tuple[float, ...]:
        """Recurrent layers: RMS of the gradient w.r.t. the output sequence at each time step."""
        return self.entry_steps.rms

    def merge(self, other: LayerMeasurement, batches: int = 0, other_batches: int = 0) -> LayerMeasurement:
        """This layer measured over both sessions, `other` taken after this one (see
        Measurements.merge). `batches`, `other_batches`: each side's batch count, so that a side
        where the layer got no gradient contributes zeros for its batches."""
        grad_sq = (self.grad_sq or (0.0,) * batches) + (other.grad_sq or (0.0,) * other_batches)
        return replace(
            other,  # the weights as they are at the end of the later session
            trainable=self.trainable or other.trainable,
            order=self.order if self.order >= 0 else other.order,
            grad_sq=grad_sq if self.grad_sq or other.grad_sq else (),
            nonfinite_grads=self.nonfinite_grads + other.nonfinite_grads,
            output=merge_optional(self.output, other.output, SquareSum.merge),
            output_grad=merge_optional(self.output_grad, other.output_grad, SquareSum.merge),
            output_nonfinite=self.output_nonfinite or other.output_nonfinite,
            activation_counts=merge_optional(self.activation_counts, other.activation_counts,
                                             ActivationCounts.merge),
            io_features=self.io_features or other.io_features,
            steps=self.steps.merge(other.steps),
            entry_steps=self.entry_steps.merge(other.entry_steps),
            update_to_weight=merge_optional(self.update_to_weight, other.update_to_weight, max),
            attention_scores=self.attention_scores or other.attention_scores,
            recurrent_cell=self.recurrent_cell or other.recurrent_cell,
            headroom=merge_optional(self.headroom, other.headroom, Headroom.merge),
        )


@dataclass(frozen=True)
class NonfiniteOrigin:
    """The op where the first NaN/Inf appeared (nonfinite_origin.py), in plain numbers."""

    direction: str
    """forward: the op's output was the first non-finite value; backward: the forward was clean
    and the op's backward was the first to return a non-finite gradient from a finite one;
    weights: the layer's own weights were already non-finite (op "weights")."""
    module: str
    """Innermost module running the op; "(loss)" when it ran in the loss, outside the model."""
    module_type: str
    op: str
    """The torch function as the user called it: log, div, sqrt, exp, linear, ..."""
    after: str | None
    """The module that finished just before the op (usually the producer of its input)."""
    input_max_abs: float
    """Largest |value| among the op's inputs (forward) or of the gradient it received (backward)."""
    dtype: str
    dtype_max: float
    """Largest finite value of that dtype (3.4e38 for float32)."""
    produced: str
    """nan | inf | nan+inf"""
    masked_rows: int = 0
    """softmax / attention: rows of the op's input in which every position was masked (-inf, or
    masked out by an attention mask); > 0 makes the cause "all-masked"."""
    rows: int = 0
    """softmax / attention: all rows of that input (the denominator of masked_rows)."""
    raised: str | None = None
    """A later op or loss_fn that raised on the NaN/Inf, as "`binary_cross_entropy` in the loss
    raised RuntimeError: ..." (None: nothing raised)."""


@dataclass(frozen=True)
class StepPoint:
    """One optimizer step of a scan with --steps (measure/step_series.py), per layer in the order
    of Measurements.step_layers."""

    loss: float
    """The loss whose gradients the step used: for the first step after a probe batch, that
    batch's loss; for a later one, the loss on the same batch after the step before it."""
    grad_sq: tuple[float | None, ...]
    """Squared L2 norm of the layer's gradient that the step used (clipped under
    config.clip_grad_norm, as the step used it; None: the layer got no gradient)."""
    update_ratio: tuple[float, ...]
    """|Δw| / |w| of the step (NaN for zero weights), as LayerMeasurement.update_to_weight."""
    weight_sq: tuple[float, ...]
    """Sum of squares of the layer's trainable parameters after the step."""


@dataclass(frozen=True)
class Measurements:
    """Everything one measurement session (session.py) and the scan around it recorded."""

    layers: tuple[LayerMeasurement, ...]
    losses: tuple[float, ...]
    """The loss of each batch (NaN for a batch whose forward raised on a NaN/Inf)."""
    loss_kind: str = ""
    nonfinite_input: bool = False
    module_types: tuple[str, ...] = ()
    """Class names of every module below the root (the root's name is the user's own)."""
    residual_modules: tuple[str, ...] = ()
    """Modules whose input was added to a result computed inside them (y = x + F(x))."""
    step_losses: tuple[float, ...] = ()
    loss_trace: tuple[float, ...] = ()
    """Every loss in the order computed: a probe batch, the steps after it, the next batch, ..."""
    nonfinite_origin: NonfiniteOrigin | None = None
    """Where the first NaN/Inf was born, from a replay of the first failing batch (None: none seen,
    the batch itself held NaN/Inf, or the replay did not reproduce it)."""
    first_grad_norm: float | None = None
    """Total L2 norm of the trainable gradients on the first probe batch (before any step)."""
    first_step_update: tuple[str, float] | None = None
    """With --steps: the layer whose weights the first optimizer step (at the initial weights)
    changed most, and that update/weight ratio |Δw| / |w|."""
    step_rounds: tuple[tuple[float, ...], ...] = ()
    """With --steps: per probe batch that steps were taken on, the loss on that same batch before
    the steps and after each of them (steps + 1 values; same data, so only the steps differ)."""
    step_updates: tuple[tuple[str, float], ...] = ()
    """With --steps: per optimizer step, in order, the layer it changed most and that update/weight
    ratio |Δw| / |w| (NaN when no layer's ratio was finite)."""
    batches: int = 0
    """Batches whose gradients were measured (one per on_batch)."""
    precision: str = "fp32"
    """The probe's autocast dtype: fp32 (no autocast), bf16 or fp16 (measure/precision.py)."""
    loss_scale: float | None = None
    """The loss scale the probe started with (--loss-scale; 65536 for "dynamic"); None: unscaled."""
    scale_overflows: int = 0
    """Dynamic loss scale: the steps a GradScaler would have skipped (gradients Inf/NaN at the scale
    of the time, which was then halved); the probe re-ran those batches at the halved scale."""
    final_loss_scale: float | None = None
    """The loss scale after the last probe batch (the static scale, or where the dynamic one ended)."""
    step_layers: tuple[str, ...] = ()
    """With --steps: the layers of `step_points`, those owning a trainable parameter."""
    step_points: tuple[StepPoint, ...] = ()
    """With --steps: one per optimizer step the probe took, in the order taken, across batches."""

    def merge(self, other: Measurements) -> Measurements:
        """The measurements of one session that saw this one's batches, then `other`'s.

        Per layer (matched by name; a layer only one side has is kept as it is): per-batch gradient
        norms concatenate (this side's batches first), sums of squares and counts add, per-step
        recurrent mean squares average weighted by their calls, activation counts add (firing ORs),
        non-finite counts add, update/weight ratios take the maximum, and what describes the
        weights (weight_sq, weight_std, bias_mean, recurrent_weights) is the later side's, `other`.
        Losses, loss traces, step rounds, updates and step points concatenate; flags OR; residual modules unite;
        the first NaN/Inf origin, first gradient norm and first step update are this side's when it
        has one. Headroom: maxima of the maxima, counts added; scale overflows add, the initial
        loss scale is this side's and the final one `other`'s. Merging is associative, and a
        session of no batches is its identity.
        """
        theirs = {layer.name: layer for layer in other.layers}
        mine = {layer.name for layer in self.layers}
        layers = tuple(layer.merge(theirs[layer.name], self.batches, other.batches) if layer.name in theirs
                       else layer for layer in self.layers)
        return Measurements(
            layers=layers + tuple(layer for layer in other.layers if layer.name not in mine),
            losses=self.losses + other.losses,
            loss_kind=self.loss_kind or other.loss_kind,
            nonfinite_input=self.nonfinite_input or other.nonfinite_input,
            module_types=self.module_types or other.module_types,
            residual_modules=tuple(sorted(set(self.residual_modules) | set(other.residual_modules))),
            step_losses=self.step_losses + other.step_losses,
            loss_trace=self.loss_trace + other.loss_trace,
            nonfinite_origin=self.nonfinite_origin or other.nonfinite_origin,
            first_grad_norm=self.first_grad_norm if self.first_grad_norm is not None else other.first_grad_norm,
            first_step_update=self.first_step_update or other.first_step_update,
            step_rounds=self.step_rounds + other.step_rounds,
            step_updates=self.step_updates + other.step_updates,
            batches=self.batches + other.batches,
            precision=self.precision if self.precision != "fp32" else other.precision,
            loss_scale=self.loss_scale if self.loss_scale is not None else other.loss_scale,
            scale_overflows=self.scale_overflows + other.scale_overflows,
            final_loss_scale=other.final_loss_scale if other.final_loss_scale is not None
            else self.final_loss_scale,
            step_layers=self.step_layers or other.step_layers,
            step_points=self.step_points + other.step_points,
        )
