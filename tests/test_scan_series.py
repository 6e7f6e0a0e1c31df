"""A scan with --steps records its optimizer steps as Report.series (the watch's schema).

The numbers are checked against plain autograd: the same seeded model copied, the same seeded
batches the probe draws (seed + batch index, as tests/test_probe_reference.py), the same steps
taken by hand with torch.optim on the copy.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_cli.api import scan
from gradcheck_cli.measure.records import Measurements, StepPoint
from gradcheck_cli.report.records import Report, ScanResult, Status
from gradcheck_cli.report.render.markdown import render_markdown
from gradcheck_cli.report.render.table import render_table
from gradcheck_cli.target.resolve import Target

SEED = 0
BATCH = 4


def _mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))


def _make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 5), torch.randint(0, 3, (batch_size,))


def _loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target)


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))}


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def _reference(build: Any, batches: int, steps: int, optimizer: str, lr: float) -> dict[str, Any]:
    """Plain autograd: per step, the loss the step's gradient came from, each layer's norm of that
    gradient, |Δw|/|w| and the weight norm after the step (steps between batches, none after the
    last batch)."""
    model = copy.deepcopy(build())
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer](params, lr=lr)
    layers = _layers(model)
    out: dict[str, Any] = {"loss": [], **{n: {"grad": [], "update": [], "weight": []} for n in layers}}
    for b in range(batches - 1):
        torch.manual_seed(SEED + b)
        x, y = _make_batch(BATCH)
        for _ in range(steps):
            loss = _loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            out["loss"].append(float(loss.detach()))
            before = {n: [p.detach().clone() for p in m.parameters(recurse=False)] for n, m in layers.items()}
            for n, m in layers.items():
                out[n]["grad"].append(_norm([p.grad for p in m.parameters(recurse=False) if p.grad is not None]))
            opt.step()
            for n, m in layers.items():
                after = [p.detach() for p in m.parameters(recurse=False)]
                out[n]["update"].append(_norm([a - w for a, w in zip(after, before[n])]) / _norm(before[n]))
                out[n]["weight"].append(_norm(after))
    return out


def _close(measured: Any, expected: list[float], rel: float = 1e-6) -> None:
    assert measured is not None
    assert len(measured) == len(expected)
    for m, e in zip(measured, expected):
        assert m == pytest.approx(e, rel=rel, abs=1e-12), (measured, expected)


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.5), ("adam", 0.01)])
def test_series_numbers_equal_plain_autograd(optimizer: str, lr: float) -> None:
    batches, steps = 3, 3
    report = scan(Target("mlp", _mlp, _make_batch, _loss), batches=batches, batch_size=BATCH, seed=SEED,
                  steps=steps, optimizer=optimizer, lr=lr)
    expected = _reference(_mlp, batches, steps, optimizer, lr)
    series = report.series
    assert series is not None
    assert series.steps == tuple(range((batches - 1) * steps))  # numbered 0.. across the batches
    _close(series.loss, expected["loss"])
    # The loss each step's gradient came from is the loss trace without the last batch's loss.
    assert series.loss == report.loss.values[:-1]
    assert [layer.name for layer in series.layers] == ["0", "2", "4"]
    for layer in series.layers:
        _close(layer.grad_norm, expected[layer.name]["grad"])
        _close(layer.update_to_weight, expected[layer.name]["update"])
        _close(layer.weight_norm, expected[layer.name]["weight"])


class _PartlyTrained(nn.Module):
    """A frozen layer (no series row), a trainable one the forward never uses (no gradient:
    null grad_norm), and two that train, registered in an order other than the forward's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.head = nn.Linear(4, 3)
        self.frozen = nn.Linear(5, 5)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(5, 5)
        self.body = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.frozen(x))))


def test_series_rows_in_report_order_frozen_left_out_unused_without_gradient() -> None:
    report = scan(Target("partly", _PartlyTrained, _make_batch, _loss), batches=2, batch_size=BATCH,
                  steps=2, optimizer="sgd", lr=0.1)
    assert report.series is not None
    names = [layer.name for layer in report.series.layers]
    assert names == [row.name for row in report.layers if row.name != "frozen"]  # execution order
    assert names[:2] == ["body", "head"]
    unused = report.series.layers[names.index("unused")]
    assert unused.grad_norm == (None, None)
    assert unused.update_to_weight == (0.0, 0.0)  # SGD without a gradient does not move it
    expected = _norm([p.detach() for p in _PartlyTrained().unused.parameters()])
    _close(unused.weight_norm, [expected, expected])


def test_no_steps_no_series_and_no_json_key() -> None:
    report = scan(Target("mlp", _mlp, _make_batch, _loss), batches=2, batch_size=BATCH)
    assert report.series is None
    assert "series" not in report.to_dict()


