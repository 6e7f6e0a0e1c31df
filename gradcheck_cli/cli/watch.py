"""`gradcheck_cli.watch(...)`: watch the user's own training loop, then report.

    from gradcheck_cli import watch
    with watch(model, optimizer, every=50, output="gradcheck-watch.json") as w:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step(); optimizer.zero_grad()
            w.step(loss)
    w.report                                   # the Report, also written to `output`

The engine (measure/watch.py) reads each step's gradients, loss and update ratios; each block of
`every` steps goes to the timeline (analyse/timeline.py), which keeps bounded state and gives the
findings over time at the end. On leaving the with block (also on an exception or Ctrl-C in the
loop, which is then re-raised unchanged) every hook is removed, the Report is built (the scan's
analysis of the measured steps plus the timeline's findings and time series), written to
`output` as JSON (schema gradcheck/report@1) and printed to stderr unless `quiet`.
This is the only watch code that writes files or prints (cli/ is, docs/architecture.md).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gradcheck_cli.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gradcheck_cli.analyse.thresholds import Thresholds
    from gradcheck_cli.report.records import Report

DEFAULT_FAIL_ON = ("exploding", "nonfinite")
"""As the scan's --fail-on default (docs/architecture.md, exit codes)."""


class WatchGateFailed(RuntimeError):
    """Raised on leaving the watch when `fail_on` was given and a finding matches it."""


class Watch:
    """A training watch (module docstring); create it with `watch(...)`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 every: int = 50, sample_every: int = 0, output: str | Path | None = "gradcheck-watch.json",
                 quiet: bool = False, fail_on: Iterable[str] | None = None,
                 thresholds: Thresholds | None = None, scaler: Any = None) -> None:
        from gradcheck_cli.analyse.thresholds import Thresholds
        from gradcheck_cli.measure.distributed import model_name, rank_reduction
        from gradcheck_cli.measure.watch import WatchEngine

        _validate(every, sample_every)
        self.output = Path(output) if output is not None else None
        self.quiet = quiet
        self.fail_on = tuple(fail_on) if fail_on is not None else None
        self.thresholds = thresholds or Thresholds()
        self.target = model_name(model)
        self.report: Report | None = None
        self._engine = WatchEngine(model, optimizer, every, sample_every, self._on_block, self._on_event,
                                   reduce=rank_reduction(model), scaler=scaler)
        self._timeline = _timeline(self._engine.names, self.thresholds)
        self._optimizer_name = type(optimizer).__name__ if optimizer is not None else None
        self._closed = False
        self._engine.attach()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is None:
            self.close()
            return
        try:  # the user's exception goes on unchanged; the report holds what was measured
            self._finish(gate=False)
        except Exception as failure:  # noqa: BLE001 - never hide the user's own error behind ours
            warnings.warn(f"gradcheck watch: no report ({failure})", RuntimeWarning, stacklevel=2)

    def step(self, loss: Any) -> None:
        """Call once per optimizer step, after it, with that step's loss (tensor or number)."""
        if self._closed:
            raise RuntimeError("this gradcheck watch is closed; start a new one with watch(...)")
        self._engine.step(loss)

    def check_gradients(self) -> None:
        """For loops whose backward runs inside `optimizer.step(closure)` (Lightning), after that
        backward: look for NaN/Inf now, before the update writes it into the weights (the
        optimizer's step pre-hook, which does it otherwise, runs before the closure)."""
        if not self._closed:
            self._engine.check_finite()

    def close(self) -> Report:
        """Stop watching (the same as leaving the with block) and return the Report."""
        return self._finish(gate=True)

    @property
    def steps(self) -> int:
        return self._engine.steps

    def _finish(self, gate: bool) -> Report:
        if self._closed and self.report is not None:
            return self.report
        self._closed = True
        self._engine.detach(lockstep=gate)  # on the user's exception: no collective (may be alone)
        self.report = build_report(self)
        from gradcheck_cli.measure.distributed import is_writer

        if is_writer():  # under torch.distributed the blocks are reduced: rank 0 writes the report
            if self.output is not None:
                write_report(self.report, self.output)
            if not self.quiet:
                print_report(self.report)
        if gate and self.fail_on is not None:
            _gate(self.report)
        return self.report

    def _on_block(self, block: Any) -> None:
        self._timeline.add(block)

    def _on_event(self, event: Any) -> None:
        self._timeline.nonfinite(event)


