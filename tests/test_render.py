"""The renderers: golden tables, width and colour invariants, the JSON document, every format."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import pytest

from gradcheck_cli.report.records import (
    Finding,
    FindingKind,
    LayerReport,
    LossInfo,
    Recommendation,
    RecommendationId,
    Report,
    ScanResult,
    Severity,
    Status,
)
from gradcheck_cli.report.render import OutputFormat, format_number, render, render_json, render_table

ANSI = re.compile(r"\x1b\[[0-9;]*m")
CONFIG = {"batches": 3, "batch_size": 16, "seed": 0, "device": "cpu", "steps": 0,
          "optimizer": "sgd", "lr": 0.01, "input_shape": [32],
          "fail_on": ["exploding", "nonfinite"]}
SCHEMA_KEYS = {"schema", "tool", "target", "config", "loss", "verdict", "layers", "findings",
               "recommendations"}


def _layer(index: int, name: str, status: Status, grad_norm: float | None, *,
           type: str = "Linear", weight_norm: float = 5.0, nonfinite: int = 0,
           activation: dict | None = None) -> LayerReport:
    ratio = None
    if grad_norm is not None and weight_norm > 0:
        ratio = grad_norm / weight_norm
    return LayerReport(name=name, type=type, index=index, params=1056, status=status,
                       grad_norm=grad_norm, weight_norm=weight_norm, grad_to_weight=ratio,
                       nonfinite_grads=nonfinite, activation=activation or {})


def vanishing_report() -> Report:
    """A 10-layer Sigmoid MLP whose gradient shrinks about 8x per layer towards the input."""
    names = [f"fc{i}" for i in range(1, 10)] + ["out"]
    layers = tuple(
        _layer(i, name, Status.VANISHING if i < 6 else Status.HEALTHY,
               0.21 * 8.0 ** -(9 - i),
               activation={"function": "Sigmoid", "rms": 0.5, "saturated_fraction": 0.9})
        for i, name in enumerate(names)
    )
    fc_layers = tuple(names[:9])
    return Report(
        target="builtin:deep-sigmoid-mlp",
        tool_version="0.1.0",
        config=CONFIG,
        loss=LossInfo(kind="cross_entropy", values=(2.3051, 2.3012, 2.2987)),
        verdict=Status.VANISHING,
        layers=layers,
        findings=(
            Finding(FindingKind.VANISHING, "fc1", Severity.ERROR,
                    "grad/weight 3.1e-10 is below the 1e-05 threshold; the gradient shrinks "
                    "about 8x per layer from out to fc1",
                    {"grad_to_weight": 3.1e-10, "threshold": 1e-5, "decay_per_layer": 8.0}),
            Finding(FindingKind.SATURATED_ACTIVATION, "fc3", Severity.WARNING,
                    "90% of Sigmoid outputs are saturated (below 0.01 or above 0.99)",
                    {"saturated_fraction": 0.9, "function": "Sigmoid"}),
            Finding(FindingKind.INIT_SCALE, None, Severity.INFO,
                    "default init keeps the pre-activation rms at 0.58, too small for Sigmoid",
                    {"rms": 0.58}),
        ),
        recommendations=(
            Recommendation(RecommendationId.SWAP_ACTIVATION, "Replace Sigmoid with ReLU or GELU",
                           fc_layers,
                           "Sigmoid's derivative is at most 0.25; 90% of its outputs are "
                           "saturated, so each layer multiplies the gradient by about 1/8",
                           "model = swap_modules(model, nn.Sigmoid, nn.GELU)"),
            Recommendation(RecommendationId.HE_INIT, "Initialise the Linear layers with He init",
                           fc_layers,
                           "grad/weight falls from 0.042 at out to 3.1e-10 at fc1",
                           "for m in model.modules():\n"
                           "    if isinstance(m, nn.Linear):\n"
                           "        nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\")\n"
                           "        nn.init.zeros_(m.bias)"),
        ),
    )


def healthy_report() -> Report:
    layers = (
        _layer(0, "features.0", Status.HEALTHY, 0.084, type="Conv2d", weight_norm=3.1),
        _layer(1, "features.1", Status.HEALTHY, 0.012, type="BatchNorm2d", weight_norm=4.0),
        _layer(2, "features.4", Status.HEALTHY, 0.051, type="Conv2d", weight_norm=6.2),
        _layer(3, "classifier", Status.HEALTHY, 0.31, weight_norm=2.4),
    )
    return Report(
        target="examples/cnn.py",
        tool_version="0.1.0",
        config=CONFIG,
        loss=LossInfo(kind="cross_entropy", values=(2.31, 2.29, 2.30)),
        verdict=Status.HEALTHY,
        layers=layers,
        findings=(),
        recommendations=(),
    )


def nonfinite_report() -> Report:
    nan, inf = float("nan"), float("inf")
    layers = (
        _layer(0, "embed", Status.FROZEN, None, type="Embedding", weight_norm=31.6),
        _layer(1, "fc1", Status.HEALTHY, 0.43),
        LayerReport(name="fc2", type="Linear", index=2, params=4160, status=Status.NONFINITE,
                    grad_norm=nan, weight_norm=8.1, grad_to_weight=None, nonfinite_grads=4160,
                    activation={"rms": inf, "output_grad_rms": nan}),
        _layer(3, "head", Status.EXPLODING, 3.2e4, weight_norm=7.9),
        _layer(4, "aux_head", Status.UNUSED, None, weight_norm=2.2),
    )
    return Report(
        target="tests/corpus/nan_model.py:build_model",
        tool_version="0.1.0",
        config={**CONFIG, "steps": 2, "optimizer": "adam", "lr": 0.001},
        loss=LossInfo(kind="loss_fn", values=(1.93, inf, nan)),
        verdict=Status.NONFINITE,
        layers=layers,
        findings=(
            Finding(FindingKind.NONFINITE, "fc2", Severity.ERROR,
                    "4160 NaN gradient elements; the first non-finite value appears in fc2's "
                    "output", {"nonfinite_grads": 4160, "output_rms": inf}),
            Finding(FindingKind.EXPLODING, "head", Severity.ERROR,
                    "grad_norm 3.2e+04, grad/weight 4.1e+03 above the 10 threshold",
                    {"grad_norm": 3.2e4, "grad_to_weight": 4.1e3}),
            Finding(FindingKind.DIVERGENCE, None, Severity.ERROR,
                    "the loss became Inf after 1 step of adam (lr 0.001)",
                    {"loss_before": 1.93, "loss_after": inf}),
        ),
        recommendations=(
            Recommendation(RecommendationId.GUARD_NONFINITE, "Find and guard the NaN source",
                           ("fc2",), "fc2 produces Inf activations (rms Inf) before any NaN "
                           "gradient", "torch.autograd.set_detect_anomaly(True)"),
            Recommendation(RecommendationId.CLIP_GRADIENTS, "Clip the gradient norm",
                           ("head",), "grad_norm 3.2e+04 at head",
                           "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)"),
        ),
    )


def long_names_report() -> Report:
    names_types = [
        ("embeddings.word_embeddings", "Embedding"),
        ("embeddings.position_embeddings", "Embedding"),
        ("encoder.layers.0.self_attn.out_proj", "NonDynamicallyQuantizableLinear"),
        ("encoder.layers.0.linear1", "Linear"),
        ("encoder.layers.0.norm1", "LayerNorm"),
        ("encoder.layers.11.self_attn.out_proj", "NonDynamicallyQuantizableLinear"),
        ("encoder.layers.11.linear1", "Linear"),
        ("encoder.layers.11.norm1", "LayerNorm"),
        ("lm_head", "Linear"),
    ]
    layers = tuple(
        _layer(i, name, Status.FROZEN if i == 1 else Status.HEALTHY,
               None if i == 1 else 0.02 * 1.3**i, type=type_)
        for i, (name, type_) in enumerate(names_types)
    )
    return Report(
        target="transformers_model.py:build_model",
        tool_version="0.1.0",
        config=CONFIG,
        loss=LossInfo(kind="model_loss", values=(10.4,)),
        verdict=Status.HEALTHY,
        layers=layers,
        findings=(),
        recommendations=(),
    )


REPORTS = {
    "vanishing": vanishing_report,
    "healthy": healthy_report,
    "nonfinite": nonfinite_report,
    "long_names": long_names_report,
}


def _table_rows(text: str) -> list[dict[str, str]]:
    """The layer rows of an uncoloured table, as {header: cell}; the bar's header is "bar"."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("─"))
    headers = lines[rule - 1].split()
    assert headers[-2:] == ["log", "grad"]
    headers = headers[:-2] + ["bar"]
    rows = []
    for line in lines[rule + 1:]:
        if line.startswith("bar:") or not line.strip():
            break
        cells = line.split()
        assert len(cells) == len(headers), line
        rows.append(dict(zip(headers, cells, strict=True)))
    return rows


