"""The probe's results: plain numbers per layer and per scan (no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class LayerMeasurement:
    """Raw measurements of one layer (a module owning parameters directly)."""

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
    this, weight_norm, bias_mean, output_rms and output_grad_rms are those of the model as built:
    measured on the first probe batch, before the first optimizer step (probe._built_fields)."""
    trainable: bool
    order: int
    """Execution order of the first call; -1 when the module never ran."""
    weight_norm: float
    grad_norms: tuple[float, ...]
    """L2 norm of the layer's own parameter gradients, one per probe batch (empty: no gradient)."""
    nonfinite_grads: int
    output_rms: float | None
    output_grad_rms: float | None
    output_nonfinite: bool
    activation: dict[str, Any] = field(default_factory=dict)
    """Statistics of the activation fed by this layer, if any (activation_watch.py)."""
    io_features: tuple[int, int] | None = None
    """Last dim of the layer's input and of its output on its first call: tells a weight stored
    (in, out) and applied as x @ W from nn.Linear's (out, in) (analyse/structure.py)."""
    bias_mean: float | None = None
    """Mean of the layer's `bias` parameter (None without one): a large negative one kills ReLUs."""
    step_grad_rms: tuple[float, ...] = ()
    """Recurrent layers: RMS of the gradient w.r.t. the input at each time step (first → last)."""
    step_entry_grad_rms: tuple[float, ...] = ()
    """Recurrent layers: RMS of the gradient w.r.t. the output sequence at each time step, i.e.
    the share each step gets directly from the loss (tells a bidirectional layer's near end)."""
    bidirectional: bool = False
    recurrent_weights: tuple[RecurrentWeight, ...] = ()
    recurrent_cell: str = ""
    """A layer called once per step of a hand-written loop, its output fed back (cell_watch.py):
    "vanilla" (every path from one state to the next passes through the layer: nn.RNNCell,
    makemore's tanh cell), "gated" (a path goes around it: nn.GRUCell/LSTMCell, gates, a residual
    add) or "unknown"; "" when the layer is no such cell. Its step_grad_rms is then the gradient
    reaching the state passed from each call to the next, first call to last."""
    update_to_weight: float | None = None
    """With --steps: the largest, over the optimizer steps, relative change of the layer's weights
    per step, |Δw| / |w| (lr * |g| / |w| for SGD; measured around optimizer.step() otherwise)."""
    attention_scores: bool = False
    """The layer's output feeds a softmax over scores (a query/key projection; attention_scores.py)."""


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
class Measurements:
    layers: tuple[LayerMeasurement, ...]
    losses: tuple[float, ...]
    loss_kind: str
    nonfinite_input: bool
    first_nonfinite_module: str | None
    """First module in execution order whose output turned non-finite (None: forward was finite)."""
    module_types: tuple[str, ...]
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
