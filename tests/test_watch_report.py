"""The watch report's finish: the bounded time series (analyse/series_sampler.py), one step
numbering (from 0), step and rank on every timeline finding, the header, and the issue's example."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

from gradcheck_cli.analyse.series_sampler import MAX_BLOCK_POINTS, MAX_PINS, MAX_POINTS, MAX_STEP_POINTS, SeriesSampler
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.analyse.timeline import Timeline
from gradcheck_cli.cli.app import app
from gradcheck_cli.measure.series import NonfiniteEvent, StepBlock
from gradcheck_cli.report.records import FindingKind, Report
from gradcheck_cli.report.render.json import render_json
from gradcheck_cli.report.series import WatchSeries

runner = CliRunner()


def _block(first: int, rows: int, layers: int = 2, loss: float | None = None) -> StepBlock:
    """Rows whose numbers say where they came from: loss = step, grad_sq = (step + 1)^2 per layer,
    update ratios on every 10th step (NaN rows elsewhere, as the watch writes them), weight_sq =
    the block's last step."""
    steps = range(first, first + rows)
    updates = tuple((1e-3,) * layers if step % 10 == 0 else (math.nan,) * layers for step in steps)
    return StepBlock(first, tuple(float(s) if loss is None else loss for s in steps),
                     tuple((float(s + 1) ** 2,) * layers for s in steps), updates,
                     (float(first + rows - 1),) * layers, (0,) * layers)


def _sampled(steps: int, every: int) -> WatchSeries:
    sampler = SeriesSampler()
    for first in range(0, steps, every):
        sampler.add(_block(first, min(every, steps - first)))
    return sampler.series(["a", "b"])


def test_a_short_run_keeps_every_step_and_its_numbers() -> None:
    series = _sampled(120, every=50)
    assert series.steps == tuple(range(120))  # from 0: step k is the (k+1)-th w.step call
    assert series.loss == tuple(float(s) for s in range(120))
    layer = series.layers[0]
    assert layer.grad_norm == tuple(float(s + 1) for s in range(120))
    assert [s for s, v in zip(series.steps, layer.update_to_weight) if v is not None] == list(range(0, 120, 10))
    # The weight norm is read at a flush only: the last step of each block.
    assert {s: v for s, v in zip(series.steps, layer.weight_norm) if v is not None} == \
        {49: math.sqrt(49), 99: math.sqrt(99), 119: math.sqrt(119)}


def test_a_million_steps_give_a_report_as_small_as_a_thousand() -> None:
    short, long = _sampled(1_000, every=50), _sampled(1_000_000, every=50)
    assert len(long.steps) <= MAX_POINTS + 1 and len(short.steps) <= MAX_POINTS + 1
    assert len(long.steps) > MAX_STEP_POINTS // 2  # decimated, not emptied
    assert len(json.dumps(long.as_dict())) < 2 * len(json.dumps(short.as_dict()))
    assert long.steps[0] == 0 and long.steps[-1] == 999_999
    assert list(long.steps) == sorted(set(long.steps))
    weights = [s for s, v in zip(long.steps, long.layers[0].weight_norm) if v is not None]
    assert MAX_BLOCK_POINTS // 2 < len(weights) <= MAX_BLOCK_POINTS + 1
    assert all((s + 1) % 50 == 0 for s in weights)  # block ends only
    regular = [s for s in long.steps if s not in weights and s != long.steps[-1]]
    gaps = {b - a for a, b in zip(regular, regular[1:])}
    assert len(gaps) == 1  # evenly spaced by the stride


def test_every_1_and_every_1000_stay_bounded_too() -> None:
    for every in (1, 1000):
        series = _sampled(100_000, every=every)
        assert len(series.steps) <= MAX_POINTS + 1, every
        assert series.steps[0] == 0 and series.steps[-1] == 99_999


