"""The thresholds registry: every number the analysis decides on, with its meaning and its source.

`Thresholds` holds the values one analysis runs with (defaults: the values below); every rule of
analyse/ reads its numbers from the instance passed down to it, so setting `thresholds.NAME` in a
recipe or in `[tool.gradcheck]` changes the decision (README, "Thresholds"). `REGISTRY` describes
each field: its one-line meaning, its unit, where the value comes from (a paper, a tool, or the
measurement that chose it) and the finding kinds it decides, so that `gradcheck list thresholds`
and `gradcheck explain KIND` can show them. Pure data: no torch (the CLI imports it for
`--help`-speed commands).

API: `Thresholds` (frozen dataclass), `REGISTRY: tuple[ThresholdEntry, ...]` (one entry per field,
in field order), `entry(name)`, `entries_for(kind) -> list[ThresholdEntry]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradcheck_cli.report.records import FindingKind


@dataclass(frozen=True)
class Thresholds:
    """The values the analysis decides on; see REGISTRY for each one's meaning and source."""

    # classify.py: per-layer status
    vanish_relative: float = 1e-3
    vanish_grad_rms: float = 1e-7
    vanish_grad_to_weight: float = 1e-7
    explode_grad_to_weight: float = 1e3
    explode_relative: float = 70.0
    min_stack: int = 4
    collapse: float = 1e-3
    gate_rms: float = 1e-3
    # stats.py and init_std.py: what counts as zero weights, and the sane init band
    zero_weight_rms: float = 1e-12
    init_band_margin: float = 2.0
    # depth.py: geometric runs of the signal scale
    run_min_layers: int = 4
    run_min_gain: float = 1.2
    run_min_total: float = 10.0
    # recurrence.py: the effective horizon through time
    horizon_fraction: float = 1e-3
    # checks/: borderline calls and per-check thresholds
    borderline: float = 2.0
    dead_majority: float = 0.5
    dead_significance: float = 0.01
    dead_bias_share: float = 0.5
    saturated_majority: float = 0.5
    init_gross: float = 10.0
    divergence_rises: int = 3
    divergence_min_rises: int = 2
    divergence_min_sustained: int = 2
    divergence_growth: float = 2.0
    divergence_same_batch_rise: float = 100.0
    healthy_update: float = 1e-3
    lr_floor: float = 1e-3
    lr_cut: float = 0.1
    # fixes.py: parameters of recommendations
    clip_healthy_ratio: float = 1.0
    clip_headroom: float = 2.0
    clip_default: float = 1.0
    swap_saturated_fraction: float = 0.5
    # checks/fp16_underflow.py, fp16_overflow.py, bf16_stale_update.py and fix_precision.py
    fp16_gradient_error: float = 2e-3
    bf16_stale_majority: float = 0.5
    loss_scale_margin: float = 8.0
    # timeline.py (training watch): loss spikes
    loss_spike_sigmas: float = 7.0
    loss_spike_window: int = 100
    grad_spike_sigmas: float = 7.0
    # grad_trend.py and weight_growth.py (training watch): trends over steps
    trend_window: int = 100
    trend_min_total: float = 10.0
    trend_min_r2: float = 0.8
    weight_growth_min_total: float = 2.0
    # fix_timeline.py: weight-decay's value
    weight_decay_min: float = 0.01
    weight_decay_max: float = 0.1
    # rank_mismatch.py (training watch under DDP): replicas that differ
    rank_mismatch_relative: float = 1e-5


DEFAULTS = Thresholds()


@dataclass(frozen=True)
class ThresholdEntry:
    name: str
    """The Thresholds field, set as `thresholds.NAME`."""
    default: float
    """The value the analysis uses unless set (an int for counts)."""
    meaning: str
    """What the value separates, in one line."""
    unit: str
    """ratio | factor | fraction | count | probability | RMS | grad/weight ... (what is compared)."""
    source: str
    """Where the value comes from: the paper, tool or measurement, or why it was chosen."""
    kinds: tuple[str, ...]
    """The finding kinds (report.records.FindingKind values) whose decision or fix it enters."""
    domain: str = "positive"
    """The values that make sense (DOMAINS): count, fraction, factor or positive."""


