"""Re-rank the recommendations by what --verify measured (docs/verify.md).

Verified first, ordered by measured effect: answered findings resolved, then how far the verdict
moved, then how far (in decades) the justifying numbers moved towards healthy. Then partial (same
order), then not applicable, no effect and made worse. Ties keep the analysis's own order
(analyse/fixes.py `rank`), so the ranking is a pure function of the measurements. A recommendation
that did not help stays in the list with its status; it is never presented as a fix. Pure: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradcheck_cli.report.records import Recommendation
from gradcheck_cli.report.verification import VerificationStatus
from gradcheck_cli.verify.compare import Effect

S = VerificationStatus
GROUPS = (S.VERIFIED, S.PARTIAL, S.NOT_APPLICABLE, S.NO_EFFECT, S.MADE_WORSE)
_BY_EFFECT = (S.VERIFIED, S.PARTIAL)


def rerank(measured: Sequence[tuple[Recommendation, Effect]]) -> list[tuple[Recommendation, Effect]]:
    """`measured` in the analysis's order -> the order of GROUPS, by effect within verified/partial."""
    def order(item: tuple[int, tuple[Recommendation, Effect]]) -> tuple[int, float, float, float, int]:
        position, (_, effect) = item
        status = effect.verification.status
        if status not in _BY_EFFECT:
            return GROUPS.index(status), 0.0, 0.0, 0.0, position
        return GROUPS.index(status), -effect.resolved, -effect.verdict_gain, -effect.move, position

    return [item for _, item in sorted(enumerate(measured), key=order)]
