"""The Report record and its JSON form (schema "gradcheck/report@1").

Records are frozen dataclasses of Python floats, ints and strings; no tensor reaches this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradcheck_cli.report.parameters import Parameters
    from gradcheck_cli.report.series import WatchSeries
    from gradcheck_cli.report.verification import CombinedVerification, Verification

SCHEMA = "gradcheck/report@1"


class Status(str, Enum):
    """Per-layer status, and (for the first four) the model verdict."""

    HEALTHY = "healthy"
    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "nonfinite"
    FROZEN = "frozen"
    UNUSED = "unused"


# The model verdict is the worst layer status in this order (DESIGN.md).
VERDICT_ORDER = (Status.NONFINITE, Status.EXPLODING, Status.VANISHING, Status.HEALTHY)


class FindingKind(str, Enum):
    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "nonfinite"
    VANISHING_THROUGH_TIME = "vanishing-through-time"
    EXPLODING_THROUGH_TIME = "exploding-through-time"
    SATURATED_ACTIVATION = "saturated-activation"
    DEAD_RELU = "dead-relu"
    INIT_SCALE = "init-scale"
    DIVERGENCE = "divergence"
    NONFINITE_INPUT = "nonfinite-input"
    FP16_UNDERFLOW = "fp16-underflow"
    FP16_OVERFLOW = "fp16-overflow"
    BF16_STALE_UPDATE = "bf16-stale-update"
    LOSS_SPIKE = "loss-spike"
    GRAD_SPIKE = "grad-spike"
    GRAD_TREND = "grad-trend"
    WEIGHT_GROWTH = "weight-growth"
    RANK_MISMATCH = "rank-mismatch"


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class RecommendationId(str, Enum):
    SWAP_ACTIVATION = "swap-activation"
    HE_INIT = "he-init"
    XAVIER_INIT = "xavier-init"
    ADD_NORMALIZATION = "add-normalization"
    ADD_SKIP = "add-skip"
    GATED_RNN = "gated-rnn"
    CLIP_GRADIENTS = "clip-gradients"
    LOWER_LR = "lower-lr"
    WEIGHT_DECAY = "weight-decay"
    GUARD_NONFINITE = "guard-nonfinite"
    CHECK_INPUTS = "check-inputs"
    LOSS_SCALING = "loss-scaling"
    USE_BF16 = "use-bf16"
    KEEP_FP32 = "keep-fp32"
    FP32_MASTER_WEIGHTS = "fp32-master-weights"
    SYNC_RANKS = "sync-ranks"


Number = float | int | str | None
"""Evidence values: numbers, or short strings (a module name, an activation type)."""


@dataclass(frozen=True)
class ThroughTime:
    """A recurrent layer's gradient through time: what reached each time step of its input."""

    step_grad_rms: tuple[float, ...]
    """The RMS gradient reaching each time step, ordered from the far end of the sequence to the
    end nearest the loss (analyse/recurrence.oriented_steps), mean over probe batches."""
    near_end: str
    """Which step of the input sequence is nearest the loss: "last" (unidirectional) or "first"."""
    horizon: int | None
    """The effective horizon: steps back from the near end until the gradient is below
    thresholds.horizon_fraction of its value there; None when it never falls that low."""

    def as_dict(self) -> dict[str, Any]:
        return {"step_grad_rms": [_num(v) for v in self.step_grad_rms], "near_end": self.near_end,
                "horizon": self.horizon}


@dataclass(frozen=True)
class LayerReport:
    name: str
    """Qualified name from named_modules(), e.g. "encoder.0"; "" never occurs (root is "(root)")."""
    type: str
    """Class name of the module, e.g. "Linear"."""
    index: int
    """Position in execution order (first forward call); layers never called come last."""
    params: int
    """Number of parameter elements owned directly (tied parameters counted once)."""
    status: Status
    grad_norm: float | None
    """L2 norm over the layer's own parameter gradients, mean over probe batches."""
    weight_norm: float
    grad_to_weight: float | None
    """grad_norm / weight_norm; None when the weights are (near) zero or no gradient arrived."""
    nonfinite_grads: int
    """Gradient elements that were NaN or Inf, summed over probe batches."""
    activation: dict[str, Number] = field(default_factory=dict)
    """Forward statistics of the layer's output: rms, output_grad_rms, dead/saturated fractions."""
    update_to_weight: float | None = None
    """With --steps: the largest relative weight change of one optimizer step, |Δw| / |w|
    (lr * |g| / |w| for SGD, measured around optimizer.step() for Adam/AdamW; healthy ~1e-3).
    None without --steps."""
    through_time: ThroughTime | None = None
    """A recurrent layer's profile through time (nn.RNN/LSTM/GRU, or a cell called in a loop);
    None for every other layer (no `through_time` key in its JSON)."""


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    layer: str | None
    """The layer concerned, or None for the whole model (e.g. divergence)."""
    severity: Severity
    message: str
    evidence: Mapping[str, Number]
    """The measured numbers: a typed record per kind (report/evidence.py) from a check, which reads
    as the mapping of its JSON keys; a plain dict when read back from a JSON report."""
    step: int | None = None
    """A watch report's finding: the optimizer step where it started, counted from 0 (step k is
    the (k+1)-th w.step call, as in its evidence and the series); None in a scan report (no
    `step` key in its JSON)."""
    rank: int | None = None
    """A watch report's finding: the rank it was seen on (0 without torch.distributed); None in a
    scan report (no `rank` key)."""


