"""The pictures (`--format html` and `gradcheck plot`) of models nobody here wrote: tiny Hugging Face
transformers built from configs (GPT-2, BERT; no weights are downloaded) and a plain-autograd GRU
language model, scanned once each (module fixture), then drawn from the report's JSON form as a
user would (`gradcheck scan --format json`, then `gradcheck report --format html` / `plot`).

Structural facts, read back from the page's SVG and from the matplotlib figures: one bar per layer
with parameters in each flow panel, carrying the JSON's own number; a through-time chart for each
recurrent layer and none for a transformer; every chart of the report written by `gradcheck plot`.
Also the two faults the wild models showed in images.py: a layer name holding "$" was read as
matplotlib math ("$\\frac{$" made `gradcheck plot` fail, "cost$_1$" was drawn as a subscript), and
a name in a script the font lacks (CJK, emoji) printed one matplotlib warning per glyph on stderr.
Skips without transformers or matplotlib.
"""

from __future__ import annotations

import json
import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gradcheck_cli import scan
from gradcheck_cli.cli.app import app
from gradcheck_cli.report.charts import charts_of
from gradcheck_cli.report.records import LayerReport, LossInfo, Report, ScanResult, Status, ThroughTime
from gradcheck_cli.report.render import OutputFormat, render
from gradcheck_cli.report.series import LayerSeries, WatchSeries
from gradcheck_cli.target.resolve import Target

runner = CliRunner()
VOCAB, TOKENS = 64, 12


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=TOKENS, n_embd=16, n_layer=2, n_head=2,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=TOKENS, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    config.num_labels = 3  # a PretrainedConfig property, not in BertConfig's typed signature
    return BertForSequenceClassification(config)


class GRULanguageModel(nn.Module):
    """Plain autograd: embedding -> GRU -> linear head, a loss at every time step."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.rnn = nn.GRU(16, 16, batch_first=True)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.embed(ids))
        return self.head(hidden)


def _causal_batch(size: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (size, TOKENS))
    return {"input_ids": ids, "labels": ids}


def _labelled_batch(size: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, VOCAB, (size, TOKENS)), "labels": torch.randint(0, 3, (size,))}


def _next_token_batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (size, TOKENS))
    return ids, torch.roll(ids, -1, 1)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], Any]]] = {
    "gpt2": (_gpt2, _causal_batch),
    "bert": (_bert, _labelled_batch),
    "gru-lm": (GRULanguageModel, _next_token_batch),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each model scanned once (2 probe batches), its JSON report written as `--format json` does."""
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("wild")
    paths = {}
    for name, (build, batch) in MODELS.items():
        report = scan(Target(f"{name}.py", build, batch), batches=2)
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(render([ScanResult(name, report.target, report)], OutputFormat.JSON), encoding="utf-8")
    return paths


def _json_layers(path: Path) -> list[dict[str, Any]]:
    """The JSON report's layers with parameters, in execution order (the flow chart's bars)."""
    layers = json.loads(path.read_text(encoding="utf-8"))["layers"]
    return sorted((layer for layer in layers if layer["params"] > 0), key=lambda layer: layer["index"])


def _html_of(path: Path, tmp_path: Path) -> str:
    page = tmp_path / f"{path.stem}.html"
    done = runner.invoke(app, ["report", str(path), "--format", "html", "-o", str(page), "-q"])
    assert done.exit_code == 0, done.output
    return page.read_text(encoding="utf-8")


def _charts(page: str, kind: str) -> list[ET.Element]:
    charts = [ET.fromstring(svg) for svg in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]
    return [chart for chart in charts if chart.get("data-chart") == kind]


def _bars(chart: ET.Element, metric: str) -> list[ET.Element]:
    (panel,) = [g for g in chart.iter("g") if g.get("class") == "panel" and g.get("data-metric") == metric]
    return [r for r in panel.iter("rect") if "bar" in (r.get("class") or "").split()]