DOMAINS = {
    "count": "a positive integer",
    "fraction": "a number above 0 and at most 1",
    "factor": "a number >= 1",
    "positive": "a positive number",
}
"""What each domain admits, in the words of an error message."""

# Factors compared against a growth or a distance from a threshold: below 1 they would invert the rule.
_AT_LEAST_ONE = {"explode_relative", "init_band_margin", "run_min_gain", "run_min_total", "borderline",
                 "init_gross", "divergence_growth", "divergence_same_batch_rise", "clip_headroom",
                 "loss_scale_margin", "trend_min_total", "weight_growth_min_total"}
# Decays and shares of a whole: 1 or less by meaning.
_AT_MOST_ONE = {"vanish_relative", "collapse", "horizon_fraction", "lr_floor", "lr_cut"}


def _domain(name: str, unit: str, default: float) -> str:
    if isinstance(default, int):
        return "count"
    if unit in ("fraction", "probability") or name in _AT_MOST_ONE:
        return "fraction"
    return "factor" if name in _AT_LEAST_ONE else "positive"


K = FindingKind
_V, _E, _VT, _ET = K.VANISHING.value, K.EXPLODING.value, K.VANISHING_THROUGH_TIME.value, K.EXPLODING_THROUGH_TIME.value
_INIT, _DEAD, _SAT, _DIV = K.INIT_SCALE.value, K.DEAD_RELU.value, K.SATURATED_ACTIVATION.value, K.DIVERGENCE.value
_UNDER, _OVER, _STALE = K.FP16_UNDERFLOW.value, K.FP16_OVERFLOW.value, K.BF16_STALE_UPDATE.value
_SPIKE, _GSPIKE = K.LOSS_SPIKE.value, K.GRAD_SPIKE.value
_TREND, _WGROW = K.GRAD_TREND.value, K.WEIGHT_GROWTH.value
_RANKS = K.RANK_MISMATCH.value

