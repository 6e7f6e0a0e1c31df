"""Typed evidence: one frozen record per finding kind, built from composable parts.

A check (analyse/checks/) builds the record; a fix (analyse/fixes.py) reads its typed fields; the
report writes its dict form, which is the finding's "evidence" object of schema gradcheck/report@1
(docs/findings describes each key). The dict form keeps the JSON keys and their order exactly:
fields in declaration order, a part (a nested record) flattened in place, an optional field or
part left out when it is None, a flag left out when it is false, a bool written as 0/1.

Every record is also a read-only Mapping of its JSON keys, so renderers (and a finding read back
from a JSON report, whose evidence is a plain dict) treat evidence alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from gradcheck_cli.report.records import FindingKind, Number

_OMIT = "omit"


def optional() -> Any:
    """A field (or part) left out of the dict form when it is None."""
    return field(default=None, metadata={_OMIT: "none"})


def flag() -> Any:
    """A bool field written as 1 when true and left out when false."""
    return field(default=False, metadata={_OMIT: "false"})


@dataclass(frozen=True)
class Evidence(Mapping[str, Number]):
    """Base of every evidence record: its dict form, and Mapping access to it."""

    @cached_property
    def _json(self) -> dict[str, Number]:
        """The dict form (this record's own `as_dict`), built once: renderers read evidence key by
        key through the Mapping."""
        return self.as_dict()

    def as_dict(self) -> dict[str, Number]:
        """The JSON evidence object: fields in order, parts flattened (records override it where
        their JSON form is not their fields')."""
        out: dict[str, Number] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            omit = f.metadata.get(_OMIT)
            if (value is None and omit == "none") or (value is False and omit == "false"):
                continue
            if isinstance(value, Evidence):
                out.update(value.as_dict())
            elif isinstance(value, tuple) and all(isinstance(part, Evidence) for part in value):
                for part in value:
                    out.update(part.as_dict())
            else:
                out[f.name] = int(value) if isinstance(value, bool) else value
        return out

    def __getitem__(self, key: str) -> Number:
        return self._json[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)


# --- parts -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerNumbers(Evidence):
    """The numbers every per-layer gradient finding carries."""

    grad_norm: float | None
    weight_norm: float | None
    grad_to_weight: float | None
    grad_rms: float | None
    output_grad_rms: float | None = optional()
    activation_rms: float | None = optional()
    first_step_grad_rms: float | None = optional()
    last_step_grad_rms: float | None = optional()
    peak_step_grad_rms: float | None = optional()


@dataclass(frozen=True)
class StackRun(Evidence):
    """A geometric run of the gradient or activation scale through a stack (stack_* keys)."""

    stack_signal: str
    """gradient | activation"""
    stack_trend: str
    """decay | growth"""
    stack_gain_per_layer: float
    stack_total: float
    stack_layers: int
    stack_first: str
    stack_last: str
    stack_normalized: bool
    stack_residual: bool
    stack_plain: bool


@dataclass(frozen=True)
class CollapseRun(Evidence):
    """A plain segment whose activation and output-gradient scales both collapse (collapse_*)."""

    collapse_activation_gain: float
    collapse_activation_total: float
    collapse_gradient_gain: float
    collapse_gradient_total: float
    collapse_layers: int
    collapse_first: str
    collapse_last: str


@dataclass(frozen=True)
class Margin(Evidence):
    """How many times past its threshold the deciding number lies, when that is borderline."""

    margin: float


@dataclass(frozen=True)
class RecurrentWeightNumbers(Evidence):
    """The spectrum of one recurrent weight block; its keys carry the block's name."""

    key: str
    """weight_hh_l0, or weight_hh_l0[cell] for a block of a gated cell."""
    spectral_radius: float | None
    largest_singular_value: float
    bound: float

    def as_dict(self) -> dict[str, Number]:
        return {f"{self.key}.spectral_radius": self.spectral_radius,
                f"{self.key}.largest_singular_value": self.largest_singular_value,
                f"{self.key}.bound": self.bound}


@dataclass(frozen=True)
class MainRecurrentWeights(Evidence):
    """The blocks that play W_hh's role in Pascanu's bound, summarised."""

    max_largest_singular_value: float
    max_spectral_radius: float | None
    recurrent_bound: float


@dataclass(frozen=True)
class OriginFacts(Evidence):
    """Where the first NaN/Inf appeared (the replay) and its cause."""

    origin: str
    origin_type: str
    op: str
    direction: str
    cause: str
    """overflow | unsafe-op | backward | weights | all-masked"""
    after: str | None
    input_max_abs: float
    produced: str
    masked_rows: int | None = optional()
    rows: int | None = optional()
    raised: str | None = optional()


# --- one record per finding kind ---------------------------------------------------------------

@dataclass(frozen=True)
class StatusEvidence(Evidence):
    """vanishing / exploding on one layer."""

    layer: LayerNumbers
    stack: StackRun | None = optional()
    collapse: CollapseRun | None = optional()
    margin: Margin | None = optional()


@dataclass(frozen=True)
class OverflowGrowthEvidence(Evidence):
    """exploding for the whole model: a growth run that ends in an overflow."""

    stack: StackRun
    origin: str
    op: str
    direction: str
    input_max_abs: float
    dtype: str


@dataclass(frozen=True)
class ThroughTimeEvidence(Evidence):
    """vanishing-through-time / exploding-through-time."""

    layer: LayerNumbers
    steps: int
    bidirectional: bool
    near_end: str
    far_end_step_grad_rms: float
    near_end_step_grad_rms: float
    far_over_near: float | None
    per_step_factor: float | None
    zero_steps: int | None = optional()
    recurrent_cell: str | None = optional()
    cell_calls: int | None = optional()
    effective_horizon: int | str = "all"
    """Steps back from the near end until the gradient is below 1e-3 of its value there, or "all"."""
    weights: tuple[RecurrentWeightNumbers, ...] = ()
    main_weights: MainRecurrentWeights | None = optional()
    margin: Margin | None = optional()


@dataclass(frozen=True)
class SaturationEvidence(Evidence):
    """saturated-activation, on the layer that feeds the activation."""

    function: str
    activation_module: str
    saturated_units: float
    saturated_fraction: float
    units: int
    outputs_per_unit: int
    activation_rms: float | None = optional()
    weight_std: float | None = optional()
    target_std: float | None = optional()
    """The Xavier std, present when the feeding layer's weight std is above the accepted band."""


@dataclass(frozen=True)
class DeadReluEvidence(Evidence):
    """dead-relu, on the layer that feeds the activation."""

    function: str
    activation_module: str
    dead_fraction: float
    dead_units: int
    units: int
    outputs_per_unit: int
    activation_rms: float | None = optional()
    bias_mean: float | None = optional()
    negative_bias: bool = flag()
    """The negative bias alone keeps most units off (the cause he-init with a zero bias removes)."""


@dataclass(frozen=True)
class InitScaleEvidence(Evidence):
    """init-scale: the weight std against the variance-preserving one."""

    weight_std: float
    target_std: float
    scheme: str
    """he | xavier | lecun"""
    default_std: float
    band_low: float
    band_high: float
    std_ratio: float
    fan_in: int | None
    fan_out: int | None
    follower: str
    direction: str
    """too small | too large"""
    stack: StackRun | None = optional()
    collapse: CollapseRun | None = optional()
    margin: Margin | None = optional()
    activation_rms: float | None = optional()
    output_grad_rms: float | None = optional()


@dataclass(frozen=True)
class NonfiniteEvidence(Evidence):
    """nonfinite: one finding per origin, the affected layers in it."""

    nonfinite_grads: int
    params: int
    nonfinite_losses: int
    affected_layers: tuple[str, ...]
    affected_count: int
    origin: OriginFacts | None = None
    """None when no origin was found (then origin is null and cause "unknown")."""

    def as_dict(self) -> dict[str, Number]:
        head: dict[str, Number] = {
            "nonfinite_grads": self.nonfinite_grads, "params": self.params,
            "nonfinite_losses": self.nonfinite_losses, "affected_layers": ", ".join(self.affected_layers),
            "affected_count": self.affected_count}
        origin = self.origin.as_dict() if self.origin is not None else {"origin": None, "cause": "unknown"}
        return {**head, **origin}


@dataclass(frozen=True)
class DivergenceEvidence(Evidence):
    """divergence: the loss rises or turns NaN/Inf over the optimizer steps."""

    rule: str
    """nonfinite | same-batch-rise | steady-rise | sustained-rise"""
    losses: tuple[float, ...]
    first_loss: float
    last_loss: float
    rises: int
    first_nonfinite_at: int | None
    same_batch_rise: float
    rise_steps: int
    optimizer: str
    lr: float
    steps: int
    pre_divergence_steps: int
    max_update_to_weight: float | None
    max_update_layer: str | None
    suggested_lr: float
    suggested_lr_basis: str
    """update-ratio | floor | 10x-lower"""
    initial_grad_norm: float | None

    def as_dict(self) -> dict[str, Number]:
        out = super().as_dict()
        out["losses"] = ", ".join(f"{v:.4g}" for v in self.losses)  # the trace as text
        return out


@dataclass(frozen=True)
class NonfiniteInputEvidence(Evidence):
    """nonfinite-input: the probe batch or its target holds NaN/Inf."""

    nonfinite_input: bool = True


@dataclass(frozen=True)
class Fp16UnderflowEvidence(Evidence):
    """fp16-underflow: the layer's output gradients against fp16's smallest numbers, after scaling."""

    precision: str
    """The precision the probe ran in (fp16)."""
    loss_scale: float
    """The scale the fractions are computed at: the one the fp16 backward ran at (1: no scaling)."""
    below_normal_fraction: float
    """Share of the nonzero output-gradient elements below fp16's smallest normal 2^-14 after scaling."""
    below_subnormal_fraction: float
    """Share below fp16's smallest subnormal 2^-24 after scaling: flushed to zero."""
    grad_max_abs: float
    """Largest |output gradient| (unscaled)."""
    nonzero_elements: int
    zero_fraction: float
    """Share of exactly-zero elements among all counted (in an fp16 probe these include the ones
    the backward already flushed)."""
    rounding_error: float
    """RMS of fp16's rounding error over the gradient, relative to its RMS (analyse/fp16_range.py)."""
    margin: Margin | None = optional()


@dataclass(frozen=True)
class Fp16OverflowEvidence(Evidence):
    """fp16-overflow: a value past fp16's largest finite number, or a loss scale that overflowed."""

    cause: str
    """activation (a layer's output past the max) | gradient (scaled gradient past the max) |
    scaler (the dynamic scaler skipped steps and recovered: transient)"""
    dtype_max: float
    activation_max_abs: float | None = optional()
    scaled_grad_max_abs: float | None = optional()
    """Largest |output gradient| times the loss scale it ran at."""
    loss_scale: float | None = optional()
    final_loss_scale: float | None = optional()
    scale_overflows: int | None = optional()
    layers_past_max: int | None = optional()
    """How many layers' outputs are Inf (this one is the first in execution order)."""
    op: str | None = optional()
    """The autocast op the NaN/Inf replay found turning finite inputs into Inf in this layer."""
    transient: bool = flag()


@dataclass(frozen=True)
class Bf16StaleUpdateEvidence(Evidence):
    """bf16-stale-update: weight updates below bf16's resolution relative to the weight."""

    stale_fraction: float
    """update_small / update_count: weight elements whose update |dw| < 2^-8 |w|."""
    update_small: int
    update_count: int
    resolution: float
    """2^-8: the relative spacing of bf16 numbers (8 significant bits)."""
    optimizer: str
    lr: float
    """The optimizer and learning rate the updates are those of (--optimizer, --lr)."""
    margin: Margin | None = optional()


@dataclass(frozen=True)
class LossSpikeEvidence(Evidence):
    """loss-spike (training watch): a loss far above the trailing window of the losses before it."""

    step: int
    """The first step whose loss was a spike."""
    loss: float
    window_mean: float
    window_std: float
    """Mean and standard deviation of the `window` finite losses before that step."""
    sigmas: float
    """(loss - window_mean) / window_std at that step."""
    window: int
    spikes: int
    """Steps of the run whose loss was a spike (the first one is `step`)."""


@dataclass(frozen=True)
class GradSpikeEvidence(Evidence):
    """grad-spike (training watch): a layer's gradient norm far above its trailing window."""

    step: int
    """The first step whose gradient norm in this layer was a spike."""
    grad_norm: float
    window_geomean: float
    """The geometric mean of the layer's gradient norms over the `window` steps before."""
    sigmas: float
    """Standard deviations of the log norm above the window's mean log norm."""
    window: int
    spikes: int
    """Steps of the run whose gradient norm in this layer was a spike."""
    layers: int
    """Layers with at least one spike."""



@dataclass(frozen=True)
class GradTrendEvidence(Evidence):
    """grad-trend (training watch): a layer's log gradient norm on a line from `step` to `last_step`
    (docs/findings/grad-trend.md: every key)."""

    step: int
    last_step: int
    direction: str
    per_step: float
    total: float
    r2: float
    window: int
    layers: int


@dataclass(frozen=True)
class WeightGrowthEvidence(Evidence):
    """weight-growth (training watch): a layer's weights and gradients growing together from `step`
    to `last_step` (docs/findings/weight-growth.md: every key)."""

    step: int
    last_step: int
    weight_norm: float
    weight_total: float
    grad_total: float
    rate: float
    r2: float
    nonfinite_after: bool = flag()
    layers: int = 1


@dataclass(frozen=True)
class RankMismatchEvidence(Evidence):
    """rank-mismatch (training watch under DDP): a rank's gradients differ from rank 0's after
    the all-reduce (analyse/rank_mismatch.py)."""

    step: int
    """The first step where they differed."""
    rank: int
    """The rank that differed most from rank 0 at that step."""
    relative_difference: float
    """|n_r - n_0| / max(n_r, n_0) of the layer's norms n (1.0: one was NaN/Inf)."""
    seen_in: str
    """gradients (each step's, after the all-reduce) | weights (at a flush: the step is then the
    last of that block; an update changed on one rank after the backward)."""
    tolerance: float
    """rank_mismatch_relative: the difference replicas may have."""
    steps: int
    """Steps of the run where some rank's gradients differed."""


RECORDS: dict[FindingKind, tuple[type[Evidence], ...]] = {
    FindingKind.VANISHING: (StatusEvidence,),
    FindingKind.EXPLODING: (StatusEvidence, OverflowGrowthEvidence),
    FindingKind.NONFINITE: (NonfiniteEvidence,),
    FindingKind.VANISHING_THROUGH_TIME: (ThroughTimeEvidence,),
    FindingKind.EXPLODING_THROUGH_TIME: (ThroughTimeEvidence,),
    FindingKind.SATURATED_ACTIVATION: (SaturationEvidence,),
    FindingKind.DEAD_RELU: (DeadReluEvidence,),
    FindingKind.INIT_SCALE: (InitScaleEvidence,),
    FindingKind.DIVERGENCE: (DivergenceEvidence,),
    FindingKind.NONFINITE_INPUT: (NonfiniteInputEvidence,),
    FindingKind.FP16_UNDERFLOW: (Fp16UnderflowEvidence,),
    FindingKind.FP16_OVERFLOW: (Fp16OverflowEvidence,),
    FindingKind.BF16_STALE_UPDATE: (Bf16StaleUpdateEvidence,),
    FindingKind.LOSS_SPIKE: (LossSpikeEvidence,),
    FindingKind.GRAD_SPIKE: (GradSpikeEvidence,),
    FindingKind.GRAD_TREND: (GradTrendEvidence,),
    FindingKind.WEIGHT_GROWTH: (WeightGrowthEvidence,),
    FindingKind.RANK_MISMATCH: (RankMismatchEvidence,),
}
"""The evidence record(s) each finding kind's check builds (kinds without a check have none)."""