def _name_matches(cell: str, name: str) -> bool:
    if cell == name:
        return True
    head, sep, tail = cell.partition("…")
    return bool(sep) and name.startswith(head) and name.endswith(tail)


# --- golden files -------------------------------------------------------------------------------


def test_table_vanishing_width80(golden) -> None:
    golden(render_table(vanishing_report(), width=80, color=False))


def test_table_vanishing_width120(golden) -> None:
    golden(render_table(vanishing_report(), width=120, color=False))


def test_table_nonfinite_width80(golden) -> None:
    golden(render_table(nonfinite_report(), width=80, color=False))


def test_table_healthy_width80(golden) -> None:
    golden(render_table(healthy_report(), width=80, color=False))


def test_table_long_names_width80(golden) -> None:
    golden(render_table(long_names_report(), width=80, color=False))


def test_table_long_names_width120(golden) -> None:
    golden(render_table(long_names_report(), width=120, color=False))


# --- invariants ---------------------------------------------------------------------------------


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("width", [60, 80, 100, 160])
@pytest.mark.parametrize("kind", sorted(REPORTS))
def test_no_line_exceeds_width(kind: str, width: int, color: bool) -> None:
    text = ANSI.sub("", render_table(REPORTS[kind](), width=width, color=color))
    too_wide = [line for line in text.splitlines() if len(line) > width]
    assert not too_wide