# (name, meaning, unit, source, kinds), in the field order of Thresholds.
_TABLE: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("vanish_relative",
     "grad/weight (or the far end of a vanilla RNN) below this fraction of the best layer's: vanishing",
     "ratio",
     "AUTOTRAINER (Zhang et al., ICSE 2021): first/last gradient ratio < 1e-3 is vanishing",
     (_V, _VT)),
    ("vanish_grad_rms",
     "typical gradient element below this, for layers whose weights are zero: vanishing",
     "gradient RMS",
     "SageMaker Debugger's vanishing-gradient rule (mean |g| < 1e-7)",
     (_V,)),
    ("vanish_grad_to_weight",
     "grad/weight below this: vanishing (the weights move < 1e-7 per step even at lr = 1)",
     "grad/weight",
     "TheDeepChecker's lower bound 1e-4 on the update ratio, at lr = 1, three decades under it; "
     "healthy models measure >= 3e-5",
     (_V,)),
    ("explode_grad_to_weight",
     "grad/weight above this: exploding (even lr = 1e-4 changes the weights by > 10% per step)",
     "grad/weight",
     "TheDeepChecker's upper bound (log10 update ratio <= -1) at lr = 1e-4; healthy models measure "
     "1e-3..5, the margin absorbs sum-reduced losses",
     (_E,)),
    ("explode_relative",
     "output-gradient growth through a stack of identical layers, or through time, above this: exploding",
     "factor",
     "AUTOTRAINER (Zhang et al., ICSE 2021): first/last gradient ratio > 70 is exploding; "
     "Pascanu, Mikolov & Bengio 2013 for the recurrence",
     (_E, _ET)),
    ("min_stack",
     "identical dense layers needed before their gradient growth is called geometric",
     "count",
     "chosen: a product of fewer factors is no trend",
     (_E,)),
    ("collapse",
     "activation and output-gradient decay through a plain stack both below this: vanishing",
     "factor",
     "AUTOTRAINER's 1e-3; He et al. 2015: a 30-layer ReLU net at variance 1/fan_in (~4e-5 over its "
     "depth) does not learn, their 22-layer one (~7e-4) learns slowly",
     (_V, _INIT)),
    ("gate_rms",
     "a vector parameter whose typical element is below this is a near-zero gate; its branch may be small",
     "weight RMS",
     "chosen: layer scale starts at 1e-6..1e-4 (ConvNeXt, CaiT), ReZero at 0, far below any affine "
     "scale (1.0) or bias in use",
     (_V,)),
    ("zero_weight_rms",
     "weights whose RMS is below this are zero (zero-init heads, LoRA B): no grad/weight ratio",
     "weight RMS",
     "chosen: a gradient/weight ratio to zero weights is meaningless",
     (_V, _E, _INIT)),
    ("init_band_margin",
     "a weight std more than this factor outside [min, max] of the sane stds is mis-scaled",
     "factor",
     "chosen: a std off by 2x scales the signal 2x per layer (2^depth); every standard init (He, "
     "Xavier, LeCun, PyTorch's default) lies inside the band for square layers",
     (_INIT, _V, _SAT)),
    ("run_min_layers",
     "dense layers a geometric run (or a collapsing plain segment) needs at least",
     "count",
     "the classifier's min_stack: fewer steps are no trend",
     (_V, _E, _INIT)),
    ("run_min_gain",
     "per-layer factor (geometric mean) a run needs at least, in its direction",
     "factor",
     "measured: healthy stacks alternate around 1; a deep plain BatchNorm stack grows 1.24 per layer "
     "(Yang et al. 2019, measured in the corpus)",
     (_V, _E, _INIT)),
    ("run_min_total",
     "factor over the whole run a geometric run needs at least (one decade)",
     "factor",
     "chosen: one decade over four layers (1.8 per layer) is far outside a healthy stack's noise",
     (_V, _E, _INIT)),
    ("horizon_fraction",
     "the effective horizon ends where the per-step gradient falls below this fraction of the near end's",
     "fraction",
     "the same 1e-3 as the vanishing rules, after AUTOTRAINER",
     (_VT, _ET)),
    ("borderline",
     "a deciding number within this factor of its threshold is a borderline call (evidence `margin`)",
     "factor",
     "chosen (no measurement recorded): lets a user tell a call another batch could flip from a clear one",
     (_V, _E, _VT, _ET, _INIT)),
    ("dead_majority",
     "share of a ReLU's units that never fire above which the layer is reported",
     "fraction",
     "at PyTorch's default init a bias-dominated layer has about half its units dead by symmetry "
     "(the healthy corpus autoencoder measures 48%): only a majority counts",
     (_DEAD,)),
    ("dead_significance",
     "a dead majority counts only if its chance under 'each unit dead with probability 1/2' is below this",
     "probability",
     "a one-sided binomial test at 1%: RegNet's 8-unit squeeze-excitation has 5 of 8 off with chance 36%",
     (_DEAD,)),
    ("dead_bias_share",
     "a bias mean below -this x the pre-activation RMS is the visible cause of dead units",
     "multiple of RMS",
     "chosen: half the pre-activation RMS means the bias alone pushes most units below zero",
     (_DEAD,)),
    ("saturated_majority",
     "share of a sigmoid/tanh-like activation's units in the flat region above which it is reported",
     "fraction",
     "chosen: more than half of the units (no measurement recorded); saturated units pass almost no "
     "gradient (Glorot & Bengio 2010: saturated top sigmoid layers stall training)",
     (_SAT,)),
    ("init_gross",
     "a weight std more than this factor above the sane band is reported without a measured run",
     "factor",
     "chosen: 10x above the band (20x the larger sane std) is beyond what any activation absorbs",
     (_INIT,)),
    ("divergence_rises",
     "consecutive rises at the end of the loss trace that make a steady rise",
     "count",
     "chosen: one rise is ordinary batch-to-batch noise, three consecutive rises are not",
     (_DIV,)),
    ("divergence_min_rises",
     "a trace shorter than divergence_rises needs all its transitions to rise, but at least this many",
     "count",
     "chosen: one rise is not a trend",
     (_DIV,)),
    ("divergence_min_sustained",
     "losses after the start needed before 'all of them above divergence_growth x the start' counts",
     "count",
     "chosen (no reason recorded in the code)",
     (_DIV,)),
    ("divergence_growth",
     "a rising loss must end more than this factor above its start (last - first > (g - 1) |first|)",
     "factor",
     "chosen: the loss doubled; a rate near the stability limit oscillates (and still trains), healthy "
     "probe batches differ by tens of percent",
     (_DIV,)),
    ("divergence_same_batch_rise",
     "compounded same-batch loss rise over consecutive optimizer steps above this: divergence",
     "factor",
     "the descent lemma: below the stability limit 2/L a step lowers its batch's loss, so healthy "
     "same-batch factors are <= ~1 (dropout adds tens of percent, not 100x)",
     (_DIV,)),
    ("healthy_update",
     "update/weight ratio of a healthy step: lower-lr's rate brings the largest ratio to it",
     "ratio",
     "the CS231n notes: the update/weight ratio should be 'somewhere around 1e-3'",
     (_DIV, _E)),
    ("lr_floor",
     "the suggested learning rate is never below lr x this (below it one step moved a layer by its norm)",
     "factor",
     "chosen: a rate under lr / 1000 tames gradients out of scale, whose cause is the init or clipping",
     (_DIV,)),
    ("lr_cut",
     "the suggested learning rate is at most lr x this",
     "factor",
     "'a learning rate 10x lower': a smaller cut leaves a diverged run near its stability limit",
     (_DIV,)),
    ("clip_healthy_ratio",
     "layers with grad/weight at most this calibrate clip-gradients' max_norm",
     "grad/weight",
     "chosen (no reason recorded in the code)",
     (_E, _ET)),
    ("clip_headroom",
     "clip-gradients' max_norm is this factor times the total norm of the calibrating layers",
     "factor",
     "chosen (no reason recorded in the code): twice the norm of the layers that are not exploding",
     (_E, _ET)),
    ("clip_default",
     "clip-gradients' max_norm when no layer is healthy enough to calibrate on",
     "gradient norm",
     "the common default max_norm = 1.0",
     (_E, _ET)),
    ("swap_saturated_fraction",
     "a tanh-like layer whose share of outputs in the flat region exceeds this gets swap-activation "
     "when layers vanish",
     "fraction",
     "chosen: most of its outputs flat (otherwise tanh's derivative is ~1); sigmoid' <= 0.25 always counts",
     (_V,)),
    ("fp16_gradient_error",
     "RMS rounding error of a layer's output gradient carried in fp16 (after the loss scale), relative "
     "to the gradient's RMS, above which it underflows",
     "ratio",
     "bfloat16's unit roundoff 2^-9 ~ 2e-3 (8 significant bits, Kalamkar et al. 2019): bf16 training "
     "tolerates that much rounding of every gradient; fp16's normal range rounds 8x finer, its "
     "subnormals (below 2^-14, IEEE 754 binary16) and flushed elements coarser",
     (_UNDER,)),
    ("bf16_stale_majority",
     "share of a layer's weight elements whose update is below 2^-8 of the weight (lost in a bf16 "
     "weight) above which its updates are stale",
     "fraction",
     "bfloat16 keeps 8 significant bits (Kalamkar et al. 2019), so w + dw rounds back to w when "
     "|dw| < 2^-8 |w|; chosen: a majority of the layer's weights do not move",
     (_STALE,)),
    ("loss_scale_margin",
     "loss-scaling's initial scale keeps the largest measured gradient this factor under fp16's max 65504",
     "factor",
     "chosen: room for three doublings of the largest gradient beyond the probe's batches; GradScaler "
     "halves the scale on an overflow anyway (PyTorch AMP documentation)",
     (_UNDER, _OVER)),
    ("loss_spike_sigmas",
     "a step's loss this many standard deviations above the mean of the trailing window is a loss spike",
     "standard deviations",
     "OLMo 2 (Team OLMo 2024, arXiv:2501.00656, section 3.1): its spike score counts values at least "
     "seven standard deviations from a rolling average of the previous values",
     (_SPIKE,)),
    ("loss_spike_window",
     "finite losses of the steps before that form the trailing window; no spike is looked for until "
     "it is full (warm-up)",
     "count",
     "chosen: OLMo 2 rolls over the previous 1000 steps of runs of ~1e6 steps; 100 lets a run of a "
     "few hundred steps be watched, and still averages the noise of 100 batches",
     (_SPIKE, _GSPIKE)),
    ("grad_spike_sigmas",
     "a layer's log gradient norm this many standard deviations above the mean of its trailing window "
     "is a gradient-norm spike",
     "standard deviations",
     "OLMo 2 (Team OLMo 2024, arXiv:2501.00656, section 3.1) scores gradient-norm spikes with the "
     "same seven-standard-deviation rule as loss spikes",
     (_GSPIKE,)),
    ("trend_window",
     "steps of a layer's log gradient norm fitted by least squares to find a geometric trend",
     "count",
     "chosen: the loss_spike_window's 100 steps, long enough that batch noise (a factor of ~1.5 per "
     "step) cannot make a decade; a trend must last most of it",
     (_TREND,)),
    ("trend_min_total",
     "factor (one decade) the fitted line must change a layer's gradient norm by over the window",
     "factor",
     "a decade, as run_min_total over depth: a gradient 10x larger moves the weights 10x farther "
     "per step; on a quadratic, a rate above the stability limit 2/L grows the error by "
     "|1 - lr L| per step (LeCun et al. 1998, Efficient BackProp)",
     (_TREND, _WGROW)),
    ("trend_min_r2",
     "share of the log norms' variance the fitted line must explain for a trend (or a steady "
     "weight growth)",
     "fraction",
     "chosen from the mechanism: a single level shift (a step function) explains at most 3/4 of "
     "its variance, a geometric trend all of it but the noise: above 4/5 a jump is not a trend",
     (_TREND, _WGROW)),
    ("weight_growth_min_total",
     "factor a layer's weight norm must have grown by, steadily, for weight-growth",
     "factor",
     "chosen: the weights doubled; a gradient that grows with the weights (a Jacobian factor, "
     "Wortsman et al. 2023's logit growth) has then doubled through them alone",
     (_WGROW,)),
    ("weight_decay_min",
     "weight-decay's value is at least this",
     "weight decay",
     "PyTorch's AdamW default weight_decay=0.01, the low end of AdamW's usual 0.01-0.1 "
     "(Loshchilov & Hutter 2019)",
     (_WGROW,)),
    ("weight_decay_max",
     "weight-decay's value is at most this; a faster growth needs a lower learning rate too",
     "weight decay",
     "0.1, the high end of AdamW's usual range (GPT-3, Llama 2 and OLMo 2 train with 0.1)",
     (_WGROW,)),
    ("rank_mismatch_relative",
     "under DDP, a layer's gradient norm on a rank differing from rank 0's by more than this fraction "
     "(relative) after the all-reduce: the replicas drifted apart",
     "fraction",
     "PyTorch's DDP design notes: after the all-reduce the gradients on every replica are the same, so "
     "the same kernel gives the same norm; 1e-5 (~100 float32 roundings) only leaves room for a norm "
     "taken by another kernel on another device type",
     (_RANKS,)),
)

