"""The CI gate from the command line: baselines, --exit-zero, --output written atomically, the
stdout/stderr split of every format, and the exit code of several scans."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cli_errors import assert_one_line_error
from format_reports import errored_result, exploding_result, healthy_result, run_results
from typer.testing import CliRunner

from gradcheck_cli.cli import output as cli_output
from gradcheck_cli.cli.app import app
from gradcheck_cli.cli.baseline import SCHEMA, baseline_text, parse_baseline
from gradcheck_cli.cli.output_file import write_output
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.gate import run_exit_code, scan_exit_code

runner = CliRunner()
EXPLODING = "builtin:relu-normal-init"  # every Linear explodes (zoo docstring)
HEALTHY = "builtin:relu-he"
FAST = ["--batches", "1", "--batch-size", "8"]


def _scan(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["scan", *args, *FAST], env=env)


# --- exit codes of results ----------------------------------------------------------------------


def test_exit_codes_of_scans_and_runs() -> None:
    assert [scan_exit_code(r) for r in run_results()] == [1, 0, 2]
    assert run_exit_code(run_results()) == 2
    assert run_exit_code([exploding_result(), healthy_result()]) == 1
    assert run_exit_code([healthy_result()]) == 0
    accepted = frozenset({"exploding:net.0", "exploding:net.2", "divergence:-"})
    assert run_exit_code([exploding_result(), healthy_result()], accepted) == 0
    assert run_exit_code([errored_result()], accepted) == 2  # a baseline never hides an error


# --- the baseline file --------------------------------------------------------------------------


def test_baseline_text_is_sorted_fingerprints_without_numbers() -> None:
    document = json.loads(baseline_text(run_results()))
    assert document["schema"] == SCHEMA
    prints = [entry["fingerprint"] for entry in document["findings"]]
    assert prints == sorted(prints) == ["divergence:-", "exploding:net.0", "exploding:net.2",
                                        "saturated-activation:head"]
    assert document["findings"][0] == {"fingerprint": "divergence:-", "target": "models/mlp.py:build_model",
                                       "kind": "divergence", "layer": None}
    # Other numbers, same baseline: it records identities only.
    assert baseline_text([exploding_result(3.0)]) == baseline_text([exploding_result(1.0)])


def test_baseline_round_trip() -> None:
    known = parse_baseline(baseline_text(run_results()), "b.json")
    assert known == {"divergence:-", "exploding:net.0", "exploding:net.2", "saturated-activation:head"}


@pytest.mark.parametrize(("text", "needle"), [
    ("{not json", "not valid JSON (line 1"),
    ('{"schema": "other", "findings": []}', 'expected a JSON object with "schema": "gradcheck/baseline@1"'),
    ('{"schema": "gradcheck/baseline@1", "findings": {}}', '"findings" must be a list'),
    ('{"schema": "gradcheck/baseline@1", "findings": [{"kind": "exploding"}]}', "finding 1 has no"),
])
def test_bad_baselines_name_the_file_and_the_problem(text: str, needle: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_baseline(text, "ci/baseline.json")
    message = str(caught.value)
    assert message.startswith("baseline ci/baseline.json: ") and needle in message
    assert "--write-baseline" in message


def test_write_baseline_then_rerun_passes_and_a_new_finding_fails(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    first = _scan(EXPLODING, "--write-baseline", str(baseline), "--format", "json")
    assert first.exit_code == 1
    assert f"wrote the baseline to {baseline}" in first.stderr
    document = json.loads(baseline.read_text())
    assert document["schema"] == SCHEMA and document["findings"]
    assert all(set(entry) == {"fingerprint", "target", "kind", "layer"} for entry in document["findings"])

    again = _scan(EXPLODING, "--baseline", str(baseline), "--no-color")
    assert again.exit_code == 0, again.output
    assert "baselined" in again.stdout

    # Forget one accepted finding: it is new again, and the gate fails on it alone.
    dropped = document["findings"].pop(0)
    baseline.write_text(json.dumps(document))
    new = _scan(EXPLODING, "--baseline", str(baseline), "--format", "junit")
    assert new.exit_code == 1
    assert f'name="{dropped["fingerprint"]}"' in new.stdout


def test_missing_baseline_is_one_line_before_scanning(tmp_path: Path) -> None:
    result = _scan(HEALTHY, "--baseline", str(tmp_path / "nope.json"))
    assert_one_line_error(result, "nope.json does not exist", "--write-baseline")


# --- --exit-zero --------------------------------------------------------------------------------


def test_exit_zero_turns_findings_into_zero_but_never_hides_errors(tmp_path: Path) -> None:
    assert _scan(EXPLODING, "--format", "json").exit_code == 1
    assert _scan(EXPLODING, "--format", "json", "--exit-zero").exit_code == 0
    result = _scan(str(tmp_path / "missing.py"), "--exit-zero")
    assert result.exit_code == 2


# --- formats and streams ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "sarif", "junit", "markdown"])
def test_documents_are_alone_on_stdout(fmt: str) -> None:
    result = _scan(EXPLODING, "--format", fmt)
    assert result.exit_code == 1
    assert result.stderr == ""
    if fmt in ("json", "sarif"):
        json.loads(result.stdout)
    elif fmt == "junit":
        assert result.stdout.startswith("<?xml")
    else:
        assert result.stdout.startswith("## gradcheck: `builtin:relu-normal-init`")


def test_github_format_writes_annotations_to_stderr_only() -> None:
    result = _scan(EXPLODING, "--format", "github")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith(("::error ", "::warning ", "::notice ")) for line in lines)
    assert any(line.startswith("::error title=gradcheck%3A exploding at net.0::") for line in lines)


def test_unknown_format_is_one_line() -> None:
    assert_one_line_error(_scan(HEALTHY, "--format", "xml"), "invalid --format 'xml'", "sarif", "junit")


# --- --output -----------------------------------------------------------------------------------


def test_output_writes_the_file_and_keeps_stdout_empty(tmp_path: Path) -> None:
    target = tmp_path / "report.sarif"
    result = _scan(EXPLODING, "--format", "sarif", "--output", str(target))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"gradcheck: wrote the sarif report to {target}\n"
    assert json.loads(target.read_text())["version"] == "2.1.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.sarif"]
    quiet = _scan(EXPLODING, "--format", "sarif", "--output", str(target), "--quiet")
    assert quiet.stderr == ""


def test_output_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    result = _scan(HEALTHY, "--output", str(tmp_path / "no" / "such" / "report.json"), "--format", "json")
    assert_one_line_error(result, "cannot write", "report.json")


def test_a_failing_render_leaves_the_old_report_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    target.write_text("the previous report\n")

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(cli_output, "render", broken)
    result = _scan(HEALTHY, "--format", "json", "--output", str(target))
    assert result.exit_code == 2
    assert target.read_text() == "the previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failing_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    target.write_text("old\n")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(UserError, match="cannot write .*report.json: No space left on device"):
        write_output(target, "new\n" * 1000)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_output_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    target.write_text("x" * 10_000)
    write_output(target, "short\n")
    assert target.read_text() == "short\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_interrupted_write_removes_its_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "r.json"

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_output(target, "{}\n")
    assert list(tmp_path.iterdir()) == []


# --- a recipe run: one report in every format ---------------------------------------------------

THREE_SCANS = """\
version: 1
defaults: {batches: 1, batch_size: 8}
scans:
  - {name: healthy, target: "builtin:relu-he"}
  - {name: exploding, target: "builtin:relu-normal-init"}
  - {name: broken, target: broken.py}
