"""`gradcheck plot REPORT.json -o flow.png`: a saved report's charts as PNG, SVG or PDF images.

The charts are report/charts.py's (the ones the HTML page draws), drawn by report/render/images.py
with matplotlib, an optional extra: without it the command exits 2 with one line saying
`pip install "gradcheck[plot]"`. Nothing here imports matplotlib or the renderers at module level
(cli/app.py imports this module, and `gradcheck --help` stays free of both).

Files: the flow chart goes to the path given with -o; every other chart the report has goes next
to it as ``<stem>-<kind>[-<layer>]<suffix>`` (flow-through-time-rnn.png, flow-loss.png,
flow-step-norms.png). ``--chart KIND`` draws only that kind: to exactly the -o path when that is
one image, else (several recurrent layers) to ``<stem>-through-time-<layer><suffix>``.
A recipe run's document (gradcheck/run@1) gives one set of files per scan, each name carrying the
scan's: ``<stem>-<scan><suffix>`` for its flow chart, ``<stem>-<scan>-<kind>[-<layer>]<suffix>``
for the others; a scan that failed has no report and no images (a note on stderr says so).
A layer or scan name keeps [A-Za-z0-9._-] (others become "_") and at most MAX_NAME characters.
The format is the suffix's (.png, .svg, .pdf). Every problem (a missing or malformed report, an
unknown suffix or chart, a report without the chart asked for) is one line, exit 2; else exit 0:
drawing a report does not gate anything (`gradcheck report` does).
"""

from __future__ import annotations

import hashlib
import re
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gradcheck_cli.errors import UserError
from gradcheck_cli.text import exception_text

if TYPE_CHECKING:
    from gradcheck_cli.report.charts import Charts
    from gradcheck_cli.report.records import Report
    from gradcheck_cli.report.render.images import Chart, ImageFormat

EXIT_USAGE = 2
SUFFIXES = (".png", ".svg", ".pdf")
MISSING_MATPLOTLIB = 'gradcheck plot needs matplotlib: pip install "gradcheck[plot]"'
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
"""Characters of a layer or scan name that do not go into a file name (replaced by "_")."""
MAX_NAME = 80
"""Characters of a layer or scan name in a file name: with the stem and kind, well under the 255
bytes most file systems allow."""


class ChartKind(str, Enum):
    """The ``--chart`` choices: report/charts.py's chart kinds."""

    FLOW = "flow"
    THROUGH_TIME = "through-time"
    LOSS = "loss"
    STEP_NORMS = "step-norms"


@dataclass(frozen=True)
class PlannedImage:
    path: Path
    kind: ChartKind
    chart: Chart


