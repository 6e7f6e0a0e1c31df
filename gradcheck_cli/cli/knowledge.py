"""What `gradcheck explain` shows: the docs pages with the thresholds registry's values.

A finding kind's "Thresholds" is its page's text (docs/findings/<kind>.md: the rules and their
sources) followed by the registry's entries for that kind (analyse/thresholds.py: name, default
value, what it separates, source), so the values listed are the ones the analysis runs with by
default, read from the registry rather than copied. Recommendation pages are shown as they are.
This composition lives in cli/ because report/ may not import analyse/ (report/__init__.py).
Pure: no torch.
"""

from __future__ import annotations

from dataclasses import replace

from gradcheck_cli.analyse.thresholds import entries_for, quote
from gradcheck_cli.report import catalog
from gradcheck_cli.report.catalog import (
    FIXES,
    NOT_YET_MEASURED,
    NOT_YET_RECOMMENDED,
    Entry,
    all_ids,
    justifying_findings,
    related_fixes,
    suggest,
)
from gradcheck_cli.report.records import FindingKind

__all__ = ["FINDINGS", "FIXES", "NOT_YET_MEASURED", "NOT_YET_RECOMMENDED", "Entry", "all_ids", "get",
           "justifying_findings", "lookup", "measured_kinds", "related_fixes", "suggest"]

REGISTRY_INTRO = ("The values the analysis uses, from the thresholds registry (set one as "
                  "thresholds.NAME in a recipe or [tool.gradcheck]; gradcheck list thresholds shows "
                  "them all):")


def registry_text(kind: FindingKind) -> str:
    """The registry's thresholds behind `kind`, one "- name = value: meaning (source)" item each."""
    items = [f"- {e.name} = {quote(e.default)}: {e.meaning} (source: {e.source})"
             for e in entries_for(kind.value)]
    return "\n".join([REGISTRY_INTRO, *items]) if items else ""


def _with_registry(kind: FindingKind, entry: Entry) -> Entry:
    extra = registry_text(kind)
    return replace(entry, thresholds=f"{entry.thresholds}\n\n{extra}") if extra else entry


FINDINGS: dict[FindingKind, Entry] = {kind: _with_registry(kind, entry)
                                      for kind, entry in catalog.FINDINGS.items()}
"""Every finding kind's page entry, its thresholds completed from the registry."""


def lookup(entry_id: str) -> Entry | None:
    """The entry for a finding kind or recommendation id (case-insensitive, _ or -), or None."""
    entry = catalog.lookup(entry_id)
    if entry is None:
        return None
    kinds = {kind.value: kind for kind in FINDINGS}
    return FINDINGS[kinds[entry.id]] if entry.id in kinds else entry


def measured_kinds() -> tuple[frozenset[FindingKind], frozenset[FindingKind]]:
    """The finding kinds a scan's checks emit (analyse/checks CHECKS) and those the training
    watch's timeline emits (analyse/timeline.py TIMELINE_KINDS), so that `explain` and `list
    checks` say which kinds only the watch measures, and which nothing measures yet."""
    from gradcheck_cli.analyse.checks import CHECKS
    from gradcheck_cli.analyse.timeline import TIMELINE_KINDS

    return frozenset(CHECKS), frozenset(TIMELINE_KINDS)


def get(entry_id: str) -> Entry:
    """The entry for `entry_id`; a UserError with a did-you-mean and where to find the ids."""
    entry = lookup(entry_id)
    if entry is None:
        raise catalog.unknown_id(entry_id)
    return entry
