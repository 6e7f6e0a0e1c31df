"""`gradcheck plot REPORT.json -o FILE.png|svg|pdf` and report/render/images.py (issue 15, part 2).

The drawn numbers are read back from the matplotlib Figure's artists before saving (bar tops, the
points of a line, the threshold and horizon lines) and compared with the report's own numbers, in
hand-built reports (plain records, no scan) and in real scans of builtin:deep-sigmoid and
builtin:rnn-long (module fixtures: each scan runs once). A fresh interpreter checks what no test
in this process could: that `plot --help` imports neither torch nor matplotlib, that no pyplot is
ever imported, and the one-line error when matplotlib is missing.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from cli_errors import assert_one_line_error
from typer.testing import CliRunner

from gradcheck_cli.cli.app import app
from gradcheck_cli.report.charts import MAX_BARS, charts_of, flow_chart, thresholds_of
from gradcheck_cli.report.records import VERDICT_ORDER, LayerReport, LossInfo, Report, ScanResult, Status, ThroughTime
from gradcheck_cli.report.render.json import render_run_json
from gradcheck_cli.report.series import LayerSeries, WatchSeries

needs_matplotlib = pytest.mark.skipif(find_spec("matplotlib") is None, reason="matplotlib is not installed")
runner = CliRunner()
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<?xml", "pdf": b"%PDF-"}


def _layer(index: int, status: Status, grad_norm: float | None, weight_norm: float = 2.0, params: int = 10,
           through_time: ThroughTime | None = None) -> LayerReport:
    ratio = grad_norm / weight_norm if grad_norm is not None else None
    return LayerReport(name=f"net.{index}", type="Linear", index=index, params=params, status=status,
                       grad_norm=grad_norm, weight_norm=weight_norm, grad_to_weight=ratio,
                       nonfinite_grads=1 if grad_norm is not None and not math.isfinite(grad_norm) else 0,
                       through_time=through_time)


def _report(layers: tuple[LayerReport, ...], config: dict[str, Any] | None = None,
            series: WatchSeries | None = None) -> Report:
    verdict = next((s for s in VERDICT_ORDER if any(layer.status is s for layer in layers)), Status.HEALTHY)
    return Report(target="models/test.py", tool_version="0.1.0", config=config or {"steps": 0},
                  loss=LossInfo("mse", (1.0,)), verdict=verdict, layers=layers, findings=(), recommendations=(),
                  series=series)


def _mixed() -> Report:
    """Vanishing, healthy, exploding, a NaN gradient, an Inf gradient and a frozen layer (no gradient)."""
    return _report((_layer(0, Status.VANISHING, 3e-9), _layer(1, Status.HEALTHY, 0.25),
                    _layer(2, Status.EXPLODING, 4.5e4), _layer(3, Status.NONFINITE, math.nan),
                    _layer(4, Status.NONFINITE, math.inf), _layer(5, Status.FROZEN, None)))


def _deep(layers: int) -> Report:
    return _report(tuple(_layer(i, Status.HEALTHY, 10.0 ** (-(i % 30) / 3)) for i in range(layers)))


def _watch() -> Report:
    steps = (0, 5, 10, 15)
    series = WatchSeries(steps, (2.0, 1.5, math.nan, 0.75), (
        LayerSeries("net.0", (0.5, 0.25, None, 0.125), (None,) * 4, (1.0,) * 4),
        LayerSeries("net.1", (1e-3, 2e-3, 4e-3, 8e-3), (None,) * 4, (1.0,) * 4)))
    return _report((_layer(0, Status.HEALTHY, 0.2), _layer(1, Status.VANISHING, 1e-3)), series=series)


def _recurrent(values: tuple[float, ...], horizon: int | None) -> Report:
    profile = ThroughTime(values, "last", horizon)
    return _report((_layer(0, Status.VANISHING, 1e-4, through_time=profile), _layer(1, Status.HEALTHY, 0.3)))


def _patches(axes: Any, prefix: str) -> dict[int, Any]:
    return {int(p.get_gid().rsplit("-", 1)[1]): p for p in axes.patches if (p.get_gid() or "").startswith(prefix)}


def _texts(axes: Any) -> list[str]:
    return [t.get_text() for t in axes.texts]


def _xs(line: Any) -> list[float]:
    return [float(v) for v in line.get_xdata()]


def _ys(line: Any) -> list[float]:
    return [float(v) for v in line.get_ydata()]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == MAGIC["png"] and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# The drawing: numbers, marks, thresholds -------------------------------------------------------


@needs_matplotlib
def test_each_bar_top_is_log10_of_the_reports_number_and_missing_values_get_no_bar() -> None:
    from gradcheck_cli.report.render.images import chart_figure

    report = _mixed()
    chart = charts_of(report).flow
    assert chart is not None
    figure = chart_figure(chart)
    top, bottom = figure.axes[:2]
    for axes, metric in ((top, "grad_norm"), (bottom, "grad_to_weight")):
        bars = _patches(axes, f"bar-{metric}-")
        expected = {i: getattr(layer, metric) for i, layer in enumerate(report.layers)}
        drawable = {i for i, value in expected.items() if value is not None and math.isfinite(value)}
        assert set(bars) == drawable == {0, 1, 2}  # no bar for NaN, Inf or a missing value
        for i in drawable:
            drawn = bars[i].get_y() + bars[i].get_height()
            assert drawn == pytest.approx(math.log10(expected[i]), abs=1e-12), (metric, i)
        placeholders = {t.get_gid(): t.get_text() for t in axes.texts if (t.get_gid() or "").startswith("missing")}
        assert placeholders == {f"missing-{metric}-{i}": text for i, text in ((3, "NaN"), (4, "Inf"), (5, "\u2014\nF"))}
    assert top.get_ylabel() == "log10 gradient L2 norm" and bottom.get_ylabel() == "log10 grad/weight"


@needs_matplotlib
def test_status_is_marked_by_text_and_hatch_not_colour_alone() -> None:
    from gradcheck_cli.report.render.images import chart_figure

    chart = charts_of(_mixed()).flow
    assert chart is not None
    figure = chart_figure(chart)
    top = figure.axes[0]
    bars = _patches(top, "bar-grad_norm-")
    assert bars[1].get_hatch() is None  # healthy: plain
    assert bars[0].get_hatch() and bars[2].get_hatch() and bars[0].get_hatch() != bars[2].get_hatch()
    # marks on bars, placeholders where there is none (a frozen layer's "—" over its F, as the page marks it)
    assert _texts(top) == ["V", "E", "NaN", "Inf", "\u2014\nF"]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert {"V: vanishing", "E: exploding", "NaN: non-finite gradient (NaN/Inf)", "healthy"} <= set(legend)


def test_the_status_styles_differ_in_greyscale_and_in_pattern() -> None:
    from gradcheck_cli.report.render.images import STYLES

    assert set(STYLES) == set(Status)  # a new status cannot be forgotten
    lightness = sorted(_luminance(style.colour) for style in STYLES.values())
    assert min(b - a for a, b in zip(lightness, lightness[1:])) >= 0.08  # apart on a greyscale print
    flagged = [style for status, style in STYLES.items() if status is not Status.HEALTHY]
    assert len({style.hatch for style in flagged}) == len(flagged) and all(style.mark for style in flagged)


def _luminance(colour: str) -> float:
    red, green, blue = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


@needs_matplotlib
@pytest.mark.parametrize("config", [{"steps": 0}, {"steps": 0, "thresholds": {"vanish_grad_to_weight": 1e-5,
                                                                             "explode_grad_to_weight": 50.0}}])
def test_the_threshold_lines_are_the_reports_thresholds_and_labelled(config: dict[str, Any]) -> None:
    from gradcheck_cli.report.render.images import chart_figure

    report = _report(_mixed().layers, config=config)
    chart = charts_of(report).flow
    assert chart is not None
    bottom = chart_figure(chart).axes[1]
    lines = {line.get_gid(): _ys(line)[0] for line in bottom.lines if line.get_gid()}
    wanted = thresholds_of(report)
    assert lines == pytest.approx({"threshold-vanish_grad_to_weight": math.log10(wanted.vanish_grad_to_weight),
                                   "threshold-explode_grad_to_weight": math.log10(wanted.explode_grad_to_weight)})
    assert f"vanishing below {wanted.vanish_grad_to_weight:g}" in _texts(bottom)
    assert f"exploding above {wanted.explode_grad_to_weight:g}" in _texts(bottom)
    assert not _texts(chart_figure(chart).axes[0]).count("vanishing below")  # only on the grad/weight panel


@needs_matplotlib
def test_a_thousand_layers_give_a_bounded_image_with_readable_names() -> None:
    from gradcheck_cli.report.render.images import MAX_TICK_LABELS, ImageFormat, chart_figure, chart_image

    chart = flow_chart(_deep(1000), thresholds_of(_deep(1000)))
    assert chart is not None and len(chart.bars) <= MAX_BARS
    width, height = _png_size(chart_image(chart, ImageFormat.PNG))
    assert width <= 1200 and height <= 700  # the README says so
    figure = chart_figure(chart)
    assert len(_patches(figure.axes[1], "bar-grad_to_weight-")) == len(chart.bars)
    labels = [t.get_text() for t in figure.axes[1].get_xticklabels()]
    assert 0 < len(labels) <= MAX_TICK_LABELS and labels[0] == chart.bars[0].label
    small, _ = _png_size(chart_image(charts_of(_mixed()).flow, ImageFormat.PNG))  # type: ignore[arg-type]
    assert small < width  # the width follows the number of bars, up to the bound


@needs_matplotlib
def test_the_through_time_profile_and_its_horizon() -> None:
    from gradcheck_cli.report.render.images import chart_figure

    values = (1e-9, 0.0, 1e-6, 1e-4, 1e-2, 1.0)
    profiles = charts_of(_recurrent(values, horizon=3)).through_time
    assert len(profiles) == 1
    axes = chart_figure(profiles[0]).axes[0]
    drawn = {line.get_gid(): line for line in axes.lines}
    y = _ys(drawn["profile"])
    assert [v for v in y if not math.isnan(v)] == pytest.approx([math.log10(v) for v in values if v > 0])
    assert math.isnan(y[1]) and _xs(drawn["missing"]) == [1]  # 0: marked, off the log axis
    assert _xs(drawn["horizon"]) == [2, 2]  # 3 steps back from the near end (step 5)
    assert axes.get_xlabel().startswith("time step (far end -> near end")
    assert "horizon" not in {line.get_gid() for line in chart_figure(
        charts_of(_recurrent(values, horizon=None)).through_time[0]).axes[0].lines}


@needs_matplotlib
def test_a_long_sequence_is_drawn_at_the_middle_of_each_group_of_steps() -> None:
    from gradcheck_cli.report.render.images import chart_figure

    profile = charts_of(_recurrent(tuple(10.0 ** (i / 100 - 10) for i in range(1000)), horizon=150)).through_time[0]
    assert profile.group == 5 and len(profile.values) == 200
    drawn = {line.get_gid(): line for line in chart_figure(profile).axes[0].lines}
    assert _xs(drawn["profile"])[:2] == [2.0, 7.0] and _xs(drawn["profile"])[-1] == 997.0
    assert _ys(drawn["profile"]) == pytest.approx([math.log10(v) for v in profile.values])
    assert _xs(drawn["horizon"]) == [849, 849]  # steps are still counted one by one


@needs_matplotlib
def test_the_watch_charts_draw_the_series() -> None:
    from gradcheck_cli.report.render.images import chart_figure

    charts = charts_of(_watch())
    assert charts.loss is not None and charts.step_norms is not None
    loss = chart_figure(charts.loss).axes[0]
    y = _ys(loss.lines[0])
    assert _xs(loss.lines[0]) == [0, 5, 10, 15] and y[:2] + y[3:] == [2.0, 1.5, 0.75] and math.isnan(y[2])
    marked = [line for line in loss.lines if line.get_gid() == "nonfinite"]
    assert len(marked) == 1 and _xs(marked[0]) == [10]  # the NaN loss: marked at its step, not a silent gap
    norms = chart_figure(charts.step_norms).axes[0]
    lines = {line.get_label(): _ys(line) for line in norms.lines if (line.get_gid() or "").startswith("line-")}
    assert lines["net.1 [V: vanishing]"] == pytest.approx([-3.0, math.log10(2e-3), math.log10(4e-3), math.log10(8e-3)])
    assert norms.get_ylabel() == "log10 gradient L2 norm" and norms.get_xlabel() == "optimizer step"


@needs_matplotlib
@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_the_same_chart_gives_the_same_bytes_and_leaves_rcparams_alone(fmt: str) -> None:
    import matplotlib

    from gradcheck_cli.report.render.images import ImageFormat, chart_image

    chart = charts_of(_mixed()).flow
    assert chart is not None
    before = dict(matplotlib.rcParams)
    first = chart_image(chart, ImageFormat(fmt))
    with matplotlib.rc_context({"font.size": 20.0, "axes.facecolor": "black", "svg.hashsalt": None}):
        second = chart_image(chart, ImageFormat(fmt))  # the user's own style does not leak in
    assert first == second and first.startswith(MAGIC[fmt])
    assert dict(matplotlib.rcParams) == before
    assert b"CreationDate" not in first and b"<dc:date>" not in first


@needs_matplotlib
def test_the_svg_keeps_its_text_as_text() -> None:
    from gradcheck_cli.report.render.images import ImageFormat, chart_image

    chart = charts_of(_mixed()).flow
    assert chart is not None
    svg = chart_image(chart, ImageFormat.SVG).decode("utf-8")
    for text in ("Gradient flow along depth", "log10 gradient L2 norm", "log10 grad/weight", "net.2", "NaN"):
        assert text in svg, text
    assert 'id="bar-grad_norm-2"' in svg and 'href="http' not in svg  # nothing fetched from the network


# The command ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """builtin:deep-sigmoid's and builtin:rnn-long's JSON reports, written by `gradcheck scan`."""
    folder = tmp_path_factory.mktemp("reports")
    paths = {}
    for builtin in ("deep-sigmoid", "rnn-long"):
        paths[builtin] = folder / f"{builtin}.json"
        done = runner.invoke(app, ["scan", f"builtin:{builtin}", "--format", "json", "-o", str(paths[builtin])])
        assert done.exit_code in (0, 1), done.output
    return paths


def _plot(*args: str) -> Any:
    return runner.invoke(app, ["plot", *args])


@needs_matplotlib
@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_plot_a_real_scan_writes_each_chart_and_says_where(scanned: dict[str, Path], tmp_path: Path,
                                                           fmt: str) -> None:
    done = _plot(str(scanned["rnn-long"]), "-o", str(tmp_path / f"flow.{fmt}"))
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"flow-through-time-rnn.{fmt}", f"flow.{fmt}"]
    for path in tmp_path.iterdir():
        assert path.read_bytes().startswith(MAGIC[fmt])
    assert done.stderr.splitlines() == [f"gradcheck: wrote the flow chart to {tmp_path / f'flow.{fmt}'}",
                                        f"gradcheck: wrote the through-time chart to "
                                        f"{tmp_path / f'flow-through-time-rnn.{fmt}'}"]
    assert done.stdout == ""
    again = tmp_path / "again"
    again.mkdir()
    assert _plot(str(scanned["rnn-long"]), "-o", str(again / f"flow.{fmt}"), "-q").stderr == ""
    assert (again / f"flow.{fmt}").read_bytes() == (tmp_path / f"flow.{fmt}").read_bytes()  # same bytes


@needs_matplotlib
def test_plot_draws_the_reports_own_numbers(scanned: dict[str, Path]) -> None:
    from gradcheck_cli.report.render.images import chart_figure

    report = Report.from_dict(json.loads(scanned["deep-sigmoid"].read_text(encoding="utf-8")))
    chart = charts_of(report).flow
    assert chart is not None and report.verdict is Status.VANISHING
    layers = sorted((layer for layer in report.layers if layer.params), key=lambda layer: layer.index)
    bars = _patches(chart_figure(chart).axes[1], "bar-grad_to_weight-")
    assert len(bars) == len(layers)
    for i, layer in enumerate(layers):
        assert bars[i].get_y() + bars[i].get_height() == pytest.approx(math.log10(layer.grad_to_weight or 0))
        assert (bars[i].get_hatch() is not None) == (layer.status is not Status.HEALTHY)


@needs_matplotlib
def test_chart_writes_one_kind_to_exactly_the_path(scanned: dict[str, Path], tmp_path: Path) -> None:
    done = _plot(str(scanned["rnn-long"]), "-o", str(tmp_path / "rnn.svg"), "--chart", "through-time")
    assert done.exit_code == 0, done.output
    assert [p.name for p in tmp_path.iterdir()] == ["rnn.svg"]
    assert "Gradient through time: rnn" in (tmp_path / "rnn.svg").read_text(encoding="utf-8")


@needs_matplotlib
def test_a_watch_report_gets_its_loss_and_step_norm_charts(tmp_path: Path) -> None:
    saved = tmp_path / "watch.json"
    saved.write_text(json.dumps(_watch().to_dict()), encoding="utf-8")
    done = _plot(str(saved), "-o", str(tmp_path / "w.png"))
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in tmp_path.glob("w*.png")) == ["w-loss.png", "w-step-norms.png", "w.png"]


@needs_matplotlib
def test_a_recipe_run_gets_one_set_of_files_per_scan(tmp_path: Path) -> None:
    results = [ScanResult("mlp", "models/mlp.py", _mixed()), ScanResult("broken", "x.py", None, "cannot import x"),
               ScanResult("rnn/1", "builtin:rnn", _recurrent((1e-3, 1e-2, 1.0), None))]
    saved = tmp_path / "run.json"
    saved.write_text(render_run_json(results), encoding="utf-8")
    done = _plot(str(saved), "-o", str(tmp_path / "out.pdf"))
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in tmp_path.glob("out*")) == ["out-mlp.pdf", "out-rnn_1-through-time-net.0.pdf",
                                                            "out-rnn_1.pdf"]
    assert "gradcheck: scan 'broken' has no report (cannot import x): nothing to draw for it" in done.stderr


@pytest.mark.parametrize("case, needles", [
    ("missing", ["does not exist", "gradcheck scan TARGET --format json"]),
    ("not-json", ["not valid JSON"]),
    ("not-a-report", ["not a gradcheck report", "gradcheck/report@1", "gradcheck/run@1"]),
    ("suffix", ["cannot tell the image format", ".png, .svg or .pdf"]),
    ("stdout", ["image files", "not -"]),
    ("bad-chart", ["invalid --chart 'bars'", "flow, through-time, loss, step-norms"]),
    ("no-such-chart", ["has no loss chart to draw; it has: flow, through-time (net.0)"]),
    ("no-folder", ["cannot write", "check that the folder exists"]),
])
def test_user_errors_exit_two_with_one_line(tmp_path: Path, case: str, needles: list[str]) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps(_recurrent((1e-3, 1.0), None).to_dict()), encoding="utf-8")
    args = {"missing": [str(tmp_path / "nope.json"), "-o", "x.png"],
            "not-json": [str(report.with_name("bad.json")), "-o", "x.png"],
            "not-a-report": [str(report.with_name("other.json")), "-o", "x.png"],
            "suffix": [str(report), "-o", str(tmp_path / "x.jpg")],
            "stdout": [str(report), "-o", "-"],
            "bad-chart": [str(report), "-o", str(tmp_path / "x.png"), "--chart", "bars"],
            "no-such-chart": [str(report), "-o", str(tmp_path / "x.png"), "--chart", "loss"],
            "no-folder": [str(report), "-o", str(tmp_path / "nowhere" / "x.png")]}[case]
    report.with_name("bad.json").write_text("{", encoding="utf-8")
    report.with_name("other.json").write_text('{"schema": "something/else"}', encoding="utf-8")
    if case in ("no-such-chart", "no-folder") and find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    assert_one_line_error(_plot(*args), *needles)
    assert not list(tmp_path.glob("x*"))


# In a fresh interpreter -------------------------------------------------------------------------

_RUN = """
import json, sys
if sys.argv[1] == "block":
    sys.modules["matplotlib"] = None  # as if matplotlib were not installed
