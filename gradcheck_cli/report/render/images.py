"""The charts of a report (report/charts.py) as images: PNG, SVG or PDF bytes drawn with matplotlib,
for `gradcheck plot` (cli/plot.py writes them).

matplotlib is an optional extra (`pip install "gradcheck[plot]"`), imported only inside these
functions. The drawing uses a matplotlib Figure and the Agg, SVG and PDF canvases directly, never
pyplot: no global figure registry, no GUI backend, and the caller's matplotlib state is left as it
was (the style below is applied in a matplotlib.rc_context that restores rcParams on exit).

The images draw what the HTML page draws (render/svg.py), from the same chart objects:
- flow: two panels along depth, log10 gradient L2 norm and log10 grad/weight per layer (or group
  of layers, with the group's min..max grad/weight as a whisker), the vanishing and exploding
  thresholds as labelled dashed lines; a missing or non-finite value is a text placeholder
  ("NaN", "Inf", "0 V" for a vanishing layer with no gradient, "—" over "F" or "U" for a frozen or
  unused one) at the foot of its column,
  never a bar, and a NaN or Inf column is a full-height dotted box, as on the HTML page;
- through-time: a recurrent layer's log10 RMS gradient per time step, far end to near end, with
  the effective horizon as a labelled dashed line;
- loss and step norms: lines over steps (the step norms on a log10 axis over the min..max band of
  every layer).
Status is never carried by colour alone: a non-healthy bar has a hatch pattern, a black outline
and a text mark above it (V, E, NaN, F, U), and the legend says what each means.

Same chart, same format -> same bytes: matplotlib's own defaults (not the user's matplotlibrc),
a fixed svg.hashsalt, and no date in the file's metadata.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from gradcheck_cli.report.charts import Bar, ChartThresholds, FlowChart, StepChart, TimeProfile, log10
from gradcheck_cli.report.records import Status

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Chart = FlowChart | TimeProfile | StepChart


class ImageFormat(str, Enum):
    """The image formats `gradcheck plot` writes, named by the output file's suffix."""

    PNG = "png"
    """A raster image (DPI dots per inch), for issues, chats and slides."""
    SVG = "svg"
    """A vector image with real text (svg.fonttype none), for web pages and editing."""
    PDF = "pdf"
    """A vector image for papers and print."""


@dataclass(frozen=True)
class StatusStyle:
    colour: str
    hatch: str
    mark: str
    """The text drawn above a bar of this status ("" for healthy)."""
    meaning: str


STYLES = {
    Status.HEALTHY: StatusStyle("#5b9bd5", "", "", "healthy"),
    Status.VANISHING: StatusStyle("#f0c040", "////", "V", "vanishing"),
    Status.EXPLODING: StatusStyle("#c0392b", "xxx", "E", "exploding"),
    Status.NONFINITE: StatusStyle("#5b2c6f", "...", "NaN", "non-finite gradient (NaN/Inf)"),
    Status.FROZEN: StatusStyle("#d9d9d9", "--", "F", "frozen (no parameter requires grad)"),
    Status.UNUSED: StatusStyle("#ffffff", "\\\\\\\\", "U", "unused (received no gradient)"),
}
"""Colours of different lightness (they stay apart in greyscale), plus a hatch and a text mark."""

