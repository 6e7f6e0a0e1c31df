"""A GitHub Actions run, simulated by its environment variables: the table run adds workflow-command
annotations on stderr and appends the Markdown summary to $GITHUB_STEP_SUMMARY by itself."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from gradcheck_cli.cli import app

runner = CliRunner()
EXPLODING = "builtin:relu-normal-init"
FAST = ["--batches", "1", "--batch-size", "8", "--no-color"]


def _scan(*args: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["scan", EXPLODING, *FAST, *args], env=env)


def test_actions_run_gets_annotations_and_a_step_summary(tmp_path: Path) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("# earlier step\n")
    result = _scan(env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 1
    assert "verdict: EXPLODING" in result.stdout  # the table still goes to stdout
    assert "::" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("::error ")]
    assert any(line.startswith("::error title=gradcheck%3A exploding at net.0::") for line in errors)
    text = summary.read_text()
    assert text.startswith("# earlier step\n## gradcheck: `builtin:relu-normal-init` — verdict **EXPLODING**")
    assert "| error | exploding | at net.0 |" in text
    assert "<details><summary>Layers (10)</summary>" in text


def test_summary_is_appended_once_per_run(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    _scan(env=env)
    _scan(env=env)
    assert summary.read_text().count("## gradcheck: `builtin:relu-normal-init`") == 2


def test_unwritable_summary_costs_one_warning_not_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    result = _scan(env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(folder)})
    assert result.exit_code == 1  # the gate's answer, not a crash
    warnings = [line for line in result.stderr.splitlines() if line.startswith("gradcheck: warning:")]
    assert len(warnings) == 1 and "GITHUB_STEP_SUMMARY" in warnings[0]
    assert "Traceback" not in result.stderr


def test_actions_without_a_summary_file_still_annotate() -> None:
    result = _scan(env={"GITHUB_ACTIONS": "true"})
    assert result.exit_code == 1
    assert result.stderr.startswith("::")
    assert "warning" not in result.stderr.split("::", 2)[1]


def test_outside_actions_there_are_no_annotations(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    result = _scan(env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 1
    assert "::" not in result.stderr
    assert not summary.exists()


def test_machine_formats_are_left_alone_under_actions(tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    result = _scan("--format", "json", env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 1
    assert result.stderr == ""
    assert not summary.exists()