def plot_command(
    file: Annotated[Path, typer.Argument(help="A JSON report (gradcheck scan/report --format json, a watch's "
                                              "report, or a recipe run's document).", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="The flow chart's image: FILE.png, FILE.svg or FILE.pdf (the format is the "
                               "suffix's); the other charts go next to it as FILE-<kind>[-<layer>].<suffix>.",
        dir_okay=False, show_default=False)],
    chart: Annotated[str | None, typer.Option(
        "--chart", help="Draw only this chart: flow, through-time, loss or step-norms (to exactly -o FILE "
                        "when it is one image).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No message on stderr, except errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
) -> None:
    """Draw a saved report's charts (gradient flow, through time, loss, step norms) as PNG, SVG or PDF
    images, with matplotlib (pip install "gradcheck[plot]")."""
    try:
        for planned in plot(file, output, chart, quiet):
            if not quiet:
                typer.echo(f"gradcheck: wrote the {planned.kind.value} chart to {planned.path}", err=True)
    except UserError as exc:
        _fail(str(exc), exc, debug)
    except Exception as exc:  # a drawing bug must not end in a traceback without --debug
        _fail(f"drawing the charts failed: {exception_text(exc)} (run with --debug for the traceback)", exc, debug)


def plot(file: Path, output: Path, chart: str | None, quiet: bool) -> list[PlannedImage]:
    """Draw and write the images; the ones written, in order. UserError for a user's mistake."""
    from gradcheck_cli.cli.output_file import write_output

    fmt = image_format(output)
    kind = chart_kind(chart)
    plan = plan_images(_scan_reports(file, quiet), output, kind, str(file))  # the report's errors first
    chart_image = _drawing()
    images = [chart_image(planned.chart, fmt) for planned in plan]  # all drawn before any file is replaced
    for planned, image in zip(plan, images, strict=True):
        write_output(planned.path, image)
    return plan


def image_format(output: Path) -> ImageFormat:
    from gradcheck_cli.cli.output_file import is_stdout

    if is_stdout(output):
        raise UserError("gradcheck plot writes image files: give -o FILE.png, FILE.svg or FILE.pdf, not -")
    suffix = output.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"cannot tell the image format of -o {output}: name it .png, .svg or .pdf")
    from gradcheck_cli.report.render.images import ImageFormat

    return ImageFormat(suffix[1:])


def chart_kind(value: str | None) -> ChartKind | None:
    if value is None:
        return None
    try:
        return ChartKind(value.strip().lower())
    except ValueError:
        choices = ", ".join(kind.value for kind in ChartKind)
        raise UserError(f"invalid --chart '{value}'; choose one of: {choices}") from None


def _drawing() -> Callable[[Chart, ImageFormat], bytes]:
    """images.chart_image, or the one-line error naming the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401  (checked here: images.py imports it inside its functions)
    except ImportError:
        raise UserError(MISSING_MATPLOTLIB) from None
    from gradcheck_cli.report.render.images import chart_image

    return chart_image


def _scan_reports(file: Path, quiet: bool) -> list[tuple[str | None, Report]]:
    """(None, report) for a report@1 document; (scan name, report) per scan of a run@1 document."""
    from gradcheck_cli.cli.report_file import read_results

    results, combined = read_results(file)
    if not combined:
        return [(None, result.report) for result in results if result.report is not None]
    for result in results:
        if result.report is None and not quiet:
            typer.echo(f"gradcheck: scan '{result.name}' has no report ({result.error}): nothing to draw for it",
                       err=True)
    return [(result.name, result.report) for result in results if result.report is not None]


def plan_images(scans: Sequence[tuple[str | None, Report]], output: Path, kind: ChartKind | None,
                source: str) -> list[PlannedImage]:
    """Where each chart goes (the module docstring's names); UserError when none is left to draw."""
    from gradcheck_cli.report.charts import charts_of

    plan: list[PlannedImage] = []
    available: list[str] = []
    for scan, report in scans:
        charts = _chart_list(charts_of(report))
        available += [_describe(k, layer) for k, layer, _ in charts if _describe(k, layer) not in available]
        chosen = [(k, layer, c) for k, layer, c in charts if kind is None or k is kind]
        for found_kind, layer, chart in chosen:
            path = output if scan is None and kind is not None and len(chosen) == 1 else \
                _image_path(output, scan, found_kind, layer)
            plan.append(PlannedImage(path, found_kind, chart))
    if not plan:
        has = ", ".join(available) if available else "none"
        wanted = f"{kind.value} chart" if kind is not None else "chart"
        raise UserError(f"report {source} has no {wanted} to draw; it has: {has}")
    return _unique(plan)


def _chart_list(charts: Charts) -> list[tuple[ChartKind, str | None, Chart]]:
    """The report's charts in drawing order: (kind, recurrent layer or None, chart)."""
    found: list[tuple[ChartKind, str | None, Chart]] = []
    if charts.flow is not None:
        found.append((ChartKind.FLOW, None, charts.flow))
    found += [(ChartKind.THROUGH_TIME, profile.layer, profile) for profile in charts.through_time]
    if charts.loss is not None:
        found.append((ChartKind.LOSS, None, charts.loss))
    if charts.step_norms is not None:
        found.append((ChartKind.STEP_NORMS, None, charts.step_norms))
    return found


def _image_path(output: Path, scan: str | None, kind: ChartKind, layer: str | None) -> Path:
    """<stem>[-<scan>][-<kind>][-<layer>]<suffix>, the kind left out for the flow chart (so a
    report's flow chart goes to exactly -o FILE)."""
    parts = [output.stem] + ([_safe(scan)] if scan is not None else [])
    parts += ([kind.value] if kind is not ChartKind.FLOW else []) + ([_safe(layer)] if layer is not None else [])
    return output.with_name("-".join(parts) + output.suffix)


def _describe(kind: ChartKind, layer: str | None) -> str:
    return f"{kind.value} ({layer})" if layer is not None else kind.value


def _safe(name: str) -> str:
    """The name as a file-name part: unsafe characters replaced, and at most MAX_NAME characters
    (a long layer name made "File name too long" after the flow chart was already written); a cut
    name ends in a hash of the whole, so two long names that share a beginning stay apart."""
    safe = UNSAFE.sub("_", name).strip("_.") or "_"
    if len(safe) <= MAX_NAME:
        return safe
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return f"{safe[:MAX_NAME - len(digest) - 1]}-{digest}"


def _unique(plan: list[PlannedImage]) -> list[PlannedImage]:
    """Two layers whose names differ only in unsafe characters: the second file gets "-2"."""
    seen: set[Path] = set()
    unique = []
    for planned in plan:
        path, number = planned.path, 2
        while path in seen:
            path = planned.path.with_name(f"{planned.path.stem}-{number}{planned.path.suffix}")
            number += 1
        seen.add(path)
        unique.append(PlannedImage(path, planned.kind, planned.chart))
    return unique


def _fail(message: str, exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    typer.echo(f"gradcheck: error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)