@pytest.mark.parametrize("width", [60, 80])
@pytest.mark.parametrize("kind", sorted(REPORTS))
def test_narrow_table_keeps_every_layer_and_status(kind: str, width: int) -> None:
    report = REPORTS[kind]()
    text = render_table(report, width=width, color=False)
    rows = _table_rows(text)
    assert len(rows) == len(report.layers)
    assert set(rows[0]) >= {"#", "layer", "status", "bar"}
    # Headers are abbreviated ("grad", "g/w") only where the full ones do not fit.
    grad_norm, grad_to_weight = ("grad_norm", "grad/weight") if "grad_norm" in rows[0] else (
        "grad", "g/w")
    for row, layer in zip(rows, report.layers, strict=True):
        assert row["#"] == str(layer.index)
        assert _name_matches(row["layer"], layer.name)
        assert row["status"] == layer.status.value
        assert row[grad_norm] == format_number(layer.grad_norm)
        assert row[grad_to_weight] == format_number(layer.grad_to_weight)


def test_width80_header_has_the_essential_columns() -> None:
    header = render_table(long_names_report(), width=80, color=False)
    header_row = next(line for line in header.splitlines() if line.lstrip().startswith("#"))
    for title in ("#", "layer", "status", "grad_norm", "grad/weight", "log grad"):
        assert title in header_row.split("  ") or title in header_row.split()


