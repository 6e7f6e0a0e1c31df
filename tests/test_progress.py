"""Progress on stderr: a Rich bar only on a terminal and never with --quiet; -v prints each stage."""

from __future__ import annotations

import io

from rich.console import Console
from typer.testing import CliRunner

from gradcheck_cli.cli.app import app
from gradcheck_cli.cli.progress import ScanProgress

runner = CliRunner()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _console(stream: io.StringIO) -> Console:
    return Console(file=stream, width=80, force_terminal=isinstance(stream, _Terminal), color_system=None)


def _drive(progress: ScanProgress, scans: list[str], batches: int = 2) -> None:
    with progress:
        for name in scans:
            progress.start_scan(name)
            progress.on_stage("loading the target", 0, batches)
            for batch in range(1, batches + 1):
                progress.on_stage("forward pass", batch, batches)
                progress.on_stage("backward pass", batch, batches)
            progress.on_stage("analysing the measurements", 0, batches)


def test_no_bar_when_stderr_is_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = ScanProgress(console=_console(stream))
    assert not progress.shows_bar
    _drive(progress, ["m.py"])
    assert stream.getvalue() == ""


def test_bar_on_a_terminal_is_drawn_and_transient() -> None:
    stream = _Terminal()
    progress = ScanProgress(scans=2, console=_console(stream))
    assert progress.shows_bar
    _drive(progress, ["first", "second"])
    drawn = stream.getvalue()
    assert "second: " in drawn or "first: " in drawn  # the bar names the scan and its stage
    assert "\x1b[" in drawn  # cursor movement: the bar is erased at the end (transient)


def test_quiet_hides_the_bar_and_the_stage_lines() -> None:
    stream = _Terminal()
    progress = ScanProgress(quiet=True, verbose=True, console=_console(stream))
    assert not progress.shows_bar
    _drive(progress, ["m.py"])
    assert stream.getvalue() == ""


def test_verbose_prints_one_line_per_stage_with_batch_and_scan() -> None:
    stream = io.StringIO()
    _drive(ScanProgress(scans=2, verbose=True, console=_console(stream)), ["a", "b"], batches=1)
    lines = stream.getvalue().splitlines()
    assert lines[:4] == [
        "gradcheck: scan 1/2 a: loading the target",
        "gradcheck: scan 1/2 a: forward pass (batch 1/1)",
        "gradcheck: scan 1/2 a: backward pass (batch 1/1)",
        "gradcheck: scan 1/2 a: analysing the measurements",
    ]
    assert lines[4] == "gradcheck: scan 2/2 b: loading the target"


def test_cli_verbose_and_quiet() -> None:
    args = ["scan", "builtin:relu-he", "--batches", "2", "--batch-size", "8", "--format", "json"]
    verbose = runner.invoke(app, [*args, "-v"])
    assert verbose.exit_code == 0
    stages = verbose.stderr.splitlines()
    assert "gradcheck: forward pass (batch 2/2)" in stages
    assert all(line.startswith("gradcheck: ") for line in stages)
    quiet = runner.invoke(app, [*args, "-v", "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert verbose.stdout == quiet.stdout  # progress never touches the report
