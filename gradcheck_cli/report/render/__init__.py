"""Output formats: one module per format, each turning scan results into a string.

Renderers never print, never import torch and hold no state; ``cli/app.py`` writes what they return.
Every format takes the same input, a sequence of ScanResult: one for ``gradcheck scan``, one per
scan for ``gradcheck run RECIPE`` (``combined=True``), and the baseline's fingerprints (``known``),
whose findings are shown as baselined and do not fail the gate.

Each format's module is imported only when that format is rendered (``render`` imports it in its
branch): a ``--format json`` scan never loads Rich or ``xml.etree``, which keeps the start-up of a
scan close to ``import torch`` plus the probe itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

from gradcheck_cli.report.records import ScanResult
from gradcheck_cli.report.render.common import format_number
from gradcheck_cli.report.render.json import render_json, render_run_json

if TYPE_CHECKING:
    from gradcheck_cli.report.render.table import render_table

__all__ = ["OutputFormat", "format_number", "render", "render_json",
           "render_table"]


def __getattr__(name: str) -> Any:
    """``render_table`` on first use (PEP 562): importing it here would load Rich for every format."""
    if name == "render_table":
        from gradcheck_cli.report.render.table import render_table

        return render_table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class OutputFormat(str, Enum):
    """The ``--format`` choices."""

    TABLE = "table"
    """A Rich table per layer, findings, ranked fixes and a verdict line, for humans."""
    JSON = "json"
    """The gradcheck/report@1 document (gradcheck/run@1 for a recipe run), for machines."""
    MARKDOWN = "markdown"
    """GitHub-flavoured Markdown for pull-request comments and $GITHUB_STEP_SUMMARY."""
    SARIF = "sarif"
    """SARIF 2.1.0, for code-scanning dashboards (GitHub code scanning, GitLab, Azure DevOps)."""
    JUNIT = "junit"
    """JUnit XML: one testcase per scan and per failing finding, for CI test reports."""
    GITHUB = "github"
    """GitHub Actions workflow commands (::error/::warning annotations)."""
    HTML = "html"
    """One self-contained HTML page (inline CSS and SVG charts, no script) for people and CI artifacts."""


def render(results: Sequence[ScanResult], fmt: OutputFormat, *, combined: bool = False,
           width: int = 100, color: bool = False, known: frozenset[str] = frozenset()) -> str:
    """Render ``results`` in format ``fmt``.

    ``combined=False`` with one result is ``gradcheck scan`` (its JSON is the report@1 document);
    ``combined=True`` is a recipe run (JSON run@1, a table per scan and an overall line).
    ``width`` and ``color`` apply to the table only.
    """
    if not results:
        raise ValueError("render needs at least one scan result")
    single = results[0].report if not combined and len(results) == 1 else None
    if fmt is OutputFormat.TABLE:
        if single is not None:
            from gradcheck_cli.report.render.table import render_table

            return render_table(single, width=width, color=color, known=known)
        from gradcheck_cli.report.render.run_table import render_results_table

        return render_results_table(results, width=width, color=color, known=known)
    if fmt is OutputFormat.JSON:
        return render_json(single) if single is not None else render_run_json(results, known)
    if fmt is OutputFormat.MARKDOWN:
        from gradcheck_cli.report.render.markdown import render_markdown

        return render_markdown(results, known)
    if fmt is OutputFormat.SARIF:
        from gradcheck_cli.report.render.sarif import render_sarif

        return render_sarif(results, known)
    if fmt is OutputFormat.JUNIT:
        from gradcheck_cli.report.render.junit import render_junit

        return render_junit(results, known)
    if fmt is OutputFormat.GITHUB:
        from gradcheck_cli.report.render.github import render_github

        return render_github(results, known)
    if fmt is OutputFormat.HTML:
        from gradcheck_cli.report.render.html import render_html

        return render_html(results, known)
    # Reached only by a format added to the enum without a renderer (tests walk every member).
    raise ValueError(f"no renderer for output format {fmt!r}")