@pytest.mark.parametrize("width", [120, 160])
@pytest.mark.parametrize("kind", sorted(REPORTS))
def test_wide_table_shows_every_column_and_full_names(kind: str, width: int) -> None:
    report = REPORTS[kind]()
    text = render_table(report, width=width, color=False)
    header_row = next(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert header_row.split() == ["#", "layer", "type", "status", "grad_norm", "grad/weight",
                                  "nonfinite", "log", "grad"]
    rows = _table_rows(text)
    assert [row["layer"] for row in rows] == [layer.name for layer in report.layers]


def test_long_names_are_shortened_in_the_middle_at_width80() -> None:
    rows = _table_rows(render_table(long_names_report(), width=80, color=False))
    names = [row["layer"] for row in rows]
    assert "encoder.l…0.self_attn.out_proj" in names
    assert "encoder.…11.self_attn.out_proj" in names  # the block index survives
    assert "lm_head" in names
    assert all(len(name) <= 30 for name in names)


def test_bar_grows_with_gradient_norm_along_depth() -> None:
    rows = _table_rows(render_table(vanishing_report(), width=120, color=False))
    bars = [row["bar"] for row in rows]
    cells = [len(bar) for bar in bars]
    assert cells == sorted(cells)
    assert cells[-1] == 12  # the largest norm is a full bar
    assert set("".join(bars)) <= set("█▏▎▍▌▋▊▉")


def test_missing_and_nonfinite_norms_are_marked_in_the_bar() -> None:
    rows = _table_rows(render_table(nonfinite_report(), width=120, color=False))
    bars = {row["layer"]: row["bar"] for row in rows}
    assert bars == {"embed": "·", "fc1": bars["fc1"], "fc2": "NaN", "head": "████████████",
                    "aux_head": "·"}
    assert set(bars["fc1"]) <= set("█▏▎▍▌▋▊▉")


def test_sections_findings_recommendations_and_verdict() -> None:
    text = render_table(vanishing_report(), width=100, color=False)
    assert "error   vanishing at fc1: grad/weight 3.1e-10" in text
    assert "warning saturated-activation at fc3: 90% of Sigmoid outputs" in text
    assert "info    init-scale (whole model):" in text
    assert "1. [swap-activation] Replace Sigmoid with ReLU or GELU — layers: fc1" in text
    assert "2. [he-init]" in text
    assert text.index("[swap-activation]") < text.index("[he-init]")
    assert "        nn.init.kaiming_normal_(m.weight" in text
    assert "and 1 more" in text
    assert text.rstrip().splitlines()[-1] == (
        "verdict: VANISHING — 6 of 10 layers vanishing (first: 0, fc1)"
    )


def test_verdict_lines() -> None:
    assert render_table(healthy_report(), width=100, color=False).splitlines()[-1] == (
        "verdict: healthy — 4 layers checked, no gradient problem found"
    )
    assert render_table(long_names_report(), width=100, color=False).splitlines()[-1] == (
        "verdict: healthy — 9 layers checked (1 frozen), no gradient problem found"
    )
    assert render_table(nonfinite_report(), width=100, color=False).splitlines()[-1] == (
        "verdict: NONFINITE — 1 of 5 layers nonfinite (first: 2, fc2); also 1 exploding"
    )


def test_header_summarises_target_loss_and_config() -> None:
    lines = render_table(nonfinite_report(), width=160, color=False).splitlines()
    assert lines[0] == (
        "gradcheck 0.1.0 · tests/corpus/nan_model.py:build_model · verdict: NONFINITE"
    )
    assert lines[1] == (
        "loss: loss_fn, mean NaN (2 of 3 values non-finite) · probe: 3 batches × 16, seed 0, "
        "cpu, 2 steps of adam (lr 1.0e-03)"
    )
    # Narrower, the parts move to their own lines instead of breaking in the middle.
    lines = render_table(nonfinite_report(), width=80, color=False).splitlines()
    assert lines[1] == "loss: loss_fn, mean NaN (2 of 3 values non-finite)"
    assert lines[2] == "probe: 3 batches × 16, seed 0, cpu, 2 steps of adam (lr 1.0e-03)"


@pytest.mark.parametrize("kind", sorted(REPORTS))
def test_color_on_has_ansi_and_color_off_has_none(kind: str) -> None:
    report = REPORTS[kind]()
    assert "\x1b[" in render_table(report, width=100, color=True)
    assert "\x1b" not in render_table(report, width=100, color=False)


def test_color_does_not_change_the_text() -> None:
    report = nonfinite_report()
    plain = render_table(report, width=100, color=False)
    colored = ANSI.sub("", render_table(report, width=100, color=True))
    assert [line.rstrip() for line in colored.splitlines()] == plain.splitlines()


@pytest.mark.parametrize("kind", sorted(REPORTS))
def test_table_is_deterministic(kind: str) -> None:
    report = REPORTS[kind]()
    assert render_table(report, width=100, color=False) == render_table(
        report, width=100, color=False
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.2e-8, "1.2e-08"),
        (3.4, "3.40"),
        (0.1234, "0.123"),
        (12.34, "12.3"),
        (99.96, "100"),
        (512.4, "512"),
        (32000.0, "3.2e+04"),
        (-0.5, "-0.500"),
        (0.0, "0"),
        (7, "7"),
        (None, "—"),
        (float("nan"), "NaN"),
        (float("inf"), "Inf"),
        (float("-inf"), "-Inf"),
    ],
)
def test_format_number(value: float | int | None, text: str) -> None:
    assert format_number(value) == text


