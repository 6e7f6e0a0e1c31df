"""The CI gate: which findings of a report fail it, and their stable fingerprints.

A report carries its own `fail_on` (report.config["fail_on"]), so a recipe whose scans gate
differently renders and exits correctly from the reports alone. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable

from gradcheck_cli.report.records import Finding, FindingKind, Recommendation, Report, ScanResult, Status
from gradcheck_cli.report.verification import VerificationStatus

UNVERIFIED = "unverified"
"""The --fail-on word for advice that is not proven: a recommendation whose --verify status is not
"verified" fails the gate (it needs --verify; the command line checks that)."""
FAIL_ON_WORDS = ("any", "none", UNVERIFIED)

# A status in --fail-on covers every finding kind of that family: "exploding" also fails an RNN
# that explodes through time, "nonfinite" also fails a batch that arrives with NaN.
STATUS_FAMILY: dict[str, tuple[FindingKind, ...]] = {
    Status.VANISHING.value: (FindingKind.VANISHING, FindingKind.VANISHING_THROUGH_TIME),
    Status.EXPLODING.value: (FindingKind.EXPLODING, FindingKind.EXPLODING_THROUGH_TIME),
    Status.NONFINITE.value: (FindingKind.NONFINITE, FindingKind.NONFINITE_INPUT),
}


def valid_fail_on_words() -> list[str]:
    return sorted({k.value for k in FindingKind} | set(STATUS_FAMILY) | set(FAIL_ON_WORDS))


def fingerprint(finding: Finding) -> str:
    """Stable identity of a finding across runs: kind and layer, never numbers."""
    return f"{finding.kind.value}:{finding.layer if finding.layer is not None else '-'}"


def matches(finding: Finding, fail_on: Iterable[str]) -> bool:
    words = set(fail_on)
    if "none" in words:
        return False
    if "any" in words or finding.kind.value in words:
        return True
    return any(finding.kind in STATUS_FAMILY.get(word, ()) for word in words)


def failing_findings(report: Report, known: frozenset[str] = frozenset()) -> list[Finding]:
    """Findings that match the report's fail_on and are not accepted by a baseline (`known`)."""
    fail_on = report.config.get("fail_on", ())
    return [f for f in report.findings if matches(f, fail_on) and fingerprint(f) not in known]


def unverified_recommendations(report: Report) -> list[Recommendation]:
    """With "unverified" in the report's fail_on (and not "none"): the recommendations that --verify
    did not prove (status other than "verified", or no verification at all). A baseline accepts
    findings, not advice, so it does not change this list."""
    fail_on = set(report.config.get("fail_on", ()))
    if UNVERIFIED not in fail_on or "none" in fail_on:
        return []
    return [rec for rec in report.recommendations
            if rec.verification is None or rec.verification.status is not VerificationStatus.VERIFIED]


def fails(report: Report, known: frozenset[str] = frozenset()) -> bool:
    """Whether the report fails its gate. A non-finite or exploding verdict always has a finding
    of its family, so the findings decide; with "unverified", so does unproven advice."""
    return bool(failing_findings(report, known)) or bool(unverified_recommendations(report))


def scan_exit_code(result: ScanResult, known: frozenset[str] = frozenset()) -> int:
    """One scan's exit code: 2 when it errored, 1 when it fails its gate, else 0."""
    if result.report is None:
        return 2
    return 1 if fails(result.report, known) else 0


def run_exit_code(results: Iterable[ScanResult], known: frozenset[str] = frozenset()) -> int:
    """The exit code of several scans: the worst of theirs (0 for none)."""
    return max((scan_exit_code(result, known) for result in results), default=0)
