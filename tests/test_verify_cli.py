"""--verify from the command line: the flag on `scan` and `run`, `verify: true` in recipes and
[tool.gradcheck], `--fail-on unverified` (exit 0/1/2) and the progress line of each verification.

The scans are api.scan replaced by a stub that returns a hand-made report (tests/verified_reports.py)
and records the ScanConfig it was given: these tests are about the command line, not the engine
(tests/test_verify_run.py tests that).
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cli_errors import assert_one_line_error
from format_reports import healthy_report
from typer.testing import CliRunner
from verified_reports import all_verified_report, verified_report

from gradcheck_cli import api
from gradcheck_cli.cli.app import app
from gradcheck_cli.cli.progress import ScanProgress
from gradcheck_cli.cli.settings import parse_option
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.report.gate import valid_fail_on_words
from gradcheck_cli.report.records import Report

runner = CliRunner()


class _StubScan:
    """api.scan's stand-in: the report ``make`` builds from the config it was given, and every config."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.configs: list[ScanConfig] = []

    def __call__(self, target: str, config: ScanConfig, thresholds: Any = None, on_stage: Any = None,
                 **distributed: Any) -> Report:  # ranks, shard: a scan under torchrun
        self.configs.append(config)
        if on_stage is not None and config.verify:
            on_stage("verifying he-init (1/1)", 0, config.batches)
            on_stage("forward pass", 1, config.batches)
        report: Report = self.make()
        return replace(report, config={**report.config, **config.as_dict()})


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> _StubScan:
    monkeypatch.chdir(tmp_path)  # no pyproject.toml of this repository's own
    scan = _StubScan(verified_report)
    monkeypatch.setattr(api, "scan", scan)
    return scan


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- the flag and the settings --------------------------------------------------------------------


def test_scan_verify_sets_the_config_and_shows_the_verification(stub: _StubScan) -> None:
    result = runner.invoke(app, ["scan", "model.py", "--verify", "--fail-on", "none"])
    assert result.exit_code == 0, result.output
    assert stub.configs[-1].verify is True
    assert "recommendations (5, verified on the same 3 probe batches)" in result.stdout
    assert "applied together: he-init + clip-gradients -> verdict healthy" in result.stdout
    document = json.loads(runner.invoke(app, ["scan", "model.py", "--verify", "--format", "json"]).stdout)
    assert document["config"]["verify"] is True
    assert document["recommendations"][0]["verification"]["status"] == "verified"


def test_without_verify_the_config_says_nothing(stub: _StubScan) -> None:
    stub.make = healthy_report
    document = json.loads(runner.invoke(app, ["scan", "model.py", "--format", "json"]).stdout)
    assert stub.configs[-1].verify is False
    assert "verify" not in document["config"]


def test_pyproject_verify_and_no_verify_on_the_command_line(stub: _StubScan, tmp_path: Path) -> None:
    _write(tmp_path / "pyproject.toml", "[tool.gradcheck]\nverify = true\nfail_on = ['none']\n")
    assert runner.invoke(app, ["scan", "model.py"]).exit_code == 0
    assert stub.configs[-1].verify is True
    assert runner.invoke(app, ["scan", "model.py", "--no-verify"]).exit_code == 0
    assert stub.configs[-1].verify is False
    shown = runner.invoke(app, ["scan", "model.py", "--show-config"]).stdout
    assert any(line.split()[:2] == ["verify", "true"] and "pyproject.toml [tool.gradcheck]" in line
               for line in shown.splitlines())


def test_ill_typed_verify_is_a_usage_error(stub: _StubScan, tmp_path: Path) -> None:
    _write(tmp_path / "pyproject.toml", "[tool.gradcheck]\nverify = 'yes'\n")
    assert_one_line_error(runner.invoke(app, ["scan", "model.py"]), "verify", "expected true or false, got 'yes'")
    assert stub.configs == []
    with pytest.raises(ValueError, match="expected true or false, got 1"):
        parse_option("verify", 1)


def test_recipe_verify_per_scan_and_in_defaults(stub: _StubScan, tmp_path: Path) -> None:
    recipe = _write(tmp_path / "audit.yaml", """version: 1
defaults: {fail_on: none}
scans:
  - {name: checked, target: "builtin:relu-he", verify: true}
  - {name: plain, target: "builtin:deep-sigmoid"}
""")
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert [c.verify for c in stub.configs] == [True, False]
    stub.configs.clear()
    assert runner.invoke(app, ["run", str(recipe), "--verify"]).exit_code == 0
    assert [c.verify for c in stub.configs] == [True, True]
    bad = _write(tmp_path / "bad.yaml",
                 "version: 1\ndefaults: {verify: 1}\nscans: [{name: a, target: 'builtin:relu-he'}]\n")
    assert_one_line_error(runner.invoke(app, ["run", str(bad)]), "bad.yaml:2", "verify",
                          "expected true or false, got 1")


# --- --fail-on unverified -------------------------------------------------------------------------


def test_fail_on_unverified_exit_codes(stub: _StubScan) -> None:
    args = ["scan", "model.py", "--fail-on", "unverified"]
    stub.make = all_verified_report  # every recommendation verified: exit 0 despite an exploding verdict
    assert runner.invoke(app, [*args, "--verify"]).exit_code == 0
    stub.make = verified_report  # partial, no effect, made worse, not applicable: exit 1
    assert runner.invoke(app, [*args, "--verify"]).exit_code == 1
    assert runner.invoke(app, [*args, "--verify", "--exit-zero"]).exit_code == 0
    stub.configs.clear()
    assert_one_line_error(runner.invoke(app, args), "--fail-on unverified needs --verify")
    assert stub.configs == []  # refused before anything ran