def test_a_finding_step_is_kept_in_the_series_whatever_the_stride() -> None:
    timeline = Timeline(["a", "b"], Thresholds())
    for first in range(0, 20_000, 100):
        losses = tuple(1.0 + 0.01 * math.sin(s) for s in range(first, first + 100))
        if first == 15_300:
            losses = losses[:37] + (9.0,) + losses[38:]  # a spike at step 15,337
        rows = tuple((0.01 * (1 + 0.1 * math.sin(s)),) * 2 for s in range(first, first + 100))
        timeline.add(StepBlock(first, losses, rows, None, (4.0, 4.0), (0, 0)))
    timeline.add(_block(20_000, 13, loss=1.0))  # the watch flushes at once on a non-finite step
    timeline.nonfinite(NonfiniteEvent(20_012, 0, "b"))
    series = timeline.series()
    assert 15_337 % 2 == 1 and 15_337 in series.steps  # every stride here is even
    assert series.loss[series.steps.index(15_337)] == 9.0
    assert 20_012 in series.steps and len(series.steps) <= MAX_POINTS + MAX_PINS + 1
    found = {f.kind: f for f in timeline.findings()}
    assert found[FindingKind.LOSS_SPIKE].step == 15_337 and found[FindingKind.NONFINITE].step == 20_012


def test_every_timeline_finding_carries_its_step_and_rank() -> None:
    timeline = Timeline(["a", "b"], Thresholds(loss_spike_window=20))
    for first in range(0, 200, 10):
        losses = tuple(1.0 + 0.01 * math.sin(s) + (5.0 if s == 150 else 0.0) for s in range(first, first + 10))
        rows = tuple((0.01 * (1 + 0.1 * math.sin(s)) * (1e4 if s == 170 else 1.0), 0.01) for s in
                     range(first, first + 10))
        timeline.add(StepBlock(first, losses, rows, None, (4.0, 4.0), (0, 0)))
    timeline.nonfinite(NonfiniteEvent(190, 1, "a"))
    found = {f.kind: f for f in timeline.findings()}
    assert set(found) == {FindingKind.NONFINITE, FindingKind.LOSS_SPIKE, FindingKind.GRAD_SPIKE}
    assert (found[FindingKind.NONFINITE].step, found[FindingKind.NONFINITE].rank) == (190, 1)
    assert (found[FindingKind.LOSS_SPIKE].step, found[FindingKind.LOSS_SPIKE].rank) == (150, 0)
    assert (found[FindingKind.GRAD_SPIKE].step, found[FindingKind.GRAD_SPIKE].rank) == (170, 0)
    for finding in found.values():  # the finding, its evidence and its message: one numbering
        assert finding.evidence["step"] == finding.step and f"step {finding.step}" in finding.message


def _issue_example(tmp_path: Path, steps: int = 60, poison: int | None = None) -> Path:
    """The issue's example as written, on a tiny model whose forward returns an object with .loss
    and a list of dict batches (labelled with plain autograd, no gradcheck involved)."""
    import torch
    from torch import nn

    from gradcheck_cli import watch

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 1)

        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(loss=nn.functional.mse_loss(self.body(input_ids), labels))

    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = [{"input_ids": torch.randn(8, 4), "labels": torch.randn(8, 1)} for _ in range(steps)]
    if poison is not None:
        loader[poison]["input_ids"][0, 0] = float("nan")
    output = tmp_path / "gradcheck-watch.json"
    with watch(model, optimizer, every=50, output=str(output), quiet=True) as w:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step(); optimizer.zero_grad()  # noqa: E702 - as the issue writes it
            w.step(loss)
    assert w.report is not None and w.report.to_dict() == json.loads(output.read_text())
    return output


def test_the_issue_example_runs_and_a_healthy_run_has_no_finding(tmp_path: Path) -> None:
    path = _issue_example(tmp_path)
    document = json.loads(path.read_text())
    report = Report.from_dict(document)
    assert report.findings == () and report.verdict.value == "healthy"
    assert render_json(report) == path.read_text()  # the round trip is exact, byte for byte
    assert report.series is not None and report.series.steps == tuple(range(60))
    assert [layer.name for layer in report.series.layers] == ["body"]
    weights = [v for v in report.series.layers[0].weight_norm if v is not None]
    assert len(weights) == 2  # the flushes after step 49 and step 59


