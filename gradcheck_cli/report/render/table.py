"""The table renderer: the report for humans, as Rich text of a given width.

Layout, top to bottom: a two-line header (target, verdict, loss, probe configuration), one table
row per layer in execution order with a log-scale bar of grad_norm (so a geometric decay or growth
through depth shows as a slope), the findings, the ranked recommendations and a one-line verdict.

The table adapts to the width. Every column and the full layer names when they fit (at 120
columns for ordinary models); else the type is shortened; else the type column is dropped, and
the non-finite count too unless some layer has one (a non-finite layer still shows its status);
then layer names are shortened in the middle and, narrower still, the headers abbreviated.
Index, name, status, grad_norm, grad/weight and the bar always stay. No line is wider than
``width``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group, JustifyMethod
from rich.padding import Padding
from rich.table import Column, Table
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
from gradcheck_cli.report.render.common import where

STATUS_STYLES: dict[Status, str] = {
    Status.HEALTHY: "green",
    Status.VANISHING: "yellow",
    Status.EXPLODING: "red",
    Status.NONFINITE: "bold red",
    Status.FROZEN: "dim",
    Status.UNUSED: "dim",
}
SEVERITY_STYLES: dict[Severity, str] = {
    Severity.ERROR: "bold red",
    Severity.WARNING: "yellow",
    Severity.INFO: "cyan",
}

BAR_WIDTH = 12
"""Cells of the grad_norm bar for the largest norm of the model."""
MIN_DECADES = 3.0
"""The bar spans at least this many decades, so that a healthy model's small spread stays small."""
MIN_NAME_WIDTH = 10
COMFORTABLE_NAME_WIDTH = 24
"""Narrower than this, the headers are abbreviated to give layer names more room."""
MIN_NAME_HEAD = 3
"""Characters of a shortened name's root kept before the ellipsis."""
MIN_TYPE_WIDTH = 8
MAX_LISTED_LAYERS = 8
"""Layers named per recommendation before "and N more"."""

MISSING = "—"
NO_GRADIENT_BAR = "·"
ELLIPSIS = "…"
_FULL_BLOCK = "█"
_PARTIAL_BLOCKS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")
_COLUMN_GAP = 2
"""Cells between two columns: the right padding and the (blank) divider of box.SIMPLE_HEAD."""


def format_number(value: float | int | None) -> str:
    """A number in at most 8 cells: ``1.2e-08``, ``3.40``, ``0.123``, ``512``, ``NaN``, ``—``."""
    if value is None:
        return MISSING
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude < 0.01 or magnitude >= 1000:
        return f"{value:.1e}"
    if magnitude >= 100:
        return f"{value:.0f}"
    # "#" keeps trailing zeros (3.40); rounding up to 100 would leave "100." behind.
    return f"{value:#.3g}".rstrip(".")


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
    scale = _BarScale.of(report.layers)
    layout = _plan(report.layers, width)

    console.print(_header(report, width))
    console.print()
    console.print(_layer_table(report.layers, layout, scale))
    if report.layers:
        console.print(scale.legend(report.layers))
    if report.findings:
        console.print()
        console.print(Text(f"findings ({len(report.findings)})", style="bold"))
        console.print(_findings(report.findings, known))
    if report.recommendations:
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
    return Text("\n").join([_pack([title, target, verdict], width), _pack([loss, probe], width)])


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