from gradcheck_cli.cli.app import app
try:
    app(json.loads(sys.argv[2]))
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\\nEXIT " + json.dumps({"code": code, "modules": sorted(sys.modules)}) + "\\n")
"""


def _fresh(argv: list[str], block: bool = False) -> tuple[int, list[str], str]:
    done = subprocess.run([sys.executable, "-c", _RUN, "block" if block else "-", json.dumps(argv)],
                          capture_output=True, text=True, timeout=120)
    marker = done.stderr.rindex("\nEXIT ")
    result = json.loads(done.stderr[marker + len("\nEXIT "):])
    return result["code"], result["modules"], done.stderr[:marker]


def test_without_matplotlib_plot_says_which_extra_to_install(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps(_mixed().to_dict()), encoding="utf-8")
    code, _, stderr = _fresh(["plot", str(report), "-o", str(tmp_path / "flow.png")], block=True)
    assert code == 2
    assert stderr.strip().splitlines() == [
        'gradcheck: error: gradcheck plot needs matplotlib: pip install "gradcheck[plot]"']
    assert not (tmp_path / "flow.png").exists()


def test_plot_help_imports_neither_torch_nor_matplotlib() -> None:
    code, modules, stderr = _fresh(["plot", "--help"])
    assert code == 0
    assert not [m for m in modules if m.split(".")[0] in ("torch", "matplotlib")]
    assert not [m for m in modules if m.startswith("gradcheck_cli.report.render")]


@needs_matplotlib
def test_plot_never_imports_pyplot_or_torch(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps(_watch().to_dict()), encoding="utf-8")
    code, modules, _ = _fresh(["plot", str(report), "-o", str(tmp_path / "flow.png")])
    assert code == 0 and (tmp_path / "flow-step-norms.png").exists()
    assert "matplotlib.figure" in modules  # it did draw
    assert "matplotlib.pyplot" not in modules and "torch" not in modules


@needs_matplotlib
def test_steps_and_time_steps_get_whole_number_ticks() -> None:
    from gradcheck_cli.report.render.images import chart_figure

    charts = charts_of(_watch())
    profile = charts_of(_recurrent((1e-3, 1e-2, 1.0), horizon=None)).through_time[0]
    for chart in (charts.loss, charts.step_norms, profile):
        assert chart is not None
        figure = chart_figure(chart)
        figure.canvas.draw()  # the locator places the ticks when drawn
        axes = figure.axes[0]
        ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
        assert len(ticks) >= 2 and all(t == int(t) for t in ticks), ticks