# --- JSON ---------------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise AssertionError(f"bare {name} in the JSON document")


@pytest.mark.parametrize("kind", sorted(REPORTS))
def test_json_parses_with_the_schema_keys(kind: str) -> None:
    report = REPORTS[kind]()
    text = render_json(report)
    assert text.endswith("}\n")
    document = json.loads(text, parse_constant=_reject_constant)
    assert set(document) == SCHEMA_KEYS
    assert document["schema"] == "gradcheck/report@1"
    assert document["verdict"] == report.verdict.value
    assert [layer["name"] for layer in document["layers"]] == [lay.name for lay in report.layers]
    assert text == render_json(report)


def test_json_writes_nonfinite_numbers_as_strings() -> None:
    document = json.loads(render_json(nonfinite_report()), parse_constant=_reject_constant)
    assert document["loss"]["values"] == [1.93, "Infinity", "NaN"]
    fc2 = next(layer for layer in document["layers"] if layer["name"] == "fc2")
    assert fc2["grad_norm"] == "NaN"
    assert fc2["activation"] == {"rms": "Infinity", "output_grad_rms": "NaN"}
    divergence = next(f for f in document["findings"] if f["kind"] == "divergence")
    assert divergence["layer"] is None
    assert divergence["evidence"]["loss_after"] == "Infinity"


# --- every format -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(OutputFormat))
@pytest.mark.parametrize("kind", sorted(REPORTS))
def test_every_output_format_renders(fmt: OutputFormat, kind: str) -> None:
    report = REPORTS[kind]()
    text = render([ScanResult(kind, kind, report)], fmt, width=80)
    assert isinstance(text, str)
    if fmt is OutputFormat.GITHUB and not report.findings:
        assert text == ""  # annotations only: a clean scan has nothing to annotate
        return
    assert text.strip()
    assert text.endswith("\n")


def test_render_dispatches_to_the_format_renderers() -> None:
    report = vanishing_report()
    results = [ScanResult("v", report.target, report)]
    assert render(results, OutputFormat.JSON) == render_json(report)
    assert render(results, OutputFormat.TABLE, width=90, color=True) == render_table(
        report, width=90, color=True
    )
    assert OutputFormat("table") is OutputFormat.TABLE


def test_renderers_do_not_import_torch() -> None:
    package = Path(__file__).parents[1] / "gradcheck_cli" / "render"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not any(m == "torch" or m.startswith("torch.") for m in modules), path


def test_bar_scale_spans_at_least_min_decades() -> None:
    # Norms within a factor of 2: no layer's bar may look nearly empty.
    rows = _table_rows(render_table(healthy_report(), width=120, color=False))
    cells = [len(row["bar"]) for row in rows]
    assert min(cells) >= 12 * (1 - math.log10(0.31 / 0.012) / 3) - 1


def test_edge_cases_render_within_width() -> None:
    empty = Report(target="m.py", tool_version="0.1.0", config={}, loss=LossInfo("mse", ()),
                   verdict=Status.HEALTHY, layers=(), findings=(), recommendations=())
    text = render_table(empty, width=80, color=False)
    assert text.splitlines()[-1] == "verdict: healthy — 0 layers checked, no gradient problem found"
    zero = Report(target="m.py", tool_version="0.1.0", config={}, loss=LossInfo("mse", (0.5,)),
                  verdict=Status.VANISHING,
                  layers=(_layer(0, "dead", Status.VANISHING, 0.0), _layer(1, "x" * 200,
                                                                           Status.HEALTHY, 1.0)),
                  findings=(), recommendations=())
    for width in (60, 80, 120):
        text = render_table(zero, width=width, color=False)
        assert all(len(line) <= width for line in text.splitlines())
        rows = _table_rows(text)
        assert rows[0]["bar"] == "0"
        assert rows[1]["bar"] == "█" * 12