DPI = 100
MAX_WIDTH = 12.0
"""Inches: a flow chart of 200 bars (the most charts.py draws) is 1,200 pixels wide at DPI."""
FLOW_HEIGHT = 7.0
LEGEND_COLUMN_WIDTH = 2.8
"""Inches per legend column under a flow chart: its longest entry ("NaN: non-finite gradient
(NaN/Inf)", "F: frozen (no parameter requires grad)") with its swatch, at 8 points."""
MAX_TICK_LABELS = 50
"""At most this many layer names under a flow chart; past that, every k-th name is shown."""
LABEL_CHARS = 32
"""At most this many characters of a layer name under a flow bar or in a step chart's legend."""
TITLE_CHARS_PER_INCH = 10
"""Characters of a title (11 points, DejaVu Sans) per inch: where it is wrapped."""
GRAD_NORM, GRAD_TO_WEIGHT = "grad_norm", "grad_to_weight"
AXIS_LABELS = {GRAD_NORM: "log10 gradient L2 norm", GRAD_TO_WEIGHT: "log10 grad/weight"}
THRESHOLD_NAMES = {"vanish_grad_to_weight": "vanishing below", "explode_grad_to_weight": "exploding above"}
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLE: dict[Any, Any] = {  # Any: matplotlib types rcParams keys as a Literal of every name
    "svg.hashsalt": "gradcheck",  # the ids of clip paths and hatches come from a hash: fixed salt
    "svg.fonttype": "none",  # text stays text (searchable, read by screen readers), not paths
    "text.parse_math": False,  # a layer named "cost$_1$" is that text, not math (a "$\\frac{$" raised)
    "font.size": 9.0,
    "hatch.linewidth": 0.8,
}
MISSING_GLYPH = r"Glyph \d+ .* missing from font"
METADATA: dict[ImageFormat, dict[str, str | None]] = {
    ImageFormat.PNG: {"Software": "gradcheck"},
    ImageFormat.SVG: {"Date": None, "Creator": "gradcheck"},
    ImageFormat.PDF: {"CreationDate": None, "ModDate": None, "Creator": "gradcheck"},
}
"""No date: the same chart gives the same bytes (matplotlib would stamp the time otherwise)."""


def chart_image(chart: Chart, fmt: ImageFormat) -> bytes:
    """The chart drawn in ``fmt``: the file's bytes (ImportError when matplotlib is missing)."""
    with plot_style():
        figure = chart_figure(chart)
        return save_figure(figure, fmt, chart.title)