@dataclass(frozen=True)
class Recommendation:
    id: RecommendationId
    title: str
    layers: tuple[str, ...]
    why: str
    """The measured numbers that justify it."""
    code: str
    """A snippet the user can paste, rendered from `parameters` when it has them."""
    parameters: Parameters | None = None
    """What a program needs to apply it (report/parameters.py: one record per id); None for a
    recommendation written by hand. Not in the JSON document yet (see the README)."""
    verification: Verification | None = None
    """With --verify: before -> after of this recommendation applied alone (report/verification.py);
    in the JSON document as the recommendation's `verification` object, absent without --verify."""


@dataclass(frozen=True)
class LossInfo:
    kind: str
    """loss_fn | model_loss | cross_entropy | mse | mean_square"""
    values: tuple[float, ...]
    """The loss of each probe batch (and each step, with --steps)."""


@dataclass(frozen=True)
class Report:
    target: str
    tool_version: str
    config: dict[str, Any]
    loss: LossInfo
    verdict: Status
    layers: tuple[LayerReport, ...]
    findings: tuple[Finding, ...]
    recommendations: tuple[Recommendation, ...]
    verification: CombinedVerification | None = None
    """With --verify and a recommendation to verify: the verified ones applied together; in the
    JSON document as the top-level `verification` object, absent otherwise."""
    series: WatchSeries | None = None
    """A watch report: the bounded per-layer time series (report/series.py); in the JSON document
    as the top-level `series` object, absent in a scan report."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of schema gradcheck/report@1 (non-finite numbers become strings)."""
        document = {
            "schema": SCHEMA,
            "tool": {"name": "gradcheck", "version": self.tool_version},
            "target": self.target,
            "config": self.config,
            "loss": {"kind": self.loss.kind, "values": [_num(v) for v in self.loss.values]},
            "verdict": self.verdict.value,
            "layers": [_layer_dict(layer) for layer in self.layers],
            "findings": [_finding_dict(f) for f in self.findings],
            "recommendations": [_recommendation_dict(r) for r in self.recommendations],
        }
        if self.verification is not None:
            document["verification"] = self.verification.as_dict()
        if self.series is not None:
            document["series"] = self.series.as_dict()
        return document

    @classmethod
    def from_dict(cls, document: Any) -> Report:
        """The Report a saved gradcheck/report@1 document describes (report/load.py): the inverse
        of to_dict. Raises report.load.ReportFormatError when the document is not a report."""
        from gradcheck_cli.report.load import report_from_dict  # load.py imports this module

        return report_from_dict(document)


def _finding_dict(finding: Finding) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": finding.kind.value, "layer": finding.layer, "severity": finding.severity.value,
                            "message": finding.message,
                            "evidence": {k: _num(v) for k, v in finding.evidence.items()}}
    # Watch reports only: a scan report's findings keep exactly their five keys (README, "The watch report").
    if finding.step is not None:
        data["step"] = finding.step
    if finding.rank is not None:
        data["rank"] = finding.rank
    return data


def _recommendation_dict(rec: Recommendation) -> dict[str, Any]:
    data: dict[str, Any] = {"id": rec.id.value, "title": rec.title, "layers": list(rec.layers), "why": rec.why,
                            "code": rec.code}
    if rec.verification is not None:
        data["verification"] = rec.verification.as_dict()
    return data


def _layer_dict(layer: LayerReport) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": layer.name,
        "type": layer.type,
        "index": layer.index,
        "params": layer.params,
        "status": layer.status.value,
        "grad_norm": _num(layer.grad_norm),
        "weight_norm": _num(layer.weight_norm),
        "grad_to_weight": _num(layer.grad_to_weight),
        "nonfinite_grads": layer.nonfinite_grads,
        "activation": {k: _num(v) for k, v in layer.activation.items()},
        "update_to_weight": _num(layer.update_to_weight),
    }
    if layer.through_time is not None:
        data["through_time"] = layer.through_time.as_dict()
    return data


NONFINITE_STRINGS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
"""How report@1 writes the non-finite floats (_num), for reading them back (load.py, series.py)."""


def _num(value: Number) -> Number:
    """JSON has no NaN/Infinity: write them as the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return "NaN"
        return "Infinity" if value > 0 else "-Infinity"
    return value


@dataclass(frozen=True)
class ScanResult:
    """One scan of a run: its report, or the one-line error that stopped it (exit code 2).

    `gradcheck scan` produces one; `gradcheck run RECIPE` one per scan of the recipe, and a scan
    that fails does not stop the others.
    """

    name: str
    """The scan's name in the recipe, or the TARGET for `gradcheck scan`."""
    target: str
    report: Report | None
    error: str | None = None
