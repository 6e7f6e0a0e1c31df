"""The HTML report as a person sees it: rendered by headless Chromium (issue 15, part 4).

Five reports (vanishing: builtin:deep-sigmoid, exploding: builtin:relu-normal-init, NaN:
builtin:nan-log, recurrent: builtin:rnn-long, and a watched training loop) are rendered with
``--format html``'s renderer, opened in Chromium (tests/browser.py) and checked there:
- the page loads without a console error and requests nothing but itself (no network, no asset);
- every chart is drawn: the pixels inside its box are not blank, and its box stays within
  1200 x 900 CSS pixels;
- the flow chart's axis titles with units and its two threshold lines (at the report's thresholds,
  each with its words beside it) are drawn inside it, the x caption 2 px clear of the names above;
- the flow chart's DOM as the browser parsed it has one bar per layer with parameters in each panel,
  naming the report's layers in execution order with their status and numbers; each finite number
  is a visible bar, and every non-healthy or NaN bar has a visible text mark besides its colour;
- seen in greyscale (Chromium's achromatopsia emulation) the bars of different statuses still
  differ, and each status drawn is named in the chart; the exploding threshold line, where it
  crosses a dark cross-hatched bar, is a dark row between white rows (its halo); a 1,000-layer
  chart's 3-px vanishing bars read lighter than its healthy ones, not as a black band;
- a screen reader announces each chart as an image named by its own title (ids unique);
- no two texts of a chart are drawn over each other;
- the recurrent report has one through-time chart per recurrent layer, a drawn point per time step
  with the report's value, and the horizon line where the point of its step is drawn; the watch
  has its loss and step-norm charts; a recipe run's page has each scan's flow chart with its own
  bars; a 1,000-layer report keeps a bounded chart of 200 bars on a page no wider than the window;
  so does a report naming a 300-character layer in its tables and recommendations (names wrap).
Screenshots go to $GRADCHECK_SCREENSHOTS when set (to look at), else to tmp_path: CASE.png (the
whole page), CASE-N-KIND.png (each chart), CASE-flow-grey.png (the flow chart in greyscale),
exploding-threshold-grey.png (the threshold line over a bar), thousand-layers-flow-grey.png and
long-layer-name.png,
next to CASE.html. The instruments are tested on hand-written pages first, each shown to fail:
the console check catches an error, the request check a URL, the blank check an empty chart, the
greyscale check two statuses told by hue alone, and the PNG reader gives Pillow's pixels.
Without Chromium (or when it does not start) every test here skips, saying why.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser import WINDOW, Box, Browser, BrowserUnavailable, Page, start_browser
from png_reader import grey_levels, ink_fraction, read_png

from gradcheck_cli.report.charts import MAX_BARS, charts_of
from gradcheck_cli.report.records import LayerReport, LossInfo, Report, ScanResult, Status

MIN_INK = 0.02
"""A drawn chart has at least this share of pixels that are not its background (the blank chart
of the instrument test has 0; the real charts measure 0.05 (axes, grid and a line, or NaN marks
only) to 0.4 (ten hatched bars))."""
MAX_CHART = (1200, 900)
"""The SVG contract's bound on a chart's box in CSS pixels, whatever the model size."""
CASES = ("vanishing", "exploding", "nonfinite", "recurrent", "watch")
BUILTINS = {"vanishing": "builtin:deep-sigmoid", "exploding": "builtin:relu-normal-init",
            "nonfinite": "builtin:nan-log", "recurrent": "builtin:rnn-long"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    try:
        started = start_browser(tmp_path_factory.mktemp("chromium"))
    except BrowserUnavailable as reason:
        pytest.skip(str(reason))
    yield started
    started.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("GRADCHECK_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def report_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Report]:
    """Each case's report, made once per module (the scans are seeded: the same report every run)."""
    made: dict[str, Report] = {}

    def make(case: str) -> Report:
        if case not in made:
            made[case] = _watched(tmp_path_factory.mktemp("watch")) if case == "watch" else \
                _thousand_layers() if case == "thousand-layers" else _scanned(case)
        return made[case]

    return make


def _scanned(case: str) -> Report:
    from gradcheck_cli import scan

    return scan(BUILTINS[case])


