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
