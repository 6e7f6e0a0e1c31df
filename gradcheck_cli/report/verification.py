"""What `--verify` measured: a recommendation applied to a copy of the model and probed again.

verify/ fills these records; the report carries one `Verification` per recommendation and one
`CombinedVerification` for the verified set applied together. In the JSON document each is an
additive `verification` object (schema gradcheck/report@1 stays; docs/verify.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from gradcheck_cli.report.records import _num


class VerificationStatus(str, Enum):
    VERIFIED = "verified"
    """The findings it answers are gone and no new problem appeared."""
    PARTIAL = "partial"
    """Better (a finding gone or its number moved towards healthy) but not all gone."""
    NO_EFFECT = "no effect"
    MADE_WORSE = "made worse"
    """The verdict got worse, or a new problem appeared."""
    NOT_APPLICABLE = "not applicable"
    """It could not be applied to the model (or is not verifiable in it: data causes); `summary` says why."""


HELPED = (VerificationStatus.VERIFIED, VerificationStatus.PARTIAL)
"""The statuses under which a recommendation is still presented as a fix."""


@dataclass(frozen=True)
class MetricChange:
    """One number before -> after: the one that justified a finding, or a layer's status."""

    metric: str
    """grad_to_weight | first_last_ratio | through_time_ratio | nonfinite_grads | update_to_weight |
    loss_trend | status | ... (the evidence key of the finding it comes from)"""
    layer: str | None
    """The layer it belongs to; None for the whole model."""
    before: float | int | str | None
    after: float | int | str | None

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "layer": self.layer, "before": _num(self.before), "after": _num(self.after)}


@dataclass(frozen=True)
class Verification:
    """One recommendation, applied alone to a copy and probed with the same batches, seed and options."""

    status: VerificationStatus
    summary: str
    """One line for people: "verdict exploding -> healthy; net.0 grad/weight 3.2e+04 -> 2.1e-03", or
    why it was not applicable."""
    verdict_before: str
    verdict_after: str | None
    """None when not applicable (nothing was probed)."""
    changes: tuple[MetricChange, ...] = ()
    resolved: tuple[str, ...] = ()
    """"kind@layer" of the findings it answers that are gone after it ("kind" for a model finding)."""
    remaining: tuple[str, ...] = ()
    """Those still there after it."""
    introduced: tuple[str, ...] = ()
    """Findings present after it that were not there before (a new problem)."""
    batches: int = 0
    steps: int = 0
    """The probe it was measured with (clip-gradients / lower-lr take optimizer steps)."""

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "summary": self.summary, "verdict_before": self.verdict_before,
                "verdict_after": self.verdict_after, "changes": [c.as_dict() for c in self.changes],
                "resolved": list(self.resolved), "remaining": list(self.remaining),
                "introduced": list(self.introduced), "batches": self.batches, "steps": self.steps}


@dataclass(frozen=True)
class CombinedVerification:
    """The verified recommendations applied together to one copy: the verdict they give."""

    applied: tuple[str, ...]
    """Their ids, in the order applied (the report's ranking)."""
    verdict_before: str
    verdict_after: str | None
    """None when nothing was verified (nothing to combine)."""
    summary: str
    batches: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"applied": list(self.applied), "verdict_before": self.verdict_before,
                "verdict_after": self.verdict_after, "summary": self.summary, "batches": self.batches}
