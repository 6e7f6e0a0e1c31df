"""Outputs that behave like files: --output -, symlinks, FIFOs, inherited descriptors, file modes,
control characters in machine formats, and option values beyond what the process can hold.

Where the behaviour is about processes (stdout, a shell's redirect) the CLI runs in a subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_errors import assert_one_line_error
from format_reports import exploding_report, healthy_result
from typer.testing import CliRunner

from gradcheck_cli.cli.app import app
from gradcheck_cli.report.records import ScanResult
from gradcheck_cli.report.render.common import visible
from gradcheck_cli.report.render.junit import render_junit
from gradcheck_cli.report.render.markdown import render_markdown
from gradcheck_cli.report.render.sarif import render_sarif

runner = CliRunner()
HEALTHY = "builtin:relu-he"
FAST = ["--batches", "1", "--batch-size", "4", "-q"]
ANSI_ERROR = "\x1b[31mValueError: the data loader failed\x1b[0m\x07"


def _cli(*args: str, cwd: Path | None = None, **kwargs: object) -> subprocess.CompletedProcess[str]:
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.run([sys.executable, "-m", "gradcheck_cli", *args], text=True, timeout=180, cwd=cwd,
                          **streams)  # type: ignore[call-overload]


def _report_in(text: str) -> dict[str, object]:
    document = json.loads(text)
    assert document["schema"] == "gradcheck/report@1"
    return document


# --- where the report goes ----------------------------------------------------------------------


def test_dash_writes_the_report_to_stdout_and_no_file(tmp_path: Path) -> None:
    done = _cli("scan", HEALTHY, *FAST, "--format", "json", "-o", "-", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _report_in(done.stdout)
    assert list(tmp_path.iterdir()) == []  # no file named '-'


def test_dev_stdout_writes_through_a_shell_redirect_that_appends(tmp_path: Path) -> None:
    log = tmp_path / "ci.log"
    log.write_text("earlier line\n")
    with log.open("a") as appending:  # the shell's `>> ci.log`
        done = _cli("scan", HEALTHY, *FAST, "--format", "json", "--output", "/dev/stdout", stdout=appending)
    assert done.returncode == 0, done.stderr
    assert done.stdout is None
    first, rest = log.read_text().split("\n", 1)
    assert first == "earlier line"  # not truncated by a reopen, not replaced by a new file
    _report_in(rest)


def test_dev_fd_n_writes_to_the_inherited_descriptor(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        done = _cli("scan", HEALTHY, *FAST, "--format", "json", "--output", f"/dev/fd/{write_end}",
                    pass_fds=(write_end,))
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            text = pipe.read()
    finally:
        for fd in (read_end, write_end):
            try:
                os.close(fd)
            except OSError:
                pass
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    _report_in(text)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A named pipe with a reader collecting what is written to it."""
    path = tmp_path / "report.fifo"
    os.mkfifo(path)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(path.read_text()), daemon=True)
    reader.start()
    yield path, received
    if reader.is_alive():  # nothing opened it for writing: let the reader finish
        with open(path, "w"):
            pass
    reader.join(timeout=10)


def test_a_fifo_is_written_through_and_stays_a_fifo(fifo: tuple[Path, list[str]]) -> None:
    path, received = fifo
    result = runner.invoke(app, ["scan", HEALTHY, *FAST, "--format", "json", "--output", str(path)])
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.lstat(path).st_mode)
    for _ in range(100):
        if received:
            break
        threading.Event().wait(0.05)
    _report_in(received[0])