# --- the layer table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _BarScale:
    """Maps log10(grad_norm) onto bar lengths; ``low`` is an empty bar, ``high`` a full one."""

    low: float
    high: float

    @classmethod
    def of(cls, layers: Sequence[LayerReport]) -> _BarScale:
        logs = [
            math.log10(layer.grad_norm)
            for layer in layers
            if layer.grad_norm is not None and math.isfinite(layer.grad_norm)
            and layer.grad_norm > 0
        ]
        if not logs:
            return cls(low=-MIN_DECADES, high=0.0)
        high = max(logs)
        return cls(low=min(min(logs), high - MIN_DECADES), high=high)

    def bar(self, grad_norm: float | None, width: int) -> str:
        if grad_norm is None:
            return NO_GRADIENT_BAR
        if math.isnan(grad_norm):
            return "NaN"
        if math.isinf(grad_norm):
            return "Inf"
        if grad_norm <= 0:
            return "0"
        fraction = (math.log10(grad_norm) - self.low) / (self.high - self.low)
        # At least one eighth of a cell, so the smallest non-zero norm stays visible.
        eighths = max(1, round(min(max(fraction, 0.0), 1.0) * width * 8))
        return _FULL_BLOCK * (eighths // 8) + _PARTIAL_BLOCKS[eighths % 8]

    def legend(self, layers: Sequence[LayerReport]) -> Text:
        legend = Text(
            f"bar: log10 grad_norm along depth, empty at {format_number(10**self.low)}, "
            f"full at {format_number(10**self.high)}",
            style="dim",
        )
        if any(layer.grad_norm is None for layer in layers):
            legend.append(f"; {NO_GRADIENT_BAR} no gradient")
        return legend


@dataclass(frozen=True)
class _Layout:
    name_width: int
    type_width: int
    """0 hides the type column."""
    show_nonfinite: bool
    short_headers: bool
    bar_width: int


def _headers(short: bool) -> dict[str, str]:
    return {
        "index": "#",
        "name": "layer",
        "type": "type",
        "status": "status",
        "grad_norm": "grad" if short else "grad_norm",
        "grad_to_weight": "g/w" if short else "grad/weight",
        "update": "upd/w" if short else "update/w",
        "nonfinite": "nonfinite",
        "bar": "log grad",
    }


def _cells(layer: LayerReport) -> dict[str, str]:
    return {
        "index": str(layer.index),
        "name": layer.name,
        "type": layer.type,
        "status": layer.status.value,
        "grad_norm": format_number(layer.grad_norm),
        "grad_to_weight": format_number(layer.grad_to_weight),
        "update": format_number(layer.update_to_weight),
        "nonfinite": str(layer.nonfinite_grads),
    }


def _shows_updates(layers: Sequence[LayerReport]) -> bool:
    """With --steps every layer has an update/weight ratio: show it next to grad/weight."""
    return any(layer.update_to_weight is not None for layer in layers)


def _plan(layers: Sequence[LayerReport], width: int) -> _Layout:
    """The widest layout that fits: full > short type > no type > short names, then headers."""
    rows = [_cells(layer) for layer in layers]

    def natural(key: str, short: bool) -> int:
        return max([len(_headers(short)[key]), *(len(row[key]) for row in rows)])

    def fixed(short: bool, nonfinite: bool, bar_width: int) -> tuple[int, int]:
        """Cells taken by the columns other than name and type, and the number of columns."""
        keys = ["index", "status", "grad_norm", "grad_to_weight"]
        if _shows_updates(layers):
            keys.append("update")
        if nonfinite:
            keys.append("nonfinite")
        taken = sum(natural(key, short) for key in keys)
        taken += max(bar_width, len(_headers(short)["bar"]))
        return taken, len(keys) + 2

    full_name = natural("name", False)
    full_type = natural("type", False)

    taken, columns = fixed(False, True, BAR_WIDTH)
    spare = width - taken - _COLUMN_GAP * columns  # columns + type -> one more gap
    if spare - full_type >= full_name:
        return _Layout(full_name, full_type, True, False, BAR_WIDTH)
    if spare - full_name >= MIN_TYPE_WIDTH:
        return _Layout(full_name, min(full_type, spare - full_name), True, False, BAR_WIDTH)

    # A model with non-finite gradients keeps their count rather than the layer type.
    if any(layer.nonfinite_grads for layer in layers):
        taken, columns = fixed(False, True, BAR_WIDTH)
        spare = width - taken - _COLUMN_GAP * (columns - 1)
        if spare >= min(full_name, COMFORTABLE_NAME_WIDTH):
            return _Layout(min(full_name, spare), 0, True, False, BAR_WIDTH)

    # Without type and nonfinite: full headers while names keep a readable width, then short ones.
    for short, least_name in ((False, COMFORTABLE_NAME_WIDTH), (True, MIN_NAME_WIDTH)):
        taken, columns = fixed(short, False, BAR_WIDTH)
        spare = width - taken - _COLUMN_GAP * (columns - 1)
        if spare >= min(full_name, least_name):
            return _Layout(min(full_name, spare), 0, False, short, BAR_WIDTH)

    # Very narrow: the bar gives up cells down to its header's width; Rich squeezes the rest.
    least_name = min(full_name, MIN_NAME_WIDTH)
    taken, columns = fixed(True, False, BAR_WIDTH)
    spare = width - taken - _COLUMN_GAP * (columns - 1)
    bar_width = max(len(_headers(True)["bar"]), BAR_WIDTH - (least_name - spare))
    return _Layout(least_name, 0, False, True, bar_width)


def _shorten_middle(name: str, width: int) -> str:
    """``encoder.l…11.self_attn.out_proj``: an ellipsis in the middle of a qualified name.

    The tail is cut at a dot where possible, so the block index and the leaf that tell two layers
    apart survive; the root keeps at least a few characters.
    """
    if len(name) <= width:
        return name
    if width <= MIN_NAME_HEAD + 1:
        return name[: max(width - 1, 0)] + ELLIPSIS[: max(width, 0)]
    budget = width - 1
    tail_room = budget - MIN_NAME_HEAD
    tail = name[-tail_room:]
    boundaries = [i + 1 for i, char in enumerate(name) if char == "."]
    fitting = [i for i in boundaries if len(name) - i <= tail_room]
    if fitting:
        tail = name[min(fitting):]
    return name[: budget - len(tail)] + ELLIPSIS + tail


def _shorten_end(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS


def _layer_table(layers: Sequence[LayerReport], layout: _Layout, scale: _BarScale) -> Table:
    headers = _headers(layout.short_headers)

    def column(key: str, justify: JustifyMethod = "left") -> Column:
        return Column(headers[key], justify=justify, no_wrap=True, overflow="ellipsis")

    columns = [column("index", "right"), column("name")]
    if layout.type_width:
        columns.append(column("type"))
    columns += [column("status"), column("grad_norm", "right"), column("grad_to_weight", "right")]
    updates = _shows_updates(layers)
    if updates:
        columns.append(column("update", "right"))
    if layout.show_nonfinite:
        columns.append(column("nonfinite", "right"))
    columns.append(column("bar"))

    table = Table(
        *columns,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        header_style="bold",
    )
    for layer in layers:
        cells = _cells(layer)
        style = STATUS_STYLES[layer.status]
        row: list[Text] = [
            Text(cells["index"]),
            Text(_shorten_middle(cells["name"], layout.name_width)),
        ]
        if layout.type_width:
            row.append(Text(_shorten_end(cells["type"], layout.type_width), style="dim"))
        row += [
            Text(cells["status"], style=style),
            Text(cells["grad_norm"]),
            Text(cells["grad_to_weight"]),
        ]
        if updates:
            row.append(Text(cells["update"]))
        if layout.show_nonfinite:
            row.append(Text(cells["nonfinite"], style="bold red" if layer.nonfinite_grads else ""))
        row.append(Text(scale.bar(layer.grad_norm, layout.bar_width), style=style))
        table.add_row(*row)
    return table


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
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(overflow="fold")
    for rank, rec in enumerate(recommendations, start=1):
        title = Text()
        title.append(f"[{rec.id.value}]", style="bold cyan")
        title.append(f" {rec.title}")
        if rec.layers:
            title.append(f" — layers: {_layer_list(rec.layers)}")
        parts: list[Text | Padding] = [title, Text(f"why: {rec.why}")]
        if rec.code.strip():
            # Never wrapped: a snippet is pasted as it is, and a folded line would break the code.
            code = Text(rec.code.strip("\n"), style="green", no_wrap=True, overflow="ignore")
            parts.append(Padding(code, (0, 0, 0, 4)))
        grid.add_row(Text(f"{rank}."), Group(*parts))
    return grid