"""


@pytest.mark.parametrize("fmt", ["table", "json", "markdown", "sarif", "junit", "github"])
def test_a_three_scan_recipe_gives_one_report_in_every_format(fmt: str, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import torch\nmodel = nn.Linear(2, 2)\n")
    recipe = tmp_path / "three.yaml"
    recipe.write_text(THREE_SCANS)
    out = tmp_path / f"report.{fmt}"
    result = runner.invoke(app, ["run", str(recipe), "--format", fmt, "--output", str(out), "--no-color"])
    assert result.exit_code == 2  # the worst scan: one could not run
    assert result.stdout == ""
    text = out.read_text()
    if fmt == "json":
        assert [s["exit_code"] for s in json.loads(text)["scans"]] == [0, 1, 2]
    elif fmt == "sarif":
        assert json.loads(text)["runs"][0]["invocations"][0]["executionSuccessful"] is False
    elif fmt == "junit":
        assert [s.get("name") for s in ET.fromstring(text).findall("testsuite")] == ["healthy", "exploding",
                                                                                   "broken"]
    elif fmt == "markdown":
        assert text.startswith("## gradcheck: 3 scans — 1 passed, 1 failed, 1 errored")
    elif fmt == "github":
        assert "::error title=gradcheck%3A scan broken failed" in text
    else:
        assert text.splitlines()[-1] == "overall: 3 scans: 1 passed, 1 failed, 1 errored"
