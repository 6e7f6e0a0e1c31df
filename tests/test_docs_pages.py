"""The docs pages (docs/findings, docs/fixes): one per stable id, in the page format, with relations
that name real ids, shown by `gradcheck explain` with the thresholds registry, and shipped in the
wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli.analyse.thresholds import entries_for, quote
from gradcheck_cli.cli import knowledge
from gradcheck_cli.cli.app import app
from gradcheck_cli.report import catalog
from gradcheck_cli.report.pages import SECTIONS, PageError, load_folder, pages_root, parse_page
from gradcheck_cli.report.records import FindingKind, RecommendationId

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FRONT_KEYS = {"findings": {"id", "fixes", "measured"}, "fixes": {"id", "recommended"}}

PAGE = """---
id: demo
fixes: [he-init, add-skip]
---

# Demo title

A summary that wraps
onto a second line.

## Mechanism

First paragraph
continued.

- item one
  continued
- item two with \\<name>.bound

## What gradcheck measures

Measured.

## Thresholds

- a rule

## Fix

```python
# a comment, not a title
x = 1
```

## References

- Someone 2020, A paper
  (venue)
- Another 2021
"""


def test_every_stable_id_has_a_page_and_nothing_else_does() -> None:
    assert set(load_folder("findings")) == {k.value for k in FindingKind}
    assert set(load_folder("fixes")) == {r.value for r in RecommendationId}


@pytest.mark.parametrize("folder", ["findings", "fixes"])
def test_every_page_has_every_section_and_known_front_matter(folder: str) -> None:
    for page_id, page in load_folder(folder).items():
        assert page.title and page.summary, page_id
        assert [h for h, _ in page.sections] == list(SECTIONS[:-1]), page_id
        assert all(text.strip() for _, text in page.sections), page_id
        assert page.references, page_id
        assert {key for key, _ in page.front} <= FRONT_KEYS[folder], page_id


def test_every_relation_names_a_recommendation_and_every_recommendation_is_justified() -> None:
    named: set[str] = set()
    for page_id, page in load_folder("findings").items():
        fixes = page.meta("fixes", ())
        assert isinstance(fixes, tuple) and fixes, page_id
        assert set(fixes) <= {r.value for r in RecommendationId}, page_id
        assert len(set(fixes)) == len(fixes), page_id
        named |= set(fixes)
    assert named == {r.value for r in RecommendationId}


def test_the_not_yet_flags_are_front_matter_and_match_the_code() -> None:
    from gradcheck_cli.analyse.checks import CHECKS
    from gradcheck_cli.analyse.timeline import TIMELINE_KINDS

    findings, fixes = load_folder("findings"), load_folder("fixes")
    for kind in FindingKind:  # measured by a scan's check or by the training watch's timeline
        assert findings[kind.value].meta("measured", True) is (kind in CHECKS or kind in TIMELINE_KINDS), kind.value
    unemitted = {r for r in RecommendationId if fixes[r.value].meta("recommended", True) is False}
    assert catalog.NOT_RECOMMENDED == unemitted
    listed = CliRunner().invoke(app, ["list", "fixes"]).stdout.splitlines()
    noted = {RecommendationId(line.split()[0]) for line in listed if "not yet recommended" in line}
    assert noted == unemitted


def test_the_index_links_every_page_with_its_title() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for folder, entries in (("findings", catalog.FINDINGS), ("fixes", catalog.FIXES)):
        for entry in entries.values():
            assert f"| [{entry.id}]({folder}/{entry.id}.md) | {entry.title} |" in index, entry.id


def test_no_page_cites_a_file_outside_the_repository() -> None:
    for path in sorted(DOCS.glob("f*/*.md")):
        assert "DOMAIN" not in path.read_text(encoding="utf-8"), path.name


def test_explain_lists_the_registry_thresholds_of_a_finding_kind() -> None:
    runner = CliRunner()
    for kind in FindingKind:
        out = runner.invoke(app, ["explain", kind.value], terminal_width=200).stdout
        section = out.split("\nThresholds\n")[1].split("\nFix\n")[0]
        for item in entries_for(kind.value):
            assert re.search(rf"- {item.name} = {re.escape(quote(item.default))}: ", section), \
                (kind.value, item.name)
    assert knowledge.REGISTRY_INTRO not in runner.invoke(app, ["explain", "he-init"]).stdout


def test_report_reads_the_pages_without_the_analysis() -> None:
    """report/ may not import analyse/ (report/__init__.py): the registry is added in cli/."""
    code = ("import sys\nimport gradcheck_cli.report.catalog, gradcheck_cli.report.render.sarif\n"
            "print(sorted(m for m in sys.modules if m.startswith(('gradcheck_cli.analyse', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the page format

def test_a_page_reads_back_in_the_catalogue_text_conventions() -> None:
    page = parse_page(PAGE, "demo.md")
    assert (page.id, page.title, page.summary) == ("demo", "Demo title", "A summary that wraps onto a second line.")
    assert page.meta("fixes", ()) == ("he-init", "add-skip")
    assert page.section("Mechanism") == ("First paragraph continued.\n\n"
                                         "- item one continued\n- item two with <name>.bound")
    assert page.section("Fix") == "    # a comment, not a title\n    x = 1"
    assert page.references == ("Someone 2020, A paper (venue)", "Another 2021")


@pytest.mark.parametrize(("broken", "message"), [
    (PAGE.replace("---\nid: demo\n", "---\n"), "must start with 'id"),
    (PAGE.replace("## Thresholds", "## Limits"), "sections"),
    (PAGE.replace("## Fix\n", "## Fix\n\n## Extra\n"), "sections"),
    (PAGE.replace("Measured.", ""), "every section needs text"),
    (PAGE.replace("- Someone 2020", "Someone 2020"), "References"),
    (PAGE.replace("---\n\n# Demo", "\n# Demo"), "front matter"),
    (PAGE.replace("onto a second line.", "onto a second line.\n\nA second paragraph."), "one paragraph"),
])
def test_a_page_off_the_format_is_refused_with_its_name(broken: str, message: str) -> None:
    with pytest.raises(PageError, match=message) as info:
        parse_page(broken, "findings/demo.md")
    assert "findings/demo.md" in str(info.value)


# --------------------------------------------------------------------------- packaging

def test_the_package_links_to_the_repository_pages() -> None:
    assert Path(str(pages_root())).resolve() == DOCS.resolve()


@pytest.mark.slow  # builds a wheel: ~3 s
def test_the_wheel_carries_every_page(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "docs", source / "docs")
    shutil.copytree(ROOT / "gradcheck_cli", source / "gradcheck_cli", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in [DOCS / "README.md", *DOCS.glob("findings/*.md"), *DOCS.glob("fixes/*.md")]:
        assert f"gradcheck_cli/report/docs/{path.relative_to(DOCS).as_posix()}" in names, path