def test_gradcheck_report_reads_and_renders_a_watch_report(tmp_path: Path) -> None:
    path = _issue_example(tmp_path, steps=40, poison=23)
    table = runner.invoke(app, ["report", str(path)])
    assert table.exit_code == 1  # nonfinite, the default gate
    assert "watched: 40 steps of SGD, every=50, cpu" in table.stdout and "probe:" not in table.stdout
    assert "watch: 40 sampled steps, 0–39" in table.stdout
    assert "(step 23, rank 0)" in table.stdout  # the 24th w.step call, counted from 0
    markdown = runner.invoke(app, ["report", str(path), "--format", "markdown"]).stdout
    assert "watched: 40 steps of SGD, every=50, cpu · fails on: exploding, nonfinite" in markdown
    assert "probe:" not in markdown
    assert runner.invoke(app, ["report", str(path), "--format", "json"]).stdout == path.read_text()
    finding = next(f for f in json.loads(path.read_text())["findings"] if f["kind"] == "nonfinite")
    assert (finding["step"], finding["rank"], finding["evidence"]["step"]) == (23, 0, 23)


def _exact_spikes(values: list[float], sigmas: float, window: int) -> list[int]:
    """The spike rule re-summed exactly at every step (loss_spike.py's rule, written out)."""
    spikes: list[int] = []
    kept: list[float] = []
    for step, value in enumerate(values):
        if not math.isfinite(value):
            continue
        if len(kept) == window:
            mean = math.fsum(kept) / window
            std = math.sqrt(math.fsum((x - mean) ** 2 for x in kept) / window)
            if std > 0 and value - mean >= sigmas * std:
                spikes.append(step)
            kept.pop(0)
        kept.append(value)
    return spikes


def test_the_running_sums_find_exactly_the_spikes_the_exact_rule_finds() -> None:
    import random

    from gradcheck_cli.analyse.loss_spike import LossSpikes

    rng = random.Random(0)
    for trial in range(40):
        level, noise, values = rng.choice([1.0, 1e6, -3.0, 1e-9]), rng.choice([0.0, 1e-12, 1e-3, 0.5]), []
        for _ in range(1500):
            if rng.random() < 0.003:
                level *= rng.choice([1e6, 1e-6, -1.0])  # a regime change: stale shifts and cancellation
            spike = rng.choice([3.0, 6.99, 7.01, 50.0]) * noise if rng.random() < 0.01 else 0.0
            values.append(math.nan if rng.random() < 0.002 else level + rng.gauss(0, noise) + spike)
        detector = LossSpikes(7.0, 50)
        for first in range(0, len(values), 37):  # in blocks, as the watch flushes them
            detector.add(first, values[first:first + 37])
        exact = _exact_spikes(values, 7.0, 50)
        assert detector.count == len(exact), trial
        assert (detector.first.step if detector.first else None) == (exact[0] if exact else None), trial


def test_a_rank_mismatch_step_is_kept_in_the_series() -> None:
    from dataclasses import replace

    from gradcheck_cli.measure.series import ReplicaSpread

    timeline = Timeline(["a", "b"], Thresholds())
    for first in range(0, 20_000, 100):
        block = _block(first, 100)
        relative = tuple(0.5 if step == 12_345 else 0.0 for step in block.steps)  # rank 1 drifted there
        timeline.add(replace(block, replicas=ReplicaSpread(relative, (1,) * 100, (1,) * 100)))
    series = timeline.series()
    [mismatch] = [f for f in timeline.findings() if f.kind is FindingKind.RANK_MISMATCH]
    assert (mismatch.step, mismatch.rank, mismatch.layer) == (12_345, 1, "b")
    assert 12_345 % 2 == 1 and 12_345 in series.steps  # every stride here is even
