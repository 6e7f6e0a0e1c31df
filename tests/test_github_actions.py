"""A GitHub Actions run, simulated by its environment variables: the table run adds workflow-command
annotations on stderr and appends the Markdown summary to $GITHUB_STEP_SUMMARY by itself."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from gradcheck_cli.cli.app import app

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


# --- the CI recipes in the README and the pre-commit hook parse -----------------------------------

ROOT = Path(__file__).parents[1]


def test_pre_commit_hook_runs_a_recipe_without_file_names() -> None:
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "gradcheck" and hook["language"] == "python"
    assert hook["entry"] == "gradcheck run"
    assert hook["pass_filenames"] is False


def test_readme_ci_snippets_are_valid_yaml() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## CI\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 4  # workflow, pre-commit (repo and local), GitLab job
    documents = [yaml.safe_load(block) for block in blocks]
    workflow = documents[0]
    steps = workflow["jobs"]["gradcheck"]["steps"]
    assert any("download.pytorch.org/whl/cpu" in step.get("run", "") for step in steps)
    gitlab = documents[-1]["gradcheck"]
    assert gitlab["artifacts"]["reports"]["junit"] == "gradcheck-junit.xml"
    assert any("--format junit --output gradcheck-junit.xml" in line for line in gitlab["script"])
