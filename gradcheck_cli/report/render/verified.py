"""What every format says about --verify: the words the table, Markdown, GitHub, SARIF and JUnit
renderers share, so a recommendation reads the same everywhere.

A report without verification (a scan without --verify) has no Verification on any recommendation
and no CombinedVerification: ``has_verification`` is False and the renderers write what they always
wrote. With one, the recommendations fall into three groups, in the report's (re-ranked) order:
fixes (status in HELPED: verified, partial), not verified (not applicable: nothing was measured)
and measured not to help (no effect, made worse: never presented as a fix), the order of
verify/rank.py, so a number in the table is the recommendation's place in the JSON list. How the
statuses are decided: docs/verify.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gradcheck_cli.report.records import Finding, Recommendation, Report
from gradcheck_cli.report.verification import HELPED, CombinedVerification, Verification, VerificationStatus

DID_NOT_HELP = "did not help when measured"
"""The heading of recommendations that were applied and measured, and did not help."""
NOT_VERIFIED = "could not be verified"
"""The heading of recommendations that could not be applied to the model (or are data causes)."""


def has_verification(report: Report) -> bool:
    """Whether --verify measured anything in this report (else every format is as without it)."""
    return report.verification is not None or any(r.verification is not None for r in report.recommendations)


@dataclass(frozen=True)
class RecommendationGroups:
    fixes: tuple[tuple[int, Recommendation], ...]
    """(rank, recommendation) of those that helped; rank counts from 1 over the whole list."""
    not_verified: tuple[tuple[int, Recommendation], ...]
    did_not_help: tuple[tuple[int, Recommendation], ...]


def group_recommendations(recommendations: Sequence[Recommendation]) -> RecommendationGroups:
    """The recommendations split by what their verification showed, each group in report order;
    ranks number the fixes first, then the others, so a number never points at a non-fix above a fix."""
    fixes = [r for r in recommendations if helped(r)]
    not_verified = [r for r in recommendations if not helped(r) and _not_applicable(r)]
    did_not_help = [r for r in recommendations if not helped(r) and not _not_applicable(r)]
    numbered = list(enumerate([*fixes, *not_verified, *did_not_help], start=1))
    first_other, first_worse = len(fixes), len(fixes) + len(not_verified)
    return RecommendationGroups(tuple(numbered[:first_other]), tuple(numbered[first_other:first_worse]),
                                tuple(numbered[first_worse:]))


def helped(rec: Recommendation) -> bool:
    """Verified or partial: still presented as a fix."""
    return rec.verification is not None and rec.verification.status in HELPED


def _not_applicable(rec: Recommendation) -> bool:
    # No verification at all (not measured) counts as not verified, never as "did not help".
    return rec.verification is None or rec.verification.status is VerificationStatus.NOT_APPLICABLE


def status_text(verification: Verification | None) -> str:
    """The status as a word: "verified", "partial", "no effect", "made worse", "not applicable"."""
    return verification.status.value if verification is not None else "not verified"


def verification_text(verification: Verification | None) -> str:
    """One line: ``verified: verdict exploding -> healthy; net.0 grad/weight 3.2e+04 -> 2.1e-03``."""
    if verification is None:
        return "not verified: no measurement for this recommendation"
    summary = verification.summary.strip() or f"verdict {verification.verdict_before} -> {verification.verdict_after}"
    return f"{verification.status.value}: {summary}"


def probe_text(report: Report) -> str:
    """``verified on the same 3 probe batches`` (the batches the scan itself used)."""
    measured = [r.verification.batches for r in report.recommendations
                if r.verification is not None and r.verification.batches]
    batches = measured[0] if measured else report.config.get("batches", "?")
    plural = "batch" if batches == 1 else "batches"
    return f"verified on the same {batches} probe {plural}"


def combined_text(combined: CombinedVerification) -> str:
    """``applied together: he-init + clip-gradients -> verdict healthy``, or why nothing was."""
    if not combined.applied or combined.verdict_after is None:
        reason = combined.summary.strip() or "no recommendation was verified"
        return f"applied together: none ({reason})"
    return f"applied together: {' + '.join(combined.applied)} -> verdict {combined.verdict_after}"


def finding_key(finding: Finding) -> str:
    """How a Verification names a finding: "kind@layer", "kind" for a model finding."""
    return f"{finding.kind.value}@{finding.layer}" if finding.layer is not None else finding.kind.value


def answering(finding: Finding, recommendations: Sequence[Recommendation]) -> list[Recommendation]:
    """The verified recommendations that answer ``finding``: it is among the findings their
    verification resolved or still found (Verification.resolved / remaining)."""
    mark = finding_key(finding)
    return [rec for rec in recommendations if rec.verification is not None
            and (mark in rec.verification.resolved or mark in rec.verification.remaining)]


def fix_note(rec: Recommendation) -> str:
    """One line naming the recommendation and what its verification measured, e.g.
    ``[he-init] verified: verdict exploding -> healthy; ...`` or ``[lower-lr] did not help: no effect: ...``."""
    note = verification_text(rec.verification)
    if not helped(rec) and not _not_applicable(rec):
        note = f"did not help: {note}"
    return f"[{rec.id.value}] {note}"