@pytest.mark.parametrize("name", list(MODELS))
def test_the_html_flow_chart_has_one_bar_per_layer_with_the_jsons_numbers(saved: dict[str, Path], name: str,
                                                                          tmp_path: Path) -> None:
    layers = _json_layers(saved[name])
    page = _html_of(saved[name], tmp_path)
    (flow,) = _charts(page, "flow")
    assert len(layers) >= 3
    for metric in ("grad_norm", "grad_to_weight"):
        bars = _bars(flow, metric)
        assert [bar.get("data-layer") for bar in bars] == [layer["name"] for layer in layers]
        assert [bar.get("data-status") for bar in bars] == [layer["status"] for layer in layers]
        for bar, layer in zip(bars, layers, strict=True):
            value = layer[metric]
            assert bar.get("data-value") in ((None, "") if value is None else (repr(float(value)),)), layer["name"]
    recurrent = [layer["name"] for layer in layers if layer.get("through_time")]
    assert [chart.get("data-layer") for chart in _charts(page, "through-time")] == recurrent
    assert (recurrent == ["rnn"]) == (name == "gru-lm")  # a GRU has a profile, a transformer none


@pytest.mark.parametrize("name", list(MODELS))
def test_the_plot_draws_the_jsons_numbers_and_every_chart(saved: dict[str, Path], name: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from gradcheck_cli.report.render.images import chart_figure

    report = Report.from_dict(json.loads(saved[name].read_text(encoding="utf-8")))
    charts = charts_of(report)
    assert charts.flow is not None
    figure = chart_figure(charts.flow)
    layers = _json_layers(saved[name])
    for axes, metric in zip(figure.axes[:2], ("grad_norm", "grad_to_weight"), strict=True):
        tops = _bar_tops(axes, f"bar-{metric}-")
        drawable = {i: layer[metric] for i, layer in enumerate(layers) if (layer[metric] or 0) > 0}
        assert tops == pytest.approx({i: math.log10(value) for i, value in drawable.items()}, abs=1e-12)
    done = runner.invoke(app, ["plot", str(saved[name]), "-o", str(tmp_path / "flow.png")])
    assert done.exit_code == 0, done.output
    expected = ["flow.png"] + [f"flow-through-time-{profile.layer}.png" for profile in charts.through_time]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(expected)
    assert done.stderr.count("gradcheck: wrote the ") == len(expected) and "Warning" not in done.stderr


def _bar_tops(axes: Any, prefix: str) -> dict[int, float]:
    """Each drawn bar's top (log10 of its value), by its position along depth (from its gid)."""
    return {int(p.get_gid().rsplit("-", 1)[1]): p.get_y() + p.get_height() for p in axes.patches
            if (p.get_gid() or "").startswith(prefix)}


ODD_NAMES = ("cost$_1$", "bad$\\frac{$", "rnn$x$", "層-🙂")


def _odd_report() -> Report:
    layers = tuple(LayerReport(name=name, type="Linear", index=i, params=10, status=Status.HEALTHY,
                               grad_norm=0.5, weight_norm=2.0, grad_to_weight=0.25, nonfinite_grads=0,
                               through_time=ThroughTime((0.1, 0.2, 0.4), "last", None) if "rnn" in name else None)
                   for i, name in enumerate(ODD_NAMES))
    return Report(target="odd.py", tool_version="0.1.0", config={"steps": 0}, loss=LossInfo("mse", (1.0,)),
                  verdict=Status.HEALTHY, layers=layers, findings=(), recommendations=())


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_layer_names_with_dollars_and_glyphs_the_font_lacks_are_drawn_as_written(fmt: str) -> None:
    pytest.importorskip("matplotlib")
    from gradcheck_cli.report.render.images import ImageFormat, chart_figure, chart_image

    charts = charts_of(_odd_report())
    assert charts.flow is not None and len(charts.through_time) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matplotlib warning (a missing glyph) fails the test
        for chart in (charts.flow, charts.through_time[0]):
            assert chart_image(chart, ImageFormat(fmt))  # "$\frac{$" raised a mathtext ValueError
    if fmt == "svg":  # the text as written, not math: "cost$_1$" is not drawn as "cost" and a subscript
        text = chart_image(charts.flow, ImageFormat.SVG).decode("utf-8")
        assert all(name in text for name in ("cost$_1$", "bad$\\frac{$", "rnn$x$"))
    from gradcheck_cli.report.render.images import plot_style

    with plot_style():
        figure = chart_figure(charts.flow)
        labels = figure.axes[1].get_xticklabels()
        assert [label.get_text() for label in labels] == list(ODD_NAMES)
        assert not any(label.get_parse_math() for label in labels)


def _broken_vae_report() -> Report:
    """The flow of pytorch/examples' VAE with its logvar bias set to 100 (exp overflows): two layers
    with NaN gradients, one healthy, two vanishing with a gradient of exactly 0."""
    def layer(i: int, name: str, status: Status, grad: float) -> LayerReport:
        return LayerReport(name=name, type="Linear", index=i, params=10, status=status, grad_norm=grad,
                           weight_norm=2.0, grad_to_weight=grad / 2.0, nonfinite_grads=0 if math.isfinite(grad) else 5)
    layers = (layer(0, "fc1", Status.NONFINITE, math.nan), layer(1, "fc21", Status.HEALTHY, 2.1),
              layer(2, "fc22", Status.NONFINITE, math.nan), layer(3, "fc3", Status.VANISHING, 0.0),
              layer(4, "fc4", Status.VANISHING, 0.0))
    return Report(target="vae_nan.py", tool_version="0.1.0", config={"steps": 0}, loss=LossInfo("loss_fn", (1.0,)),
                  verdict=Status.NONFINITE, layers=layers, findings=(), recommendations=())


def test_a_layer_with_no_gradient_keeps_its_status_mark_and_a_nan_layer_is_seen() -> None:
    pytest.importorskip("matplotlib")
    from gradcheck_cli.report.render.images import chart_figure, plot_style

    chart = charts_of(_broken_vae_report()).flow
    assert chart is not None
    with plot_style():
        figure = chart_figure(chart)
        for axes, metric in zip(figure.axes[:2], ("grad_norm", "grad_to_weight"), strict=True):
            words = {t.get_gid(): t.get_text() for t in axes.texts if (t.get_gid() or "").startswith("missing-")}
            assert words == {f"missing-{metric}-0": "NaN", f"missing-{metric}-2": "NaN",
                             f"missing-{metric}-3": "0 V", f"missing-{metric}-4": "0 V"}  # was "0": no V
            boxes = sorted(gid for p in axes.patches if (gid := p.get_gid() or "").startswith("placeholder-"))
            assert boxes == [f"placeholder-{metric}-0", f"placeholder-{metric}-2"]  # NaN: a full-height box
            assert _bar_tops(axes, f"bar-{metric}-") == pytest.approx({1: math.log10(2.1 if metric == "grad_norm"
                                                                                   else 1.05)})


def test_the_flow_legend_fits_inside_a_narrow_figure() -> None:
    """Four legend entries on one row of a 6-inch (5-layer) figure ran off both edges of the image."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from gradcheck_cli.report.render.images import chart_figure, plot_style

    chart = charts_of(_broken_vae_report()).flow
    assert chart is not None
    with plot_style():
        figure = chart_figure(chart)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()  # the constrained layout places the legend, as when the PNG is saved
        renderer = canvas.get_renderer()
        (legend,) = figure.legends
        box, page = legend.get_window_extent(renderer), figure.bbox
        assert len(legend.get_texts()) == 4
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0


def test_a_long_recurrent_layer_name_gives_a_file_name_the_file_system_takes(saved: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    """Two GRU layers whose 290-character names share their first 280: `gradcheck plot` exited 2
    with "File name too long" after writing the flow chart; now each profile has its own short name."""
    pytest.importorskip("matplotlib")
    document = json.loads(saved["gru-lm"].read_text(encoding="utf-8"))
    (rnn,) = [layer for layer in document["layers"] if layer["name"] == "rnn"]
    twin = dict(rnn, index=len(document["layers"]))
    rnn["name"], twin["name"] = ("encoder." + "recurrent_block_" * 17 + end for end in ("rnn_a", "rnn_b"))
    document["layers"].append(twin)
    report = tmp_path / "long.json"
    report.write_text(json.dumps(document), encoding="utf-8")
    done = runner.invoke(app, ["plot", str(report), "-o", str(tmp_path / "flow.png"), "-q"])
    assert done.exit_code == 0, done.output
    profiles = sorted(p.name for p in tmp_path.glob("flow-through-time-*.png"))
    assert len(profiles) == 2 and profiles[0] != profiles[1]
    assert all(len(name.encode("utf-8")) < 120 for name in profiles)


LONG = "encoder." + "very_long_recurrent_block_name_" * 9 + "rnn"


def _long_named_report() -> Report:
    """A watch of two layers, one a GRU, whose names run to 290 characters (no spaces)."""
    names = (LONG, LONG.replace("rnn", "head"))
    layers = tuple(LayerReport(name=name, type="GRU", index=i, params=10, status=Status.VANISHING, grad_norm=1e-3,
                               weight_norm=2.0, grad_to_weight=5e-4, nonfinite_grads=0,
                               through_time=ThroughTime((1e-6, 1e-4, 1e-2), "last", None) if i == 0 else None)
                   for i, name in enumerate(names))
    series = WatchSeries((0, 1, 2), (2.0, 1.5, 1.2), tuple(LayerSeries(name, (1e-3, 2e-3, 4e-3), (None,) * 3,
                                                                       (1.0,) * 3) for name in names))
    return Report(target="long.py", tool_version="0.1.0", config={"mode": "watch"}, loss=LossInfo("watch", (2.0,)),
                  verdict=Status.VANISHING, layers=layers, findings=(), recommendations=(), series=series)


def test_charts_of_a_layer_with_a_very_long_name_keep_title_and_legend_inside_the_image() -> None:
    """The through-time title ran off both edges of the image; the step-norm legend took the whole
    width, so the layout collapsed (matplotlib warned on stderr) and the legend covered the lines."""
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    from gradcheck_cli.report.render.images import chart_figure, plot_style

    charts = charts_of(_long_named_report())
    assert charts.step_norms is not None and len(charts.through_time) == 1
    with plot_style(), warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" fails the test
        for chart in (charts.through_time[0], charts.step_norms):
            figure = chart_figure(chart)
            canvas = FigureCanvasAgg(figure)
            canvas.draw()
            renderer = canvas.get_renderer()
            texts = [t for t in figure.findobj(Text) if t.get_visible() and t.get_text()]
            assert any(LONG[:12] in t.get_text() for t in texts)  # the title or the legend names it
            for text in texts:  # every word of the image, and the legends, inside it
                box = text.get_window_extent(renderer)
                assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1, text.get_text()[:60]
            for legend in figure.legends:
                box = legend.get_window_extent(renderer)
                assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1


def test_a_watch_stopped_before_its_first_step_gets_no_empty_charts(tmp_path: Path) -> None:
    """`gradcheck plot` of such a watch's report wrote a loss and a step-norm image of empty axes
    around 0 (the HTML page leaves them out); now only the flow chart, its layers marked "—"."""
    pytest.importorskip("matplotlib")
    from gradcheck_cli import watch
    from gradcheck_cli.report.render.images import chart_figure

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))  # plain autograd
    report = tmp_path / "watch.json"
    with watch(model, torch.optim.SGD(model.parameters(), lr=0.1), every=1, output=report, quiet=True):
        pass  # the loop never took a step
    done = runner.invoke(app, ["plot", str(report), "-o", str(tmp_path / "flow.png")])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["flow.png"]
    missing = runner.invoke(app, ["plot", str(report), "-o", str(tmp_path / "loss.png"), "--chart", "loss"])
    assert missing.exit_code == 2 and "has no loss chart to draw; it has: flow" in missing.output
    chart = charts_of(Report.from_dict(json.loads(report.read_text(encoding="utf-8")))).flow
    assert chart is not None
    words = [t for t in chart_figure(chart).axes[0].texts if (t.get_gid() or "").startswith("missing-")]
    # upright, not "|"; each layer (no gradient yet: unused) has its U under the dash, as the page marks it
    assert [(t.get_text(), t.get_rotation()) for t in words] == [("\u2014\nU", 0.0), ("\u2014\nU", 0.0)]