def _watched(folder: Path) -> Report:
    """A tiny seeded training loop under gradcheck_cli.watch: an MLP fitting sin(x.sum()), 100 steps."""
    import torch
    from torch import nn
    from training_runs import watched_regression

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.randn(64, 4)
    return watched_regression(model, 0.05, x, torch.sin(x.sum(1, keepdim=True)), 100, folder / "watch.json")


def _thousand_layers() -> Report:
    """A 1,000-layer report built in code: the first 300 layers vanishing, the gradient growing along depth."""
    layers = tuple(LayerReport(f"blocks.{i}.fc", "Linear", i, 100, Status.VANISHING if i < 300 else Status.HEALTHY,
                               10 ** (-9 + 8 * i / 1000), 2.0, 10 ** (-9 + 8 * i / 1000) / 2, 0) for i in range(1000))
    return Report("models/deep.py", "0.1.0", {"batches": 3, "batch_size": 16, "seed": 0, "device": "cpu",
                                              "steps": 0, "fail_on": ["exploding", "nonfinite"]},
                  LossInfo("mse", (1.0, 0.9, 0.8)), Status.VANISHING, layers, (), ())


def _html(report: Report) -> str:
    from gradcheck_cli.report.render import OutputFormat, render

    return render([ScanResult(report.target, report.target, report)], OutputFormat.HTML)


def _open(browser: Browser, path: Path, html: str) -> Page:
    path.write_text(html, encoding="utf-8")
    return browser.open(path.resolve().as_uri())


# --- the instruments, on hand-written pages: each check can fail -----------------------------------

def _chart_page(drawn: bool) -> str:
    bars = ('<rect x="40" y="60" width="30" height="100" fill="#3366cc"/>'
            '<rect x="90" y="20" width="30" height="140" fill="#cc3333"/>') if drawn else ""
    return ('<!doctype html><html><head><meta charset="utf-8"><title>t</title></head>'
            '<body style="margin:0;background:#fff">'
            '<svg class="chart" data-chart="flow" width="200" height="180" role="img" aria-labelledby="t1">'
            f'<title id="t1">flow</title><rect width="200" height="180" fill="#ffffff"/>{bars}</svg>'
            '</body></html>')


def test_the_console_check_catches_errors_and_the_request_check_external_urls(browser: Browser,
                                                                               tmp_path: Path) -> None:
    broken = ('<!doctype html><html><body><img src="missing.png"><img src="http://example.invalid/x.png">'
              '<script>console.error("logged on purpose"); throw new Error("thrown on purpose");</script>'
              '</body></html>')
    page = _open(browser, tmp_path / "broken.html", broken)
    try:
        errors = "\n".join(page.errors)
        assert "logged on purpose" in errors and "thrown on purpose" in errors
        assert "missing.png" in errors
        assert _foreign(page, tmp_path / "broken.html") == [(tmp_path / "missing.png").as_uri(),
                                                            "http://example.invalid/x.png"]
    finally:
        page.close()
    clean = _open(browser, tmp_path / "clean.html", _chart_page(drawn=True))
    try:
        assert clean.errors == []
        assert _foreign(clean, tmp_path / "clean.html") == []
    finally:
        clean.close()


def test_the_blank_check_tells_a_drawn_chart_from_an_empty_one(browser: Browser, tmp_path: Path) -> None:
    inks = {}
    for drawn in (False, True):
        page = _open(browser, tmp_path / f"chart-{drawn}.html", _chart_page(drawn))
        try:
            box = page.box('svg[data-chart="flow"]')
            assert box is not None and (box.width, box.height) == (200, 180)
            image = read_png(page.screenshot(box))
            inks[drawn] = ink_fraction(image)
            if drawn:  # the reader's pixels are where the page drew them
                assert image.pixel(50, 100) == (0x33, 0x66, 0xCC) and image.pixel(100, 30) == (0xCC, 0x33, 0x33)
                assert image.pixel(5, 5) == (255, 255, 255)
        finally:
            page.close()
    assert inks[False] == 0.0
    assert inks[True] == pytest.approx((30 * 100 + 30 * 140) / (200 * 180))
    assert inks[True] > MIN_INK