@contextmanager
def plot_style() -> Iterator[None]:
    """matplotlib's defaults plus STYLE while the figure is built and saved; rcParams restored after."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context(STYLE):
        yield


def chart_figure(chart: Chart) -> Figure:
    """The Figure of one chart (not saved: the tests read the drawn numbers back from its artists)."""
    if isinstance(chart, FlowChart):
        return flow_figure(chart)
    if isinstance(chart, TimeProfile):
        return time_figure(chart)
    return step_figure(chart)


def save_figure(figure: Figure, fmt: ImageFormat, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.backends.backend_pdf import FigureCanvasPdf
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    canvas = {ImageFormat.PNG: FigureCanvasAgg, ImageFormat.SVG: FigureCanvasSVG,
              ImageFormat.PDF: FigureCanvasPdf}[fmt](figure)
    metadata = dict(METADATA[fmt])
    if fmt is not ImageFormat.PNG:
        metadata["Title"] = title
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a layer name in a script the font lacks (CJK, emoji) is drawn as
        # boxes; matplotlib's warning per glyph would print source lines on the command's stderr
        warnings.filterwarnings("ignore", message=MISSING_GLYPH, category=UserWarning)
        canvas.print_figure(buffer, format=fmt.value, dpi=DPI, metadata=metadata)
    return buffer.getvalue()


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _wrapped(title: str, width: float) -> str:
    """The chart's title in lines that fit ``width`` inches: a title naming a long layer ran off
    both edges of the image (textwrap also breaks a name that has no spaces)."""
    return textwrap.fill(title, width=max(20, int(width * TITLE_CHARS_PER_INCH)))


# The flow chart -------------------------------------------------------------------------------


def flow_figure(chart: FlowChart) -> Figure:
    """Two panels sharing the layer axis: gradient norm above, grad/weight with thresholds below."""
    bars = chart.bars
    width = min(MAX_WIDTH, max(6.0, 2.5 + 0.06 * len(bars)))
    figure = _new_figure(width, FLOW_HEIGHT)
    top, bottom = figure.subplots(2, 1, sharex=True)
    figure.suptitle(_wrapped(chart.title, width))
    _flow_panel(top, bars, GRAD_NORM, ())
    _flow_panel(bottom, bars, GRAD_TO_WEIGHT, _threshold_lines(chart.thresholds))
    top.set_title("Gradient L2 norm per layer", fontsize=9)
    bottom.set_title("Gradient norm / weight norm per layer (the thresholds dashed)", fontsize=9)
    grouped = max(bar.count for bar in bars) > 1
    bottom.set_xlabel("layer, in execution order" + (" (a bar is a group: its median layer)" if grouped else ""))
    _layer_ticks(bottom, [bar.label for bar in bars])
    legend = _flow_legend(bars, grouped)
    figure.legend(handles=legend, loc="outside lower center", ncols=min(len(legend), _legend_columns(width)),
                  fontsize=8)
    return figure


def _legend_columns(width: float) -> int:
    """Columns of legend entries that fit side by side: a 6-inch figure cut four entries off at both
    edges (a legend outside the axes is not shrunk by the layout)."""
    return max(1, int(width // LEGEND_COLUMN_WIDTH))


def _threshold_lines(thresholds: ChartThresholds) -> tuple[tuple[str, float], ...]:
    return (("vanish_grad_to_weight", thresholds.vanish_grad_to_weight),
            ("explode_grad_to_weight", thresholds.explode_grad_to_weight))


def _flow_panel(axes: Axes, bars: Sequence[Bar], metric: str, thresholds: Sequence[tuple[str, float]]) -> None:
    """One bar per chart bar, from the panel's floor up to log10 of its value."""
    from matplotlib.patches import Rectangle

    logs = [log10(getattr(bar, metric)) for bar in bars]
    floor, ceiling = _limits([v for v in logs if v is not None] + [math.log10(t) for _, t in thresholds])
    for position, (bar, top) in enumerate(zip(bars, logs, strict=True)):
        style = STYLES.get(bar.status, STYLES[Status.HEALTHY])
        if top is None:
            _placeholder(axes, position, getattr(bar, metric), style, floor, f"{metric}-{position}")
            continue
        outlined = bar.status is not Status.HEALTHY
        axes.add_patch(Rectangle((position - 0.4, floor), 0.8, top - floor, facecolor=style.colour,
                                 hatch=style.hatch or None, edgecolor="black" if outlined else style.colour,
                                 linewidth=0.6 if outlined else 0.0, gid=f"bar-{metric}-{position}"))
        if metric == GRAD_TO_WEIGHT and bar.count > 1:
            _group_range(axes, position, bar)
        if style.mark:
            axes.text(position, top, style.mark, rotation=90 if len(style.mark) > 1 else 0, ha="center",
                      va="bottom", fontsize=7)
    for name, value in thresholds:
        _threshold(axes, name, value)
    axes.set_xlim(-0.6, len(bars) - 0.4)
    axes.set_ylim(floor, ceiling)
    axes.set_ylabel(AXIS_LABELS[metric])
    axes.grid(axis="y", linewidth=0.3, alpha=0.5)


def _limits(values: Sequence[float]) -> tuple[float, float]:
    """Whole decades around the values, with room above for the marks."""
    if not values:
        return -1.0, 1.0
    return math.floor(min(values)) - 1.0, math.ceil(max(values)) + 1.0


def _missing(value: float | None) -> str:
    """The placeholder of a value a log axis cannot place."""
    if value is None:
        return "\u2014"  # an em dash, as on the HTML page
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return "0" if value == 0 else "<0"


def _placeholder(axes: Axes, position: int, value: float | None, style: StatusStyle, floor: float,
                 gid: str) -> None:
    """No bar: the value's word at the foot of the column (on white, so a threshold line does not
    cross it; upright when one character: "—" turned on its side read as "|") and, for NaN or Inf,
    a full-height dotted box like the legend's non-finite swatch (the page draws the same box), so
    a NaN layer is seen at a glance, not only as a 7-point word."""
    if value is not None and not math.isfinite(value):
        nonfinite = STYLES[Status.NONFINITE]
        axes.axvspan(position - 0.4, position + 0.4, facecolor="none", hatch=nonfinite.hatch,
                     edgecolor=nonfinite.colour, linewidth=0.6, gid=f"placeholder-{gid}")
    word = _missing_text(value, style)
    upright = len(word) == 1 or "\n" in word  # "—" (over its F or U) turned on its side read as "|"
    axes.text(position, floor + 0.1, word, rotation=0 if upright else 90, ha="center", va="bottom",
              fontsize=7, gid=f"missing-{gid}", bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})


