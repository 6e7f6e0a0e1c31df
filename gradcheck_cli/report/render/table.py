"""The table renderer: the report for humans, as Rich text of a given width.

Layout, top to bottom: a two-line header (target, verdict, loss, probe configuration), one table
row per layer in execution order with a log-scale bar of grad_norm (so a geometric decay or growth
through depth shows as a slope), the findings, the ranked recommendations and a one-line verdict.
With --verify, the recommendations are grouped by what their verification measured, each with its
before -> after, and followed by the verified ones applied together (render/verified.py).

The layer table and how it adapts to the width: layer_table.py.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from gradcheck_cli.report.gate import fingerprint
from gradcheck_cli.report.records import (
    VERDICT_ORDER,
    Finding,
    LayerReport,
    Recommendation,
    Report,
    Severity,
    Status,
)
from gradcheck_cli.report.render.common import (
    format_number,
    is_watch,
    series_summary,
    summarised_series,
    watch_summary,
    where,
)
from gradcheck_cli.report.render.layer_table import STATUS_STYLES, BarScale, layer_table, plan_layout
from gradcheck_cli.report.render.verified import (
    DID_NOT_HELP,
    NOT_VERIFIED,
    combined_text,
    group_recommendations,
    has_verification,
    probe_text,
    verification_text,
)
from gradcheck_cli.report.verification import Verification, VerificationStatus

SEVERITY_STYLES: dict[Severity, str] = {
    Severity.ERROR: "bold red",
    Severity.WARNING: "yellow",
    Severity.INFO: "cyan",
}

VERIFICATION_STYLES: dict[VerificationStatus, str] = {
    VerificationStatus.VERIFIED: "green",
    VerificationStatus.PARTIAL: "yellow",
    VerificationStatus.NO_EFFECT: "yellow",
    VerificationStatus.MADE_WORSE: "red",
    VerificationStatus.NOT_APPLICABLE: "dim",
}

MAX_LISTED_LAYERS = 8
"""Layers named per recommendation before "and N more"."""


def render_table(report: Report, *, width: int, color: bool,
                 known: frozenset[str] = frozenset()) -> str:
    """The report as text at most ``width`` cells wide, with ANSI colours when ``color``.

    Findings whose fingerprint is in ``known`` (a baseline) are marked "baselined".
    """
    buffer = io.StringIO()
    console = make_console(buffer, width, color)
    print_report(console, report, width, known)
    return strip_trailing_blanks(buffer.getvalue())


def strip_trailing_blanks(text: str) -> str:
    # Rich pads cells to the column width; trailing blanks would only burden golden files.
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def make_console(buffer: io.StringIO, width: int, color: bool) -> Console:
    return Console(
        file=buffer,
        width=width,
        height=25,  # with both set, Rich ignores the environment's size (TERM=dumb, COLUMNS)
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        legacy_windows=False,
        highlight=False,
        emoji=False,
        markup=False,
    )


def print_report(console: Console, report: Report, width: int, known: frozenset[str]) -> None:
    scale = BarScale.of(report.layers)
    layout = plan_layout(report.layers, width)

    console.print(_header(report, width))
    console.print()
    console.print(layer_table(report.layers, layout, scale))
    if report.layers:
        console.print(scale.legend(report.layers))
    if report.findings:
        console.print()
        console.print(Text(f"findings ({len(report.findings)})", style="bold"))
        console.print(_findings(report.findings, known))
    if report.recommendations and has_verification(report):
        console.print()
        _print_verified_recommendations(console, report)
    elif report.recommendations:
        console.print()
        console.print(
            Text(f"recommendations ({len(report.recommendations)}, most effective first)",
                 style="bold")
        )
        console.print(_recommendations(report.recommendations))
    console.print()
    console.print(_verdict_line(report))


# --- header and verdict -------------------------------------------------------------------------


def _verdict_text(verdict: Status) -> Text:
    label = verdict.value if verdict is Status.HEALTHY else verdict.value.upper()
    return Text(label, style=STATUS_STYLES[verdict])


def _header(report: Report, width: int) -> Text:
    """Two lines, what was scanned and how it went, each wrapped only between its parts."""
    title = Text()
    title.append("gradcheck", style="bold")
    title.append(f" {report.tool_version}")
    target = Text(report.target, style="bold")
    verdict = Text("verdict: ")
    verdict.append_text(_verdict_text(report.verdict))
    loss = Text(f"loss: {_loss_summary(report)}")
    probe = Text(f"probe: {_config_summary(report)}")
    if is_watch(report):  # the loss over the steps is in the series line below
        second = [Text(watch_summary(report.config))] if report.series is not None else \
            [loss, Text(watch_summary(report.config))]
    else:
        second = [loss, probe]
    lines = [_pack([title, target, verdict], width), _pack(second, width)]
    series = summarised_series(report)  # a watch's; not a scan's own --steps series
    if series is not None:
        lines.append(Text(series_summary(series)))
    return Text("\n").join(lines)


def _pack(parts: Sequence[Text], width: int) -> Text:
    """Join parts with " · ", starting a new line rather than breaking a part."""
    packed = Text()
    line_length = 0
    for part in parts:
        if line_length and line_length + 3 + part.cell_len > width:
            packed.append("\n")
            line_length = 0
        elif line_length:
            packed.append(" · ")
            line_length += 3
        packed.append_text(part)
        line_length += part.cell_len
    return packed


def _loss_summary(report: Report) -> str:
    values = report.loss.values
    if not values:
        return f"{report.loss.kind} (no values)"
    mean = format_number(sum(values) / len(values))
    bad = sum(1 for v in values if not math.isfinite(v))
    if bad:
        return f"{report.loss.kind}, mean {mean} ({bad} of {len(values)} values non-finite)"
    plural = "value" if len(values) == 1 else "values"
    return f"{report.loss.kind}, mean {mean} ({len(values)} {plural})"


def _config_summary(report: Report) -> str:
    config = report.config
    summary = (
        f"{config.get('batches', '?')} batches × {config.get('batch_size', '?')}, "
        f"seed {config.get('seed', '?')}, {config.get('device', '?')}"
    )
    steps = config.get("steps") or 0
    if steps:
        summary += f", {steps} steps of {config.get('optimizer', '?')}"
        if "lr" in config:
            summary += f" (lr {format_number(config['lr'])})"
    return summary


def _verdict_line(report: Report) -> Text:
    layers = report.layers
    line = Text("verdict: ", style="bold")
    line.append_text(_verdict_text(report.verdict))
    line.append(" — ")
    if report.verdict is Status.HEALTHY:
        plural = "layer" if len(layers) == 1 else "layers"
        line.append(f"{len(layers)} {plural} checked")
        inactive = _status_counts(layers, (Status.FROZEN, Status.UNUSED))
        if inactive:
            line.append(f" ({inactive})")
        line.append(", no gradient problem found")
        return line
    affected = [layer for layer in layers if layer.status is report.verdict]
    if affected:
        first = min(affected, key=lambda layer: layer.index)
        line.append(
            f"{len(affected)} of {len(layers)} layers {report.verdict.value} "
            f"(first: {first.index}, {first.name})"
        )
    else:
        line.append("see the findings above")
    # Frozen and unused layers are in the table; the verdict line names only other problems.
    others = _status_counts(
        layers, tuple(s for s in VERDICT_ORDER if s not in (report.verdict, Status.HEALTHY))
    )
    if others:
        line.append(f"; also {others}")
    return line


def _status_counts(layers: Sequence[LayerReport], statuses: Sequence[Status]) -> str:
    counts = [(s, sum(1 for layer in layers if layer.status is s)) for s in statuses]
    return ", ".join(f"{n} {s.value}" for s, n in counts if n)


# --- findings and recommendations ---------------------------------------------------------------


def _findings(findings: Sequence[Finding], known: frozenset[str]) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for finding in findings:
        body = Text()
        body.append(finding.kind.value, style="bold")
        body.append(f" {where(finding)}: {finding.message}")
        if fingerprint(finding) in known:
            body.append(" (baselined: known finding, does not fail)", style="dim")
        grid.add_row(
            Text(finding.severity.value, style=SEVERITY_STYLES[finding.severity]), body
        )
    return grid


def _layer_list(names: Sequence[str]) -> str:
    listed = ", ".join(names[:MAX_LISTED_LAYERS])
    if len(names) > MAX_LISTED_LAYERS:
        listed += f" and {len(names) - MAX_LISTED_LAYERS} more"
    return listed


def _recommendations(recommendations: Sequence[Recommendation]) -> Table:
    return _recommendation_grid(list(enumerate(recommendations, start=1)), verified=False, show_code=True)


def _print_verified_recommendations(console: Console, report: Report) -> None:
    """With --verify: the fixes that helped, then apart (never as a fix) those that could not be
    verified, those that were measured and did not help (no snippet to paste), and the combined line."""
    groups = group_recommendations(report.recommendations)
    console.print(Text(f"recommendations ({len(report.recommendations)}, {probe_text(report)})", style="bold"))
    if groups.fixes:
        console.print(_recommendation_grid(groups.fixes, verified=True, show_code=True))
    else:
        console.print(Text("none of them helped when measured", style="yellow"))
    for heading, entries, show_code in ((NOT_VERIFIED, groups.not_verified, True),
                                        (DID_NOT_HELP, groups.did_not_help, False)):
        if entries:
            console.print()
            console.print(Text(f"{heading} ({len(entries)})", style="bold"))
            console.print(_recommendation_grid(entries, verified=True, show_code=show_code))
    if report.verification is not None:
        console.print()
        console.print(Text(combined_text(report.verification), style="bold"))


def _verification_line(verification: Verification | None) -> Text:
    style = VERIFICATION_STYLES[verification.status] if verification is not None else "dim"
    return Text(verification_text(verification), style=style)


def _recommendation_grid(entries: Sequence[tuple[int, Recommendation]], *, verified: bool,
                         show_code: bool) -> Table:
    """Numbered recommendations: title and layers, why, (with --verify) what the verification
    measured, and the snippet when ``show_code``."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(overflow="fold")
    for rank, rec in entries:
        title = Text()
        title.append(f"[{rec.id.value}]", style="bold cyan")
        title.append(f" {rec.title}")
        if rec.layers:
            title.append(f" — layers: {_layer_list(rec.layers)}")
        parts: list[Text | Padding] = [title, Text(f"why: {rec.why}")]
        if verified:
            parts.append(_verification_line(rec.verification))
        if show_code and rec.code.strip():
            # Never wrapped: a snippet is pasted as it is, and a folded line would break the code.
            code = Text(rec.code.strip("\n"), style="green", no_wrap=True, overflow="ignore")
            parts.append(Padding(code, (0, 0, 0, 4)))
        grid.add_row(Text(f"{rank}."), Group(*parts))
    return grid