def test_the_png_reader_reads_a_screenshot_as_pillow_does(browser: Browser, report_of: Callable[[str], Report],
                                                           tmp_path: Path) -> None:
    """Every pixel of a report page's screenshot (text, hatching, lines: rows with each PNG filter,
    Paeth and Average included)."""
    image_module = pytest.importorskip("PIL.Image")
    page = _open(browser, tmp_path / "page.html", _html(report_of("vanishing")))
    try:
        png = page.screenshot()
    finally:
        page.close()
    mine = read_png(png)
    with image_module.open(io.BytesIO(png)) as theirs:
        assert (mine.width, mine.height) == theirs.size
        rgb = theirs.convert("RGB").tobytes()
    assert mine.pixels() == [tuple(rgb[i:i + 3]) for i in range(0, len(rgb), 3)]


def test_the_greyscale_check_catches_statuses_told_by_colour_alone(browser: Browser, tmp_path: Path) -> None:
    """Two flat fills of one grey level (a mid grey and a green of the same luminance): only the hue
    tells them apart, which a person without colour vision cannot see."""
    bars = ''.join(f'<rect class="bar" data-status="{status}" x="{x}" y="20" width="40" height="100" fill="{fill}"/>'
                   for status, x, fill in (("healthy", 20, "#808080"), ("vanishing", 80, "#3aa367")))
    page = _open(browser, tmp_path / "hue.html",
                 '<!doctype html><html><body><svg class="chart" data-chart="flow" width="200" height="160">'
                 f'<g class="panel" data-metric="grad_norm">{bars}</g><text x="20" y="150">healthy vanishing</text>'
                 '</svg></body></html>')
    try:
        with pytest.raises(AssertionError, match="vanishing bars look alike in greyscale"):
            _check_statuses_read_in_greyscale(page, tmp_path / "hue-grey.png")
    finally:
        page.close()


# --- the five reports -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_the_report_renders_in_chromium(case: str, browser: Browser, report_of: Callable[[str], Report],
                                        screenshots: Path) -> None:
    report = report_of(case)
    path = screenshots / f"{case}.html"
    page = _open(browser, path, _html(report))
    try:
        (screenshots / f"{case}.png").write_bytes(page.screenshot())
        assert page.errors == [], f"console errors on {path}"
        assert _foreign(page, path) == [], "the page requested something besides itself"
        assert page.evaluate("document.scripts.length") == 0
        kinds = _check_charts_are_drawn(page, case, screenshots)
        expected = {"flow"} | ({"through-time"} if case == "recurrent" else set()) | \
            ({"loss", "step-norms"} if case == "watch" else set())
        assert expected <= set(kinds), f"charts drawn: {kinds}"
        _check_flow_bars(page, report)
        _check_flow_axes(page, report)
        _check_charts_are_announced(page)
        if case == "recurrent":
            _check_through_time(page, report)
        if case == "exploding":
            _check_threshold_line_stands_out_over_dark_bars(page, screenshots / "exploding-threshold-grey.png")
        _check_statuses_read_in_greyscale(page, screenshots / f"{case}-flow-grey.png")
    finally:
        page.close()


@pytest.mark.parametrize("case", [*CASES, "thousand-layers"])
def test_no_chart_text_is_drawn_over_another(case: str, browser: Browser, report_of: Callable[[str], Report],
                                             tmp_path: Path) -> None:
    page = _open(browser, tmp_path / f"{case}.html", _html(report_of(case)))
    try:
        assert _overlapping_texts(page) == []
    finally:
        page.close()


def test_a_recipe_run_page_has_each_scans_charts(browser: Browser, report_of: Callable[[str], Report],
                                                  screenshots: Path) -> None:
    """A recipe run's one page, two scans and one that failed: each scan's flow chart with its own
    bars, every chart drawn and announced by its own title."""
    from gradcheck_cli.report.render import OutputFormat, render

    reports = [report_of("vanishing"), report_of("exploding")]
    results = [ScanResult(name, report.target, report) for name, report in zip(("sigmoid", "relu"), reports)]
    results.append(ScanResult("broken", "models/broken.py", None, "models/broken.py: no model found"))
    path = screenshots / "recipe-run.html"
    page = _open(browser, path, render(results, OutputFormat.HTML, combined=True))
    try:
        (screenshots / "recipe-run.png").write_bytes(page.screenshot())
        assert page.errors == [] and _foreign(page, path) == []
        assert _check_charts_are_drawn(page, "recipe-run", screenshots) == ["flow", "flow"]
        for index, report in enumerate(reports):
            _check_flow_bars(page, report, index)
        _check_charts_are_announced(page)
        assert "models/broken.py: no model found" in page.evaluate("document.body.innerText")
    finally:
        page.close()