def _missing_text(value: float | None, style: StatusStyle) -> str:
    """The placeholder, and the status mark of a layer whose gradient is 0 ("0 V") or missing
    (frozen, unused: "—" over "F" or "U", one character wide and upright, so the dash still reads
    as a dash): without it such a layer showed only "0" or "—", where the page writes the mark too.
    NaN and Inf are already the non-finite mark."""
    word = _missing(value)
    if not style.mark or word not in ("0", "<0", "\u2014"):
        return word
    return f"{word}\n{style.mark}" if word == "\u2014" else f"{word} {style.mark}"


def _group_range(axes: Axes, position: int, bar: Bar) -> None:
    low, high = log10(bar.low), log10(bar.high)
    if low is not None and high is not None:
        axes.vlines(position, low, high, colors="black", linewidth=0.8, gid=f"range-{position}")


def _threshold(axes: Axes, name: str, value: float) -> None:
    level = math.log10(value)
    axes.axhline(level, color="black", linestyle="--", linewidth=1.0, gid=f"threshold-{name}")
    axes.text(0.995, level, f"{THRESHOLD_NAMES[name]} {value:g}", transform=axes.get_yaxis_transform(),
              ha="right", va="bottom", fontsize=8,
              bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.0})


def _layer_ticks(axes: Axes, labels: Sequence[str]) -> None:
    """Every k-th layer name, so that at most MAX_TICK_LABELS stand side by side."""
    step = math.ceil(len(labels) / MAX_TICK_LABELS)
    positions = list(range(0, len(labels), step))
    axes.set_xticks(positions, [_short(labels[i]) for i in positions], rotation=90, fontsize=7)


def _short(label: str) -> str:
    if len(label) <= LABEL_CHARS:
        return label
    half = (LABEL_CHARS - 1) // 2
    return f"{label[:half]}…{label[-half:]}"


def _flow_legend(bars: Sequence[Bar], grouped: bool) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = [status for status in STYLES if any(bar.status is status for bar in bars)]
    handles: list[Any] = []
    for status in present:
        style = STYLES[status]
        label = f"{style.mark}: {style.meaning}" if style.mark else style.meaning
        handles.append(Patch(facecolor=style.colour, hatch=style.hatch or None, label=label,
                             edgecolor="black" if style.mark else style.colour))
    handles.append(Line2D([], [], color="black", linestyle="--", label="threshold (grad/weight)"))
    if grouped:
        handles.append(Line2D([], [], color="black", linewidth=0.8, label="group's min..max grad/weight"))
    return handles


# Through time ---------------------------------------------------------------------------------


