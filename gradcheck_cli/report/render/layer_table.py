"""The layer table of the table renderer: one row per layer, with a log-scale bar of grad_norm.

The table adapts to the width. Every column and the full layer names when they fit (at 120
columns for ordinary models); else the type is shortened; else the type column is dropped, and
the non-finite count too unless some layer has one (a non-finite layer still shows its status);
then layer names are shortened in the middle and, narrower still, the headers abbreviated.
Index, name, status, grad_norm, grad/weight and the bar always stay. No line is wider than
``width``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import JustifyMethod
from rich.table import Column, Table
from rich.text import Text

from gradcheck_cli.report.records import LayerReport, Status
from gradcheck_cli.report.render.common import format_number

STATUS_STYLES: dict[Status, str] = {
    Status.HEALTHY: "green",
    Status.VANISHING: "yellow",
    Status.EXPLODING: "red",
    Status.NONFINITE: "bold red",
    Status.FROZEN: "dim",
    Status.UNUSED: "dim",
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

NO_GRADIENT_BAR = "·"
ELLIPSIS = "…"
_FULL_BLOCK = "█"
_PARTIAL_BLOCKS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")
_COLUMN_GAP = 2
"""Cells between two columns: the right padding and the (blank) divider of box.SIMPLE_HEAD."""


@dataclass(frozen=True)
class BarScale:
    """Maps log10(grad_norm) onto bar lengths; ``low`` is an empty bar, ``high`` a full one."""

    low: float
    high: float

    @classmethod
    def of(cls, layers: Sequence[LayerReport]) -> BarScale:
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
class Layout:
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


def plan_layout(layers: Sequence[LayerReport], width: int) -> Layout:
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
        return Layout(full_name, full_type, True, False, BAR_WIDTH)
    if spare - full_name >= MIN_TYPE_WIDTH:
        return Layout(full_name, min(full_type, spare - full_name), True, False, BAR_WIDTH)

    # A model with non-finite gradients keeps their count rather than the layer type.
    if any(layer.nonfinite_grads for layer in layers):
        taken, columns = fixed(False, True, BAR_WIDTH)
        spare = width - taken - _COLUMN_GAP * (columns - 1)
        if spare >= min(full_name, COMFORTABLE_NAME_WIDTH):
            return Layout(min(full_name, spare), 0, True, False, BAR_WIDTH)

    # Without type and nonfinite: full headers while names keep a readable width, then short ones.
    for short, least_name in ((False, COMFORTABLE_NAME_WIDTH), (True, MIN_NAME_WIDTH)):
        taken, columns = fixed(short, False, BAR_WIDTH)
        spare = width - taken - _COLUMN_GAP * (columns - 1)
        if spare >= min(full_name, least_name):
            return Layout(min(full_name, spare), 0, False, short, BAR_WIDTH)

    # Very narrow: the bar gives up cells down to its header's width; Rich squeezes the rest.
    least_name = min(full_name, MIN_NAME_WIDTH)
    taken, columns = fixed(True, False, BAR_WIDTH)
    spare = width - taken - _COLUMN_GAP * (columns - 1)
    bar_width = max(len(_headers(True)["bar"]), BAR_WIDTH - (least_name - spare))
    return Layout(least_name, 0, False, True, bar_width)


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


def layer_table(layers: Sequence[LayerReport], layout: Layout, scale: BarScale) -> Table:
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