def test_a_thousand_layer_report_stays_bounded_in_chromium(browser: Browser, report_of: Callable[[str], Report],
                                                           screenshots: Path) -> None:
    """1,000 layers: MAX_BARS bars of 5 layers each, the chart within its bounds and drawn, and the page
    no wider than the window (it scrolls down, never sideways)."""
    report = report_of("thousand-layers")
    path = screenshots / "thousand-layers.html"
    page = _open(browser, path, _html(report))
    try:
        (screenshots / "thousand-layers.png").write_bytes(page.screenshot())
        assert page.errors == [] and _foreign(page, path) == []
        assert "flow" in _check_charts_are_drawn(page, "thousand-layers", screenshots)
        for metric in ("grad_norm", "grad_to_weight"):
            counts = page.evaluate(f"[...document.querySelectorAll('svg[data-chart=\"flow\"] "
                                   f"g.panel[data-metric=\"{metric}\"] rect.bar')].map(r => r.dataset.count)")
            assert counts == ["5"] * MAX_BARS, metric
        assert page.evaluate("document.documentElement.scrollWidth") <= WINDOW[0]
        _check_thin_bars_keep_their_tone(page, screenshots / "thousand-layers-flow-grey.png")
    finally:
        page.close()


def test_a_300_character_layer_name_keeps_the_page_within_the_window(browser: Browser, screenshots: Path) -> None:
    """A layer name of 300 characters without a break point (the layer table, the findings, the
    recommendations and their before/after table all name it) wraps: the page is no wider than
    the window, so no column is off-screen. Before the fix the tables ran thousands of px wide."""
    import json

    from verified_reports import verified_report

    name = "encoder." + "very_long_recurrent_block_name_" * 9 + "x" * 13
    assert len(name) == 300 and "net.0" in json.dumps(verified_report().to_dict())
    report = Report.from_dict(json.loads(json.dumps(verified_report().to_dict()).replace("net.0", name)))
    path = screenshots / "long-layer-name.html"
    page = _open(browser, path, _html(report))
    try:
        (screenshots / "long-layer-name.png").write_bytes(page.screenshot())
        assert page.errors == []
        assert page.evaluate("document.body.innerText").count(name[-40:]) >= 3  # the name is on the page, whole
        widest = page.evaluate("Math.max(...[...document.querySelectorAll('table')]"
                               ".map(t => t.getBoundingClientRect().right))")
        assert widest <= WINDOW[0], f"a table ends at {widest} px"
        assert page.evaluate("document.documentElement.scrollWidth") <= WINDOW[0]
    finally:
        page.close()


def _check_thin_bars_keep_their_tone(page: Page, keep: Path) -> None:
    """Seen in greyscale, a stretch of 3-px vanishing bars (light blue, lightly hatched) is lighter
    than a stretch of healthy ones and far from black: a dense hatch and a black outline on bars
    this thin read as a dark band, the opposite of the vanishing colour."""
    page.greyscale()
    try:
        chart = page.box('svg[data-chart="flow"]')
        assert chart is not None
        keep.write_bytes(page.screenshot(chart))
        bars = 'svg[data-chart="flow"] g.panel[data-metric="grad_norm"] rect.bar'
        boxes = page.evaluate(f"""[...document.querySelectorAll('{bars}')].map(r => {{
          const b = r.getBoundingClientRect();
          return [r.dataset.status, b.x + scrollX, b.bottom + scrollY, b.width]; }})""")
        tone = {}
        for status, first in (("vanishing", 10), ("healthy", 120)):  # bars 0..59 vanish in this report
            stretch = boxes[first:first + 30]
            assert {bar[0] for bar in stretch} == {status} and stretch[0][3] < 4
            left, bottom = stretch[0][1], stretch[0][2]
            tone[status] = grey_levels(read_png(page.screenshot(Box(left, bottom - 14, stretch[-1][1] - left, 12))))
        assert tone["vanishing"][0] > tone["healthy"][0] + 24 and tone["vanishing"][0] > 150, tone
    finally:
        page.greyscale(False)


