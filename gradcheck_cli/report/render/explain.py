"""Plain text for `gradcheck explain ID` and `gradcheck list checks|fixes`.

Pure: returns strings, never prints; cli/app.py writes them. The words come from the docs pages
(docs/findings/, docs/fixes/, read by report/catalog.py, with the thresholds registry added by
cli/knowledge.py); this module only lays them out (wrapping to the terminal width, indenting,
aligning the lists).
"""

from __future__ import annotations

import textwrap
from collections.abc import Collection

from gradcheck_cli.report.catalog import FINDINGS, FIXES, NOT_RECOMMENDED, Entry, justifying_findings, related_fixes
from gradcheck_cli.report.records import FindingKind, RecommendationId

INDENT = "  "
SECTIONS = (
    ("Mechanism", "mechanism"),
    ("What gradcheck measures", "measured"),
    ("Thresholds", "thresholds"),
    ("Fix", "fix"),
)
NOT_MEASURED_NOTE = "not yet measured by this version"
WATCH_ONLY_NOTE = "measured by the training watch, gradcheck_cli.watch, not by a scan"
NOT_RECOMMENDED_NOTE = "not yet recommended by this version"


def render_explain(entry: Entry, measured: Collection[FindingKind], watched: Collection[FindingKind] = (),
                   width: int = 88) -> str:
    """The full explanation of one finding kind or recommendation id.

    `measured` holds the finding kinds this version has a check for (checks.CHECKS) and `watched`
    those the training watch emits over time (analyse/timeline.py TIMELINE_KINDS), so the text
    says honestly when a kind is found only by the watch, or catalogued but not yet detected.
    """
    width = max(width, 40)
    kind = _finding_kind(entry.id)
    lines = [f"{entry.id}: {entry.title}"]
    lines += textwrap.wrap(entry.summary, width, break_on_hyphens=False)
    status = _status_note(entry, kind, measured, watched)
    if status:
        lines.append(f"({status})")
    for heading, attribute in SECTIONS:
        lines += ["", heading, *_body(getattr(entry, attribute), width)]
    if kind is not None:
        rows = [(r.value, FIXES[r].title + _note(r in NOT_RECOMMENDED, NOT_RECOMMENDED_NOTE))
                for r in related_fixes(kind)]
        lines += ["", "Recommendations it can justify", *_aligned(rows, INDENT)]
    else:
        rid = RecommendationId(entry.id)
        rows = [(k.value, FINDINGS[k].title + _note(_kind_note(k, measured, watched) == NOT_MEASURED_NOTE,
                                                    NOT_MEASURED_NOTE)) for k in justifying_findings(rid)]
        lines += ["", "Justified by the findings", *_aligned(rows, INDENT)]
    lines += ["", "References", *_body("\n".join(f"- {ref}" for ref in entry.references), width)]
    return "\n".join(lines) + "\n"


def render_check_list(measured: Collection[FindingKind], watched: Collection[FindingKind] = ()) -> str:
    """One line per finding kind: id, title, summary (and a note when only the training watch
    measures it, or nothing yet; `measured`, `watched` as in render_explain)."""
    rows = []
    for kind, entry in FINDINGS.items():
        note = _kind_note(kind, measured, watched)
        rows.append((entry.id, entry.title, entry.summary + (f" ({note})" if note else "")))
    return _table(rows)


def render_fix_list() -> str:
    """One line per recommendation id: id, title, summary (and a note when no rule emits it yet)."""
    rows = []
    for rid, entry in FIXES.items():
        note = f" ({NOT_RECOMMENDED_NOTE})" if rid in NOT_RECOMMENDED else ""
        rows.append((entry.id, entry.title, entry.summary + note))
    return _table(rows)


def _finding_kind(entry_id: str) -> FindingKind | None:
    try:
        return FindingKind(entry_id)
    except ValueError:
        return None


def _status_note(entry: Entry, kind: FindingKind | None, measured: Collection[FindingKind],
                 watched: Collection[FindingKind]) -> str:
    if kind is not None:
        return _kind_note(kind, measured, watched)
    return NOT_RECOMMENDED_NOTE if RecommendationId(entry.id) in NOT_RECOMMENDED else ""


def _kind_note(kind: FindingKind, measured: Collection[FindingKind], watched: Collection[FindingKind]) -> str:
    """"" when a scan measures it; else whether the training watch does, or nothing yet."""
    if kind in measured:
        return ""
    return WATCH_ONLY_NOTE if kind in watched else NOT_MEASURED_NOTE


def _body(text: str, width: int) -> list[str]:
    """Indent and wrap page text: paragraphs, "- " list items, 4-space code kept verbatim."""
    out: list[str] = []
    for i, paragraph in enumerate(text.split("\n\n")):
        if i:
            out.append("")
        raw = paragraph.splitlines()
        if raw and all(line.startswith("    ") for line in raw):
            out += [INDENT + line for line in raw]
            continue
        for item in _items(raw):
            if item.startswith("- "):
                out += textwrap.wrap(item[2:], width, initial_indent=INDENT + "- ",
                                     subsequent_indent=INDENT + "  ", break_on_hyphens=False)
            else:
                out += textwrap.wrap(item, width, initial_indent=INDENT, subsequent_indent=INDENT,
                                     break_on_hyphens=False)
    return out


def _items(lines: list[str]) -> list[str]:
    """Join a paragraph's lines into list items (a line starting "- " starts a new one) or prose."""
    items: list[str] = []
    for line in lines:
        if line.startswith("- ") or not items:
            items.append(line)
        else:
            items[-1] += " " + line.strip()
    return items


def _note(applies: bool, note: str) -> str:
    return f" ({note})" if applies else ""


def _aligned(rows: list[tuple[str, str]], indent: str) -> list[str]:
    if not rows:
        return [indent + "(none)"]
    column = max(len(left) for left, _ in rows)
    return [f"{indent}{left:<{column}}  {right}" for left, right in rows]


def _table(rows: list[tuple[str, str, str]]) -> str:
    """Aligned id and title columns; the summary runs on, one line per row (grep-friendly)."""
    id_width = max(len(r[0]) for r in rows)
    title_width = max(len(r[1]) for r in rows)
    return "".join(f"{i:<{id_width}}  {t:<{title_width}}  {s}\n" for i, t, s in rows)