def test_series_in_json_round_trips_and_the_scan_text_formats_stay_scan_formats() -> None:
    report = scan(Target("mlp", _mlp, _make_batch, _loss), batches=2, batch_size=BATCH, steps=2, lr=0.1)
    document = report.to_dict()
    assert list(document)[-1] == "series"
    assert document["series"]["steps"] == [0, 1]
    again = Report.from_dict(json.loads(json.dumps(document)))
    assert again == report
    assert again.to_dict() == document
    # The one-line series summary belongs to the watch's header ("watch: N sampled steps"): a
    # scan's table and Markdown stay what they were before scans had a series.
    without = replace(report, series=None)
    assert render_table(report, width=100, color=False) == render_table(without, width=100, color=False)
    assert render_markdown([ScanResult("mlp", "mlp", report)]) == render_markdown([ScanResult("mlp", "mlp", without)])


def test_verify_reruns_a_stepped_scan_and_keeps_the_series() -> None:
    """--verify re-probes patched copies with the same --steps; the report keeps its own series."""
    report = scan("builtin:relu-he", steps=3, lr=10.0, verify=True)
    assert report.verification is not None
    assert report.series is not None
    # lr 10 diverges during the first batch's steps: the second batch's gradients are NaN/Inf, and
    # no step is taken with them (measure/probe.py), so only the first batch's 3 steps are there.
    assert len(report.series.steps) == 3
    assert not all(math.isfinite(v) for v in report.loss.values[3:])
    assert report.series.loss == report.loss.values[:3]


def test_measurements_merge_concatenates_the_step_points() -> None:
    point = StepPoint(loss=1.0, grad_sq=(4.0,), update_ratio=(0.1,), weight_sq=(9.0,))
    later = StepPoint(loss=0.5, grad_sq=(None,), update_ratio=(0.0,), weight_sq=(9.0,))
    first = Measurements(layers=(), losses=(), step_layers=("fc",), step_points=(point,))
    second = Measurements(layers=(), losses=(), step_layers=("fc",), step_points=(later,))
    merged = first.merge(second)
    assert merged.step_layers == ("fc",)
    assert merged.step_points == (point, later)
    assert first.merge(Measurements(layers=(), losses=())) == first


def test_the_series_reads_nothing_more_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per SGD step the probe reads the loss, one sum of squares (weights and gradients together,
    measure/norms.py squared_norms syncs once per call) and, at the end, that step's update row
    (largest_updates): 3 reads, whatever the depth. The series' own rows are read once per scan."""
    from test_host_transfers import _all_reads, _stack

    for depth in (3, 12):
        two = _all_reads(monkeypatch, _stack(depth), steps=2, optimizer="sgd")
        four = _all_reads(monkeypatch, _stack(depth), steps=4, optimizer="sgd")
        assert four - two == 3 * 2 * 2  # 2 more steps after each of the 2 first batches


def test_the_html_page_charts_a_scans_steps_without_calling_it_a_watch() -> None:
    from gradcheck_cli.report.render import OutputFormat, render

    report = scan(Target("mlp", _mlp, _make_batch, _loss), batches=2, batch_size=BATCH, steps=3, lr=0.1)
    page = render([ScanResult("mlp", "mlp", report)], OutputFormat.HTML)
    assert page.count('data-chart="step-norms"') == 1  # the per-layer norms over the scan's steps
    assert "watch:" not in page


class _OverflowingLogVar(nn.Module):
    """A VAE-like head whose log-variance starts at 100: exp(100) overflows float32 in the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.bias[1] = 100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _bce_and_kl(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # binary_cross_entropy raises on a NaN probability, as the user's loss would on NaN weights
    return nn.functional.binary_cross_entropy(torch.sigmoid(out[:, 0]), y) + out[:, 1].exp().mean()


def test_no_step_is_taken_with_nonfinite_gradients() -> None:
    """A step with NaN/Inf gradients would write NaN into every weight, and the user's loss_fn
    would then raise over values gradcheck's own step produced (exit 2, blaming loss_fn): the
    probe takes no step with them, and the scan reports the non-finite gradients it measured."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        return _OverflowingLogVar()

    def make_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 4), torch.rand(n).round()

    model = build()
    loss = _bce_and_kl(model(torch.randn(8, 4)), torch.rand(8).round())
    loss.backward()
    # plain autograd: NaN/Inf gradients
    assert not all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())

    report = scan(Target("vae-like", build, make_batch, _bce_and_kl), steps=2)
    assert report.verdict is Status.NONFINITE
    assert report.series is None  # no step was taken
    assert report.config["steps"] == 2 and len(report.loss.values) == 3  # the three probe batches