def _check_charts_are_drawn(page: Page, case: str, screenshots: Path) -> list[str]:
    """Each chart's box is bounded and has ink in it (its screenshot kept as CASE-N-KIND.png);
    returns the chart kinds, in page order."""
    kinds: list[str] = page.evaluate("[...document.querySelectorAll('svg.chart')].map(s => s.dataset.chart)")
    for index, kind in enumerate(kinds):
        box = page.box("svg.chart", index)
        assert box is not None
        assert 0 < box.width <= MAX_CHART[0] and 0 < box.height <= MAX_CHART[1], (kind, box)
        picture = page.screenshot(box)
        (screenshots / f"{case}-{index}-{kind}.png").write_bytes(picture)
        ink = ink_fraction(read_png(picture))
        assert ink >= MIN_INK, f"{case}: the {kind} chart (#{index}) looks blank: {ink:.4f} of its pixels drawn"
    return kinds


BARS_AS_SEEN = """((metric, chart) => {
  const svg = document.querySelectorAll('svg[data-chart="flow"]')[chart], frame = svg.getBoundingClientRect();
  const seen = e => { const b = e.getBoundingClientRect();
    return b.width >= 1 && b.height >= 1 && getComputedStyle(e).visibility === 'visible' && b.left >= frame.left - 1
      && b.right <= frame.right + 1 && b.top >= frame.top - 1 && b.bottom <= frame.bottom + 1; };
  return [...svg.querySelectorAll(`g.panel[data-metric="${metric}"] rect.bar`)].map(r => {
    const marks = [...r.parentNode.querySelectorAll('text')].filter(t => t.dataset.layer === r.dataset.layer);
    return [r.dataset.layer, r.dataset.status, r.dataset.count, r.dataset.value, seen(r),
            marks.filter(seen).map(t => t.textContent.trim()).join(' ')]; }); })"""
"""Per bar of a panel of the page's chart-th flow chart: its data attributes, whether it is drawn (a
box of at least 1 x 1 px, visible, inside the chart) and the text of its marks that are drawn."""


def _check_flow_bars(page: Page, report: Report, chart_index: int = 0) -> None:
    """One bar per layer with parameters in each panel, as the browser parsed and drew them: the
    layers' names in execution order, their statuses and the report's numbers, each finite number
    a visible bar; a visible text mark on each non-healthy or non-finite bar (status is never shown
    by colour alone)."""
    layers = sorted((layer for layer in report.layers if layer.params > 0), key=lambda x: x.index)
    chart = charts_of(report).flow
    assert chart is not None and len(chart.bars) == len(layers)  # no grouping at this size
    for metric in ("grad_norm", "grad_to_weight"):
        bars = page.evaluate(f"({BARS_AS_SEEN})('{metric}', {chart_index})")
        assert len(bars) == len(layers), f"{metric}: {len(bars)} bars for {len(layers)} layers with parameters"
        for (name, status, count, value, drawn, mark), layer in zip(bars, layers):
            assert (name, status, count) == (layer.name, layer.status.value, "1"), f"{metric}: bar {name}"
            number = getattr(layer, metric)
            assert value == ("" if number is None else repr(number)), f"{metric}: bar {name}"
            finite = number is not None and math.isfinite(number)
            assert drawn or not finite, f"{metric}: the bar of {name} ({number!r}) is not drawn"
            if layer.status is not Status.HEALTHY or not finite:
                assert mark, f"{metric}: the {layer.status.value} bar of {name} has no visible text mark"