def time_figure(profile: TimeProfile) -> Figure:
    """log10 RMS gradient per time step, far end (left) to near end (right), the horizon dashed."""
    figure = _new_figure(9.0, 4.5)
    axes = figure.subplots()
    figure.suptitle(_wrapped(profile.title, 9.0))
    x = [i * profile.group + (profile.group - 1) / 2 for i in range(len(profile.values))]
    logs = [log10(v) for v in profile.values]
    floor, ceiling = _limits([v for v in logs if v is not None])
    axes.plot(x, [math.nan if v is None else v for v in logs], marker="o", markersize=3, linewidth=1.2,
              color=STYLES[Status.HEALTHY].colour if profile.status is Status.HEALTHY else "black",
              label="RMS gradient reaching the step" + (f" (mean of {profile.group})" if profile.group > 1 else ""),
              gid="profile")
    missing = [position for position, v in zip(x, logs, strict=True) if v is None]
    if missing:
        axes.plot(missing, [floor + 0.05] * len(missing), linestyle="none", marker="v", color="black",
                  label="no gradient (0 or NaN): off the log axis", gid="missing")
    if profile.horizon is not None:
        at = profile.steps - 1 - profile.horizon
        axes.axvline(at, color="black", linestyle="--", linewidth=1.0, gid="horizon",
                     label=f"horizon: {profile.horizon} steps back from the near end")
    axes.set_xlim(-0.5, profile.steps - 0.5)
    _whole_number_ticks(axes)
    axes.set_ylim(floor, ceiling)
    near = "the input's last step" if profile.near_end == "last" else "the input's first step"
    axes.set_xlabel(f"time step (far end -> near end: {near}, nearest the loss)")
    axes.set_ylabel("log10 RMS gradient per time step")
    axes.grid(linewidth=0.3, alpha=0.5)
    axes.legend(loc="best", fontsize=8)
    return figure


# Steps ----------------------------------------------------------------------------------------


def step_figure(chart: StepChart) -> Figure:
    """Lines over steps (log10 values when chart.log_y), over the min..max band when there is one."""
    figure = _new_figure(9.0, 5.0)
    axes = figure.subplots()
    # over the axes, not the figure: a figure title ran under the legend to the right of the axes
    axes.set_title(_wrapped(chart.title, 6.0), fontsize="large")
    x = list(chart.x)
    every = max(1, len(x) // 40)
    if chart.band_low:
        axes.fill_between(x, _plotted(chart.band_low, chart.log_y), _plotted(chart.band_high, chart.log_y),
                          color="#cccccc", linewidth=0, gid="band",
                          label=f"min..max of all {len(chart.lines) + chart.hidden_lines} layers")
    for number, line in enumerate(chart.lines):
        style = STYLES.get(line.status, STYLES[Status.HEALTHY])
        label = _short(line.label) + (f" [{style.mark}: {style.meaning}]" if style.mark else "")
        axes.plot(x, _plotted(line.values, chart.log_y), linestyle=LINE_STYLES[number % len(LINE_STYLES)],
                  marker=MARKERS[number % len(MARKERS)], markevery=every, markersize=3, linewidth=1.2,
                  label=label, gid=f"line-{number}")
    if chart.hidden_lines:
        axes.plot([], [], linestyle="none", label=f"{chart.hidden_lines} more layers: inside the band")
    nonfinite = sorted({step for line in chart.lines for step, value in zip(x, line.values, strict=True)
                        if value is not None and not math.isfinite(value)})
    if nonfinite:  # a diverged loss must not just end the line: the steps are marked along the top
        axes.plot(nonfinite, [0.97] * len(nonfinite), transform=axes.get_xaxis_transform(), linestyle="none",
                  marker="X", color="black", label="NaN/Inf at this step (off the axis)", gid="nonfinite")
    _whole_number_ticks(axes)
    axes.set_xlabel(chart.x_label)
    axes.set_ylabel(f"log10 {chart.y_label}" if chart.log_y else chart.y_label)
    axes.grid(linewidth=0.3, alpha=0.5)
    figure.legend(loc="outside right upper", fontsize=8)
    return figure


def _whole_number_ticks(axes: Any) -> None:
    """Steps are whole numbers: ticks at whole numbers only (a 4-step chart had 0.5, 1.5, ...), and
    only inside the view (a locator's ticks beyond it keep labels a renderer may still lay out)."""
    from matplotlib.ticker import MaxNLocator

    low, high = axes.get_xlim()
    axes.set_xticks([t for t in MaxNLocator(integer=True).tick_values(low, high) if low <= t <= high])


def _plotted(values: Sequence[float | None], log_y: bool) -> list[float]:
    """The y of each point: NaN (a gap in the line) where there is none to draw."""
    if log_y:
        return [math.nan if (v := log10(value)) is None else v for value in values]
    return [value if value is not None and math.isfinite(value) else math.nan for value in values]
