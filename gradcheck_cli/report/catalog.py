"""The catalogue of finding kinds and recommendation ids, read from their docs pages.

One page per stable id, docs/findings/<kind>.md and docs/fixes/<id>.md (format: report/pages.py,
docs/README.md). `gradcheck explain ID`, `gradcheck list checks|fixes` and the SARIF rules read
them through this module, so the words live in the pages only. Which recommendations a finding
kind can justify is the ``fixes`` list of its page's front matter (RELATED below); whether a
kind has no check yet, or a recommendation no rule yet, is its ``measured: false`` or
``recommended: false``. No torch and no analyse/ here: the thresholds registry is added to
`explain` by cli/knowledge.py.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from gradcheck_cli.errors import UserError
from gradcheck_cli.report.pages import Page, load_folder
from gradcheck_cli.report.records import FindingKind, RecommendationId


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    """A short name, e.g. "Vanishing gradient" (the page's "# " title)."""
    summary: str
    """One sentence: what it means for training (the page's first paragraph)."""
    mechanism: str = ""
    """Why it happens (the page's "Mechanism")."""
    measured: str = ""
    """What gradcheck measures to decide it, and which evidence keys the report carries."""
    thresholds: str = ""
    """The thresholds, each with its source."""
    fix: str = ""
    """What to change (finding kinds) or the change itself (recommendations)."""
    references: tuple[str, ...] = ()


NOT_YET_MEASURED = "Not yet measured by this version: no check emits this finding."
NOT_YET_RECOMMENDED = "Not yet recommended by this version: no rule emits this recommendation."


def _entry(page: Page, not_yet: str) -> Entry:
    """The page as an Entry; `not_yet` (a sentence or "") opens "What gradcheck measures"."""
    measured = page.section("What gradcheck measures")
    return Entry(page.id, page.title, page.summary, page.section("Mechanism"),
                 f"{not_yet} {measured}" if not_yet else measured, page.section("Thresholds"),
                 page.section("Fix"), page.references)


def _load() -> tuple[dict[FindingKind, Entry], dict[RecommendationId, Entry],
                     dict[FindingKind, tuple[RecommendationId, ...]], frozenset[RecommendationId]]:
    findings, fixes = load_folder("findings"), load_folder("fixes")
    missing = sorted({k.value for k in FindingKind} - set(findings)
                     | {r.value for r in RecommendationId} - set(fixes))
    if missing:
        raise ValueError(f"no docs page for {', '.join(missing)}")
    finding_entries = {k: _entry(findings[k.value], "" if findings[k.value].meta("measured", True)
                                 else NOT_YET_MEASURED) for k in FindingKind}
    unemitted = frozenset(r for r in RecommendationId if not fixes[r.value].meta("recommended", True))
    fix_entries = {r: _entry(fixes[r.value], NOT_YET_RECOMMENDED if r in unemitted else "")
                   for r in RecommendationId}
    related = {}
    for kind in FindingKind:
        names = findings[kind.value].meta("fixes", ())
        if not isinstance(names, tuple):
            raise ValueError(f"docs/findings/{kind.value}.md: 'fixes' is not a [list]")
        related[kind] = tuple(RecommendationId(name) for name in names)
    return finding_entries, fix_entries, related, unemitted


FINDINGS, FIXES, RELATED, NOT_RECOMMENDED = _load()
"""FINDINGS and FIXES: the entry of every stable id, in enum order. RELATED: which
recommendations each finding kind can justify (the ``fixes`` of its page; `gradcheck explain`
derives both directions from it, and a test checks that fixes.recommend never emits a
recommendation for a finding kind not listed there). NOT_RECOMMENDED: the recommendation ids no
rule emits yet (``recommended: false``)."""


def related_fixes(kind: FindingKind) -> tuple[RecommendationId, ...]:
    return RELATED[kind]


def justifying_findings(rid: RecommendationId) -> tuple[FindingKind, ...]:
    """The finding kinds that can justify `rid`, in FindingKind order."""
    return tuple(kind for kind in FindingKind if rid in RELATED[kind])


def _normalise(entry_id: str) -> str:
    return entry_id.strip().lower().replace("_", "-")


def lookup(entry_id: str) -> Entry | None:
    """The entry for a finding kind or recommendation id (case-insensitive, _ or -), or None."""
    wanted = _normalise(entry_id)
    for entry in (*FINDINGS.values(), *FIXES.values()):
        if entry.id == wanted:
            return entry
    return None


def all_ids() -> list[str]:
    return [e.id for e in (*FINDINGS.values(), *FIXES.values())]


def unknown_id(entry_id: str) -> UserError:
    """The error for an id that names no page: a did-you-mean and where to find the ids."""
    close = suggest(entry_id)
    hint = f" (did you mean '{close}'?)" if close else ""
    return UserError(f"unknown finding kind or recommendation id '{entry_id}'{hint}; "
                     "see `gradcheck list checks` and `gradcheck list fixes` for the ids")


def get(entry_id: str) -> Entry:
    """The entry for `entry_id`; a UserError with a did-you-mean and where to find the ids."""
    entry = lookup(entry_id)
    if entry is None:
        raise unknown_id(entry_id)
    return entry


def suggest(entry_id: str) -> str | None:
    """The closest known id to a mistyped one, or None."""
    close = difflib.get_close_matches(_normalise(entry_id), all_ids(), n=1, cutoff=0.6)
    return close[0] if close else None