def _check_flow_axes(page: Page, report: Report) -> None:
    """The flow chart's axis titles (with their units) and its two threshold lines, at the report's
    thresholds, are drawn inside the chart, each line with a text saying which it is."""
    drawn = page.evaluate("""(() => { const svg = document.querySelector('svg[data-chart="flow"]'),
      frame = svg.getBoundingClientRect(), seen = e => { const b = e.getBoundingClientRect();
        return (b.width > 0 || b.height > 0) && b.left >= frame.left - 1 && b.right <= frame.right + 1
          && b.top >= frame.top - 1 && b.bottom <= frame.bottom + 1; };
      const texts = [...svg.querySelectorAll('text')].filter(seen), middle = e => {
        const b = e.getBoundingClientRect(); return b.top + b.height / 2; };
      return [texts.map(t => t.textContent.trim()),
              [...svg.querySelectorAll('g.panel[data-metric="grad_to_weight"] line.threshold')]
                .map(l => [l.dataset.threshold, l.dataset.value, seen(l), texts.filter(t =>
                  Math.abs(middle(t) - middle(l)) < 8).map(t => t.textContent.trim()).join(' | ')])]; })()""")
    texts, lines = drawn
    assert {"log10 gradient L2 norm", "log10 grad/weight"} <= set(texts), "an axis title is not drawn"
    chart = charts_of(report).flow
    assert chart is not None
    limits = chart.thresholds
    assert [line[:3] for line in lines] == [["vanish_grad_to_weight", repr(limits.vanish_grad_to_weight), True],
                                            ["explode_grad_to_weight", repr(limits.explode_grad_to_weight), True]]
    beside = [line[3] for line in lines]
    assert "vanish" in beside[0] and "explod" in beside[1], f"threshold lines without their words: {beside}"
    _check_x_caption_clears_the_names(page)


def _check_x_caption_clears_the_names(page: Page) -> None:
    """The flow chart's x-axis caption is drawn below every layer name or position under the bars,
    at least 2 px clear of the lowest (rotated names reach down further than their box suggests
    only at their ends, which the box includes)."""
    lowest, caption = page.evaluate("""(() => { const g = document.querySelector('svg[data-chart="flow"] g.x-labels');
      return [Math.max(...[...g.querySelectorAll('text.tick')].map(t => t.getBoundingClientRect().bottom)),
              g.querySelector('text.axis-label').getBoundingClientRect().top]; })()""")
    assert caption >= lowest + 2, f"the x caption (top {caption}) touches the names above it (bottom {lowest})"


def _check_threshold_line_stands_out_over_dark_bars(page: Page, keep: Path) -> None:
    """In greyscale, where the exploding threshold line crosses a dark cross-hatched bar, the
    line's rows are dark and the rows just above and below it are white (its halo): the line
    is not lost in the hatching."""
    page.greyscale()
    try:
        line, bar = page.evaluate("""(() => {
          const box = e => { const b = e.getBoundingClientRect();
            return [b.x + scrollX, b.y + scrollY, b.width, b.height]; };
          const panel = document.querySelector('svg[data-chart="flow"] g.panel[data-metric="grad_to_weight"]');
          const line = panel.querySelector('line.threshold[data-threshold="explode_grad_to_weight"]');
          const y = box(line)[1] + box(line)[3] / 2;
          const bar = [...panel.querySelectorAll('rect.bar[data-status="exploding"]')].map(box)
            .find(([x, top, w, h]) => top < y - 8 && top + h > y + 8);
          return [y, bar]; })()""")
        assert bar is not None, "no exploding bar crosses the exploding threshold line"
        image = read_png(page.screenshot(Box(bar[0] + 2, round(line) - 6, bar[2] - 4, 12)))
        keep.write_bytes(page.screenshot(Box(bar[0] - 20, line - 30, bar[2] + 40, 60)))
        rows = [sum(image.pixel(x, y)[0] for x in range(image.width)) / image.width for y in range(image.height)]
        darkest = min(range(4, 8), key=lambda y: rows[y])
        assert rows[darkest] < 140, rows
        assert max(rows[darkest - 3:darkest]) > 225 and max(rows[darkest + 1:darkest + 4]) > 225, rows
    finally:
        page.greyscale(False)