REGISTRY: tuple[ThresholdEntry, ...] = tuple(
    ThresholdEntry(name, getattr(DEFAULTS, name), meaning, unit, source, kinds,
                   _domain(name, unit, getattr(DEFAULTS, name)))
    for name, meaning, unit, source, kinds in _TABLE)
"""One entry per Thresholds field, in field order (tests/test_thresholds.py keeps them in step)."""


def entry(name: str) -> ThresholdEntry:
    """The registry entry of the Thresholds field `name` (KeyError when there is none)."""
    for item in REGISTRY:
        if item.name == name:
            return item
    raise KeyError(name)


def entries_for(kind: str) -> list[ThresholdEntry]:
    """The thresholds behind finding kind `kind` (a FindingKind value such as "dead-relu")."""
    return [item for item in REGISTRY if kind in item.kinds]


def quote(value: float) -> str:
    """A threshold as the docs and messages write it: 1e-3, 1e-12, 0.5, 70, 1e3 (shortest exact
    form; below 0.01 and from 1000 on in e-notation without zero padding)."""
    if value != 0 and not 0.01 <= abs(value) < 1000:
        mantissa, exponent = f"{value:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def check_value(name: str, value: float) -> float:
    """`value` for threshold `name` (an int for counts); ValueError saying what is expected."""
    domain = entry(name).domain
    ok = {"count": lambda: isinstance(value, int) and value >= 1,
          "fraction": lambda: 0 < value <= 1,
          "factor": lambda: value >= 1,
          "positive": lambda: value > 0}[domain]()
    if not ok:
        raise ValueError(f"expected {DOMAINS[domain]}")
    return value
