"""Appliers: (being written; see verify/applier.py for the interface)."""

from __future__ import annotations

from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.verify.applier import Applier

APPLIERS: dict[RecommendationId, Applier] = {}