def _check_charts_are_announced(page: Page) -> None:
    """A screen reader announces each chart as an image named by its own title (ids are unique on the
    page, so a chart's aria-labelledby cannot name another section's title)."""
    ids = page.evaluate("[...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids)), f"ids used twice: {sorted({i for i in ids if ids.count(i) > 1})}"
    titles = page.evaluate("[...document.querySelectorAll('svg.chart')].map(s => {"
                           " const t = document.getElementById(s.getAttribute('aria-labelledby'));"
                           " return t && s.contains(t) && t.tagName === 'title' ? t.textContent.trim() : null; })")
    assert titles and all(titles), f"a chart without its own <title> (aria-labelledby): {titles}"
    assert page.images_as_announced() == titles


def _check_through_time(page: Page, report: Report) -> None:
    """One chart per recurrent layer; one point per time step carrying the report's value (far end
    first), each drawn; the horizon line drawn where the point of its time step is."""
    profiles = charts_of(report).through_time
    assert profiles, "builtin:rnn-long has a recurrent layer"
    drawn = page.evaluate("""[...document.querySelectorAll('svg[data-chart="through-time"]')].map(svg => {
      const frame = svg.getBoundingClientRect(), centre = e => { const b = e.getBoundingClientRect();
        return (b.width > 0 || b.height > 0) && b.left >= frame.left && b.right <= frame.right
          ? b.left + b.width / 2 : null; };
      return [svg.dataset.layer, [...svg.querySelectorAll('[data-value]:not(.horizon)')].map(e =>
        [e.dataset.value, centre(e)]), [...svg.querySelectorAll('line.horizon')].map(centre)]; })""")
    assert [name for name, _, _ in drawn] == [p.layer for p in profiles]
    for (name, points, horizons), profile in zip(drawn, profiles):
        assert [value for value, _ in points] == [repr(v) for v in profile.values], name
        assert all(x is not None for _, x in points), f"{name}: a point is not drawn inside its chart"
        if profile.horizon is None:
            assert horizons == [], name
            continue
        assert profile.group == 1, "the test's profile is not grouped"
        assert len(horizons) == 1 and horizons[0] == pytest.approx(points[-1 - profile.horizon][1], abs=1.5), \
            f"{name}: the horizon line is not at the point {profile.horizon} steps back from the near end"


def _overlapping_texts(page: Page) -> list[str]:
    """Pairs of texts in one chart whose boxes overlap by more than a pixel each way (unreadable)."""
    return list(page.evaluate("""(() => { const found = [];
      document.querySelectorAll('svg.chart').forEach(svg => {
        const texts = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim())
          .map(t => [t.textContent.trim(), t.getBoundingClientRect()]);
        texts.forEach(([a, p], i) => texts.slice(i + 1).forEach(([b, q]) => {
          const wide = Math.min(p.right, q.right) - Math.max(p.left, q.left);
          const high = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
          if (wide > 1 && high > 1) found.push(`${svg.dataset.chart}: "${a}" over "${b}"`); })); });
      return found; })()"""))


def _check_statuses_read_in_greyscale(page: Page, keep: Path) -> None:
    """Seen without colour, the bars of two statuses still differ (in grey level or in pattern),
    and each status drawn is named in the chart's text (its legend)."""
    page.greyscale()
    try:
        chart = page.box('svg[data-chart="flow"]')
        assert chart is not None
        keep.write_bytes(page.screenshot(chart))
        bars = page.evaluate("""[...document.querySelectorAll('svg[data-chart="flow"] rect.bar')].map(r => {
          const b = r.getBoundingClientRect(); return [r.dataset.status, b.x + scrollX, b.y + scrollY, b.width,
          b.height]; })""")
        looks = {}
        for status, x, y, width, height in bars:
            if status not in looks and width >= 10 and height >= 10:  # 3 px in from the outline, up to 16 px
                inside = Box(x + 3, y + 3, min(16, width - 6), min(16, height - 6))
                looks[status] = grey_levels(read_png(page.screenshot(inside)))
        for first, second in itertools.combinations(sorted(looks), 2):
            (mean_a, spread_a), (mean_b, spread_b) = looks[first], looks[second]
            assert abs(mean_a - mean_b) > 24 or abs(spread_a - spread_b) > 24, \
                f"{first} and {second} bars look alike in greyscale: {looks[first]} vs {looks[second]}"
        words = page.evaluate("document.querySelector('svg[data-chart=\"flow\"]').textContent")
        assert all(status in words for status in {bar[0] for bar in bars}), "a status drawn but not named"
    finally:
        page.greyscale(False)


def _foreign(page: Page, path: Path) -> list[str]:
    """What the page requested besides itself and inline data: URLs."""
    own = path.resolve().as_uri()
    return [url for url in page.requests if url != own and not url.startswith("data:")]