def test_a_symlink_is_kept_and_its_target_gets_the_report(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    target = reports / "latest.json"
    target.write_text("{}\n")
    os.chmod(target, 0o640)
    link = tmp_path / "report.json"
    link.symlink_to(target)
    result = runner.invoke(app, ["scan", HEALTHY, *FAST, "--format", "json", "--output", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    _report_in(target.read_text())
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in reports.iterdir()) == ["latest.json"]  # no temporary left


def test_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.sarif"
    target.parent.mkdir()
    link = tmp_path / "report.sarif"
    link.symlink_to(target)
    result = runner.invoke(app, ["scan", HEALTHY, *FAST, "--format", "sarif", "--output", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and json.loads(target.read_text())["version"] == "2.1.0"


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_new_report_gets_the_mode_the_umask_gives(tmp_path: Path, umask_022: None) -> None:
    report, baseline = tmp_path / "report.xml", tmp_path / "baseline.json"
    result = runner.invoke(app, ["scan", HEALTHY, *FAST, "--format", "junit", "--output", str(report),
                                 "--write-baseline", str(baseline)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    assert stat.S_IMODE(baseline.stat().st_mode) == 0o644


def test_a_replaced_report_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    report = tmp_path / "report.md"
    report.write_text("old\n")
    os.chmod(report, 0o640)  # neither what the umask gives (0644) nor a temporary file's (0600)
    result = runner.invoke(app, ["scan", HEALTHY, *FAST, "--format", "markdown", "--output", str(report)])
    assert result.exit_code == 0, result.output
    assert report.read_text().startswith("## gradcheck")
    assert stat.S_IMODE(report.stat().st_mode) == 0o640


def test_write_baseline_dash_needs_the_report_elsewhere(tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["scan", HEALTHY, *FAST, "--write-baseline", "-"]),
                          "--write-baseline - and the report would both go to stdout")
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["scan", HEALTHY, *FAST, "--format", "json", "-o", str(report),
                                 "--write-baseline", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["schema"] == "gradcheck/baseline@1"
    _report_in(report.read_text())


# --- control characters in machine formats --------------------------------------------------------

BROKEN_MODEL = f"""
import torch
from torch import nn

def build_model():
    return nn.Linear(4, 2)

def make_batch(batch_size):
    raise ValueError({ANSI_ERROR!r})
"""


def test_junit_with_an_ansi_error_message_is_valid_xml(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(textwrap.dedent(BROKEN_MODEL))
    recipe = tmp_path / "audit.yaml"
    recipe.write_text("version: 1\nscans:\n  - {name: broken, target: broken.py}\n"
                      f"  - {{name: healthy, target: '{HEALTHY}'}}\n")
    report = tmp_path / "junit.xml"
    done = _cli("run", str(recipe), "--batches", "1", "--batch-size", "4", "-q", "--format", "junit",
                "--output", str(report), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    root = ET.parse(report).getroot()  # raises on an ESC character
    error = root.find("testsuite/testcase/error")
    assert error is not None
    message = error.get("message", "")
    assert "\\x1b[31mValueError: the data loader failed\\x1b[0m\\x07" in message
    assert "\x1b" not in report.read_text()


def _result_with_controls() -> list[ScanResult]:
    report = exploding_report()
    finding = dataclasses.replace(report.findings[0], message="grad/weight \x1b[1m3e+03\x1b[0m\x00 > 1000")
    report = dataclasses.replace(report, findings=(finding, *report.findings[1:]))
    return [ScanResult("mlp\x1b[2K", "models/mlp.py", report), ScanResult("broken", "broken.py", None, ANSI_ERROR),
            healthy_result()]


@pytest.mark.parametrize("render", [render_junit, render_markdown, render_sarif], ids=["junit", "markdown", "sarif"])
def test_machine_formats_write_control_characters_as_visible_escapes(render) -> None:  # type: ignore[no-untyped-def]
    text = render(_result_with_controls())
    assert not any(ch in text for ch in "\x1b\x07\x00")
    document = json.dumps(json.loads(text)) if render is render_sarif else text
    assert "\\x1b[1m3e+03\\x1b[0m\\x00" in document.replace("\\\\", "\\")
    assert "\\x1b[31mValueError" in document.replace("\\\\", "\\")
    if render is render_junit:
        ET.fromstring(text.split("\n", 1)[1])  # well-formed without the declaration


def test_tabs_and_line_breaks_stay_as_they_are() -> None:
    assert visible("a\tb\nc\r\nd") == "a\tb\nc\r\nd"
    assert visible("\x1b[0m\x7f\x9b\udc80\uffff") == "\\x1b[0m\\x7f\\x9b\\udc80\\uffff"


# --- option values the process cannot hold --------------------------------------------------------


@pytest.mark.parametrize("args,needles", [
    (["--timeout", "1e10"], ["--timeout: expected at most 1e+09 seconds", "got 10000000000.0"]),
    (["--seed", "18446744073709551615"], ["--seed: expected an integer from 0 to 9223372036854775807",
                                          "got 18446744073709551615"]),
    (["--seed", "-1"], ["--seed: expected an integer from 0"]),
])
def test_option_values_beyond_the_process_limits_exit_2_naming_the_option(args: list[str],
                                                                           needles: list[str]) -> None:
    assert_one_line_error(runner.invoke(app, ["scan", HEALTHY, *FAST, *args]), *needles)


def test_largest_seed_still_scans() -> None:
    result = runner.invoke(app, ["scan", HEALTHY, *FAST, "--format", "json", "--seed", str(2**63 - 1)])
    assert result.exit_code == 0, result.output


def test_timeout_beyond_the_timer_from_a_recipe_names_the_key(tmp_path: Path) -> None:
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(f"version: 1\ndefaults: {{timeout: 1.0e+10}}\nscans:\n  - {{name: a, target: '{HEALTHY}'}}\n")
    assert_one_line_error(runner.invoke(app, ["run", str(recipe)]), "timeout", "expected at most 1e+09 seconds")


def test_deeply_nested_baseline_names_the_file(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text('{"schema": "gradcheck/baseline@1", "findings": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert_one_line_error(runner.invoke(app, ["scan", HEALTHY, *FAST, "--baseline", str(baseline)]),
                          f"baseline {baseline}: nested too deeply to read")


def test_deeply_nested_pyproject_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.gradcheck]\nfail_on = " + "[" * 100_000 + "]" * 100_000 + "\n")
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(runner.invoke(app, ["scan", HEALTHY, *FAST]), "pyproject.toml: nested too deeply")
