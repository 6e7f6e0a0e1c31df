"""analyse/timeline.py: bounded state over a watched run, and the first non-finite step as a finding."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.analyse.timeline import Timeline
from gradcheck_cli.measure.series import NonfiniteEvent, StepBlock
from gradcheck_cli.report.records import FindingKind, Severity


def _block(first: int, steps: int, layers: int = 2) -> StepBlock:
    return StepBlock(first, tuple(1.0 for _ in range(steps)), tuple((0.1,) * layers for _ in range(steps)),
                     None, (1.0,) * layers, (0,) * layers)


def test_a_clean_run_has_no_finding_and_its_state_does_not_grow() -> None:
    timeline = Timeline(["a", "b"], Thresholds())
    timeline.add(_block(0, 50))
    size = sys.getsizeof(timeline.__dict__)
    for first in range(50, 100_000, 50):
        timeline.add(_block(first, 50))
    assert timeline.steps == 100_000
    assert timeline.findings() == []
    assert sys.getsizeof(timeline.__dict__) == size


def test_the_earliest_nonfinite_event_by_step_then_rank_is_the_finding() -> None:
    timeline = Timeline(["a", "b"], Thresholds())
    timeline.nonfinite(NonfiniteEvent(9, 0, "b"))
    timeline.nonfinite(NonfiniteEvent(7, 1, "a", "a", "sqrt", "forward"))
    timeline.nonfinite(NonfiniteEvent(7, 3, "b"))
    [finding] = timeline.findings()
    assert finding.kind is FindingKind.NONFINITE and finding.severity is Severity.ERROR
    assert finding.layer == "a"
    assert finding.evidence["step"] == 7 and finding.evidence["rank"] == 1
    assert finding.evidence["origin_op"] == "sqrt" and finding.evidence["direction"] == "forward"
    assert "step 7 (rank 1)" in finding.message and "sqrt" in finding.message


def test_a_watched_run_that_turns_nan_reports_the_step_in_its_report(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from gradcheck_cli import watch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with watch(model, optimizer, every=5, output=tmp_path / "w.json", quiet=True) as w:
        for step in range(12):
            scale = math.nan if step == 8 else 1.0
            loss = ((model(x) * scale - y) ** 2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            w.step(loss)
    report = w.report
    assert report is not None
    nonfinite = [f for f in report.findings if f.kind is FindingKind.NONFINITE and "step" in f.evidence]
    assert nonfinite and nonfinite[0].evidence["step"] == 8
    assert report.verdict.value == "nonfinite"


# --------------------------------------------------------------------------- loss-spike

def _mlp_losses(steps: int, outlier_at: int | None = None, seed: int = 0) -> list[float]:
    return _mlp_run(steps, outlier_at, seed)[0]


def _mlp_run(steps: int, outlier_at: int | None = None,
             seed: int = 0) -> tuple[list[float], list[tuple[float, ...]]]:
    """A real noisy run: an MLP fitting a fixed regression task by minibatch SGD; at `outlier_at`
    one batch's targets are 30x off (a corrupt batch), the loss of that step is its spike. Returns
    each step's loss and its two Linear layers' squared gradient norms."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x, w_true = torch.randn(512, 8), torch.randn(8, 1)
    y = torch.sin(x @ w_true) + 0.1 * torch.randn(512, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses, grad_sq = [], []
    for step in range(steps):
        index = torch.randint(0, 512, (32,))
        target = y[index] * (30.0 if step == outlier_at else 1.0)
        loss = ((model(x[index]) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        grad_sq.append(tuple(sum(float(p.grad.pow(2).sum()) for p in m.parameters() if p.grad is not None)
                             for m in (model[0], model[2])))
        optimizer.step()
        losses.append(loss.item())
    return losses, grad_sq


def _fold(losses: list[float], every: int = 25, thresholds: Thresholds | None = None) -> Timeline:
    timeline = Timeline(["a"], thresholds or Thresholds())
    for first in range(0, len(losses), every):
        rows = losses[first:first + every]
        timeline.add(StepBlock(first, tuple(rows), tuple((0.1,) for _ in rows), None, (1.0,), (0,)))
    return timeline


def test_a_normal_training_run_has_no_loss_spike() -> None:
    for seed in range(3):
        assert _fold(_mlp_losses(300, seed=seed)).findings() == [], seed


def test_a_corrupt_batch_is_a_loss_spike_at_its_step() -> None:
    [finding] = _fold(_mlp_losses(300, outlier_at=211)).findings()
    assert finding.kind is FindingKind.LOSS_SPIKE and finding.severity is Severity.WARNING
    assert finding.layer is None
    assert finding.evidence["step"] == 211 and finding.evidence["window"] == 100
    assert float(finding.evidence["sigmas"]) >= 7.0  # type: ignore[arg-type]
    assert "step 211" in finding.message


def test_the_warm_up_is_not_judged_and_a_nonfinite_loss_is_not_a_spike() -> None:
    losses = _mlp_losses(300, outlier_at=50)  # before the 100-step window is full
    assert _fold(losses).findings() == []
    losses[250] = math.nan
    assert _fold(losses).findings() == []
    assert [f.evidence["step"] for f in _fold(losses, thresholds=Thresholds(loss_spike_window=20)).findings()] == [50]


def test_the_loss_window_stays_bounded_over_100000_steps() -> None:
    timeline = Timeline(["a"], Thresholds())
    for first in range(0, 100_000, 500):
        losses = tuple(1.0 + 0.01 * math.sin(step) for step in range(first, first + 500))
        timeline.add(StepBlock(first, losses, tuple((0.1,) for _ in losses), None, (1.0,), (0,)))
    assert timeline.steps == 100_000
    assert len(timeline.loss_spikes.window) == 100
    assert timeline.findings() == []


def test_a_watched_run_reports_its_loss_spike(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from gradcheck_cli import watch

    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randn(256, 1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with watch(model, optimizer, every=25, output=tmp_path / "w.json", quiet=True) as w:
        for step in range(160):
            index = torch.randint(0, 256, (32,))
            loss = ((model(x[index]) - y[index] * (30.0 if step == 130 else 1.0)) ** 2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            w.step(loss)
    assert w.report is not None
    spikes = [f for f in w.report.findings if f.kind is FindingKind.LOSS_SPIKE]
    assert [f.evidence["step"] for f in spikes] == [130]


# --------------------------------------------------------------------------- grad-spike

def _fold_run(losses: list[float], grad_sq: list[tuple[float, ...]], every: int = 25) -> Timeline:
    timeline = Timeline(["0", "2"], Thresholds())
    for first in range(0, len(losses), every):
        rows = grad_sq[first:first + every]
        timeline.add(StepBlock(first, tuple(losses[first:first + every]), tuple(rows), None, (1.0, 1.0),
                               (0, 0)))
    return timeline


def test_a_normal_training_run_has_no_gradient_norm_spike() -> None:
    for seed in range(3):
        assert _fold_run(*_mlp_run(300, seed=seed)).findings() == [], seed


def test_a_corrupt_batch_is_a_gradient_norm_spike_at_its_step() -> None:
    found = {f.kind: f for f in _fold_run(*_mlp_run(300, outlier_at=211)).findings()}
    assert set(found) == {FindingKind.LOSS_SPIKE, FindingKind.GRAD_SPIKE}
    spike = found[FindingKind.GRAD_SPIKE]
    assert spike.evidence["step"] == 211 and spike.layer in {"0", "2"}
    assert float(spike.evidence["grad_norm"]) > 5 * float(spike.evidence["window_geomean"])  # type: ignore[arg-type]
    assert "step 211" in spike.message


def test_zero_gradient_norms_are_skipped_not_spikes() -> None:
    losses, grad_sq = _mlp_run(300)
    grad_sq = [(0.0, b) if step % 7 else (a, b) for step, (a, b) in enumerate(grad_sq)]
    assert _fold_run(losses, grad_sq).findings() == []