def watch(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, every: int = 50,
          sample_every: int = 0, output: str | Path | None = "gradcheck-watch.json", quiet: bool = False,
          fail_on: Iterable[str] | None = None, thresholds: Thresholds | None = None,
          scaler: Any = None) -> Watch:
    """Watch `model` (and `optimizer`) in the user's own loop; see the module docstring.
    `scaler`: the loop's torch.amp.GradScaler under fp16 mixed precision (measure/watch_scaler.py):
    the norms are the true, unscaled ones and the scaler's skipped overflow steps are counted in the
    report's config ("skipped_steps"), not reported as nonfinite."""
    return Watch(model, optimizer, every=every, sample_every=sample_every, output=output, quiet=quiet,
                 fail_on=fail_on, thresholds=thresholds, scaler=scaler)


def build_report(w: Watch) -> Report:
    """The scan's analysis of the steps the session measured, with the timeline's findings over
    time (each with its step) and its bounded per-layer time series."""
    from gradcheck_cli.analyse.fix_timeline import settings_of, with_timeline_fixes
    from gradcheck_cli.analyse.pipeline import analyse, report_config
    from gradcheck_cli.config import ScanConfig
    from gradcheck_cli.report.records import FindingKind, Status

    engine = w._engine
    report = analyse(engine.measurements(), ScanConfig(), w.thresholds, target=w.target)
    over_time = tuple(w._timeline.findings())
    verdict = report.verdict
    if any(f.kind is FindingKind.NONFINITE for f in over_time):
        verdict = Status.NONFINITE
    config = {"mode": "watch", "every": engine.every, "sample_every": engine.sample_every,
              "steps": engine.steps, "optimizer": w._optimizer_name, "device": str(engine.ring.device),
              "fail_on": list(w.fail_on if w.fail_on is not None else DEFAULT_FAIL_ON)}
    if engine.scaler is not None:  # fp16 AMP: the GradScaler's overflow steps (measure/watch_scaler.py)
        config["skipped_steps"] = engine.scaler.skipped
    findings = report.findings + over_time
    # weight-growth justifies weight-decay, its value from the run's optimizer (analyse/fix_timeline.py)
    recommendations = with_timeline_fixes(report.recommendations, findings, settings_of(engine.optimizer),
                                          w.thresholds)
    return replace(report, config=report_config(config, w.thresholds), verdict=verdict, findings=findings,
                   recommendations=recommendations, series=w._timeline.series())


def write_report(report: Report, path: Path) -> None:
    """The report as JSON (schema gradcheck/report@1) at `path`."""
    from gradcheck_cli.cli.output_file import write_output
    from gradcheck_cli.report.render.json import render_json

    write_output(path, render_json(report))


def print_report(report: Report) -> None:
    """The report's table on stderr (stdout belongs to the user's program)."""
    from gradcheck_cli.report.render.table import render_table

    width = shutil.get_terminal_size((100, 24)).columns
    sys.stderr.write(render_table(report, width=width, color=False) + "\n")


def _gate(report: Report) -> None:
    from gradcheck_cli.report.gate import failing_findings

    failing = failing_findings(report)
    if failing:
        names = ", ".join(f"{f.kind.value} ({f.layer or 'model'})" for f in failing)
        raise WatchGateFailed(f"gradcheck watch: {len(failing)} finding(s) match fail_on: {names}")


def _validate(every: int, sample_every: int) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UserError(f"every must be a whole number of steps, at least 1 (got {every!r})")
    if isinstance(sample_every, bool) or not isinstance(sample_every, int) or sample_every < 0:
        raise UserError(f"sample_every must be a whole number of steps, 0 or more (got {sample_every!r})")


def _timeline(layers: list[str], thresholds: Thresholds) -> Any:
    from gradcheck_cli.analyse.timeline import Timeline

    return Timeline(layers, thresholds)