def test_fail_on_unverified_in_a_recipe_needs_verify(stub: _StubScan, tmp_path: Path) -> None:
    recipe = _write(tmp_path / "audit.yaml", """version: 1
defaults: {fail_on: [exploding, unverified]}
scans:
  - {name: checked, target: "builtin:relu-he", verify: true}
  - {name: unchecked, target: "builtin:deep-sigmoid"}
""")
    assert_one_line_error(runner.invoke(app, ["run", str(recipe)]), "scan 'unchecked'",
                          "--fail-on unverified needs --verify", "recipe")
    assert stub.configs == []
    assert runner.invoke(app, ["run", str(recipe), "--verify"]).exit_code == 1


@pytest.mark.parametrize("word", valid_fail_on_words())
def test_every_fail_on_word_is_accepted(stub: _StubScan, word: str) -> None:
    # Every accepted value resolves; only "unverified" also needs --verify.
    assert parse_option("fail_on", word) == (word,)
    result = runner.invoke(app, ["scan", "model.py", "--fail-on", word, "--show-config"])
    if word == "unverified":
        assert_one_line_error(result, "--fail-on unverified needs --verify")
        result = runner.invoke(app, ["scan", "model.py", "--fail-on", word, "--verify", "--show-config"])
    assert result.exit_code == 0, result.output


# --- progress -------------------------------------------------------------------------------------


def test_verbose_names_each_verification_and_its_probe_stages(stub: _StubScan) -> None:
    result = runner.invoke(app, ["scan", "model.py", "--verify", "--fail-on", "none", "-v"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert "gradcheck: verifying he-init (1/1)" in lines
    assert "gradcheck: verifying he-init (1/1): forward pass (batch 1/3)" in lines


def test_progress_shows_the_verification_until_the_next_scan() -> None:
    stream = io.StringIO()
    from rich.console import Console

    progress = ScanProgress(scans=2, verbose=True, console=Console(file=stream, width=200, color_system=None))
    with progress:
        progress.start_scan("a")
        progress.on_stage("forward pass", 1, 1)
        progress.on_stage("verifying he-init (1/2)", 0, 1)
        progress.on_stage("forward pass", 1, 1)
        progress.on_stage("verifying clip-gradients (2/2)", 0, 1)
        progress.on_stage("optimizer steps", 1, 1)
        progress.start_scan("b")
        progress.on_stage("forward pass", 1, 1)
    assert stream.getvalue().splitlines() == [
        "gradcheck: scan 1/2 a: forward pass (batch 1/1)",
        "gradcheck: scan 1/2 a: verifying he-init (1/2)",
        "gradcheck: scan 1/2 a: verifying he-init (1/2): forward pass (batch 1/1)",
        "gradcheck: scan 1/2 a: verifying clip-gradients (2/2)",
        "gradcheck: scan 1/2 a: verifying clip-gradients (2/2): optimizer steps (batch 1/1)",
        "gradcheck: scan 2/2 b: forward pass (batch 1/1)",
    ]


def test_progress_keeps_the_verification_of_stages_that_name_it_themselves() -> None:
    # verify/run.py names its probe's stages "verifying he-init (1/2): forward pass", but not the
    # copy's "restoring the model": that one is shown under the verification too, never doubled.
    stream = io.StringIO()
    from rich.console import Console

    progress = ScanProgress(verbose=True, console=Console(file=stream, width=200, color_system=None))
    with progress:
        progress.start_scan("a")
        progress.on_stage("verifying he-init (1/2)", 0, 1)
        progress.on_stage("verifying he-init (1/2): forward pass", 1, 1)
        progress.on_stage("restoring the model", 0, 1)
    assert stream.getvalue().splitlines() == [
        "gradcheck: verifying he-init (1/2)",
        "gradcheck: verifying he-init (1/2): forward pass (batch 1/1)",
        "gradcheck: verifying he-init (1/2): restoring the model",
    ]


# --- end to end, with the engine (verify/run.py) ----------------------------------------------------

FAST = ["--batches", "2", "--batch-size", "8"]


def test_verify_on_a_healthy_builtin_adds_nothing_but_the_config(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    # Nothing to verify: the JSON differs only by "verify": true in config (and so every other format
    # is the same bytes: test_verify_render.test_without_verification_every_format_is_unchanged).
    monkeypatch.chdir(tmp_path)
    json_args = ["scan", "builtin:relu-he", *FAST, "--format", "json"]
    verified = runner.invoke(app, [*json_args, "--verify"])
    plain = runner.invoke(app, json_args)
    assert plain.exit_code == verified.exit_code == 0
    document, baseline = json.loads(verified.stdout), json.loads(plain.stdout)
    assert document["config"].pop("verify") is True
    assert document == baseline


def test_verify_on_a_broken_builtin_reports_every_recommendation(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["scan", "builtin:deep-sigmoid", *FAST, "--verify"]
    document = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    statuses = [rec["verification"]["status"] for rec in document["recommendations"]]
    assert statuses and all(rec["verification"]["summary"] for rec in document["recommendations"])
    assert "verification" in document
    # The table of the same scan, and the unverified gate following the statuses it measured.
    gated = runner.invoke(app, [*args, "--fail-on", "unverified"])
    assert gated.exit_code == (0 if set(statuses) == {"verified"} else 1)
    assert f"recommendations ({len(statuses)}, verified on the same 2 probe batches)" in gated.stdout
    assert "applied together: " in gated.stdout


def test_a_baseline_written_from_a_verified_report_is_the_same() -> None:
    # A baseline names findings only: --verify adds advice, never a finding to accept.
    from format_reports import exploding_result
    from verified_reports import verified_result

    from gradcheck_cli.cli.baseline import baseline_text

    assert baseline_text([verified_result()]) == baseline_text([exploding_result()])
