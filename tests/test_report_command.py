"""`gradcheck report FILE`: a saved JSON report rendered again, with the scan's exit codes.

The scan runs once per built-in (module fixtures); every check after it reads the saved file only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_errors import assert_one_line_error
from typer.testing import CliRunner

from gradcheck_cli.cli.app import app

runner = CliRunner()
FORMATS = ("table", "json", "markdown", "sarif", "junit", "github")
GATES = (None, "none", "any", "vanishing", "exploding", "nonfinite", "dead-relu")
BROKEN = ("relu-normal-init", "deep-sigmoid", "nan-log")


def _scan_args(builtin: str) -> list[str]:
    return ["scan", f"builtin:{builtin}", "--batches", "2", "--no-color"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each broken built-in's JSON report, written by `gradcheck scan --format json -o FILE`."""
    folder = tmp_path_factory.mktemp("reports")
    paths = {}
    for builtin in BROKEN:
        paths[builtin] = folder / f"{builtin}.json"
        result = runner.invoke(app, [*_scan_args(builtin), "--format", "json", "-o", str(paths[builtin]), "-q"])
        assert result.exit_code in (0, 1) and paths[builtin].is_file(), result.output
    return paths


@pytest.mark.parametrize("builtin", BROKEN)
def test_exit_codes_equal_the_scans(saved: dict[str, Path], builtin: str) -> None:
    codes = set()
    for gate in GATES:
        extra = [] if gate is None else ["--fail-on", gate]
        scanned = runner.invoke(app, [*_scan_args(builtin), "--format", "json", *extra]).exit_code
        reported = runner.invoke(app, ["report", str(saved[builtin]), *extra]).exit_code
        assert reported == scanned, (gate, reported, scanned)
        codes.add(reported)
    assert codes == {0, 1}  # the gates tried do both pass and fail each of these reports


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_as_the_scan_did(saved: dict[str, Path], fmt: str) -> None:
    scanned = runner.invoke(app, [*_scan_args("relu-normal-init"), "--format", fmt])
    reported = runner.invoke(app, ["report", str(saved["relu-normal-init"]), "--format", fmt, "--no-color"])
    assert reported.exit_code == scanned.exit_code == 1
    assert reported.stdout == scanned.stdout
    if fmt == "github":  # annotations go to stderr, as the scan's do
        assert "::error" in reported.stderr and reported.stderr == scanned.stderr


def test_json_comes_back_byte_for_byte_and_output_goes_to_a_file(saved: dict[str, Path], tmp_path: Path) -> None:
    again = tmp_path / "again.json"
    result = runner.invoke(app, ["report", str(saved["nan-log"]), "--format", "json", "-o", str(again)])
    assert result.exit_code == 1 and result.stdout == ""
    assert again.read_text() == saved["nan-log"].read_text()


def test_the_saved_fail_on_is_the_default(saved: dict[str, Path], tmp_path: Path) -> None:
    document = json.loads(saved["deep-sigmoid"].read_text())
    assert runner.invoke(app, ["report", str(saved["deep-sigmoid"])]).exit_code == 0
    document["config"]["fail_on"] = ["vanishing"]
    gated = tmp_path / "gated.json"
    gated.write_text(json.dumps(document))
    assert runner.invoke(app, ["report", str(gated)]).exit_code == 1
    assert runner.invoke(app, ["report", str(gated), "--fail-on", "none"]).exit_code == 0
    assert runner.invoke(app, ["report", str(gated), "--fail-on", "vanishing", "--exit-zero"]).exit_code == 0


def test_usage_errors_exit_two_with_one_line(saved: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    assert_one_line_error(runner.invoke(app, ["report", str(missing)]), "missing.json", "does not exist")
    assert_one_line_error(runner.invoke(app, ["report", str(tmp_path)]), "is a directory")
    broken = tmp_path / "broken.json"
    broken.write_text("{\"schema\": ")
    assert_one_line_error(runner.invoke(app, ["report", str(broken)]), "not valid JSON")
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"schema": "gradcheck/baseline@1", "findings": []}))
    assert_one_line_error(runner.invoke(app, ["report", str(baseline)]), "not a gradcheck report")
    document = json.loads(saved["nan-log"].read_text())
    del document["layers"]
    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(document))
    assert_one_line_error(runner.invoke(app, ["report", str(truncated)]), "'layers'")
    good = str(saved["nan-log"])
    assert_one_line_error(runner.invoke(app, ["report", good, "--fail-on", "sunny"]), "sunny")
    assert_one_line_error(runner.invoke(app, ["report", good, "--format", "pdf"]), "pdf")
    assert_one_line_error(runner.invoke(app, ["report", good, "--fail-on", "unverified"]), "--verify")


def _watched_run(path: Path, poison_step: int | None) -> None:
    """A tiny regression trained for 30 steps under the watch; at `poison_step` the loss turns NaN."""
    import torch
    from torch import nn

    import gradcheck_cli

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    with gradcheck_cli.watch(model, opt, every=10, output=path, quiet=True) as w:
        for step in range(1, 31):
            x = torch.randn(8, 6, generator=g)
            if step == poison_step:
                x[0, 0] = float("nan")
            loss = nn.functional.mse_loss(model(x), x[:, :1])
            loss.backward()
            opt.step()
            opt.zero_grad()
            w.step(loss)


def test_a_watch_report_is_read_rendered_and_gated(tmp_path: Path) -> None:
    healthy, broken = tmp_path / "healthy.json", tmp_path / "broken.json"
    _watched_run(healthy, None)
    _watched_run(broken, 12)
    assert runner.invoke(app, ["report", str(healthy)]).exit_code == 0
    result = runner.invoke(app, ["report", str(broken), "--format", "json"])
    assert result.exit_code == 1  # the default gate holds nonfinite
    assert result.stdout == broken.read_text()  # read back and written again byte for byte
    assert "nonfinite" in runner.invoke(app, ["report", str(broken), "--format", "markdown"]).stdout
    assert runner.invoke(app, ["report", str(broken), "--fail-on", "none"]).exit_code == 0


RUN_FORMATS = (*FORMATS, "html")


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A recipe run of an exploding, a vanishing and a broken model, and its run@1 document."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "broken.py").write_text("def build_model():\n    raise ValueError('broken on purpose')\n")
    recipe = folder / "recipe.yaml"
    recipe.write_text("version: 1\ndefaults:\n  batches: 2\nscans:\n"
                      "  - {name: exploding, target: 'builtin:relu-normal-init'}\n"
                      "  - {name: vanishing, target: 'builtin:deep-sigmoid'}\n"
                      "  - {name: broken, target: broken.py}\n", encoding="utf-8")
    document = folder / "run.json"
    result = runner.invoke(app, ["run", str(recipe), "--format", "json", "-o", str(document), "-q"])
    assert result.exit_code == 2 and document.is_file(), result.output
    return recipe, document


@pytest.mark.parametrize("fmt", RUN_FORMATS)
def test_a_recipe_runs_document_renders_as_the_run_did(saved_run: tuple[Path, Path], fmt: str) -> None:
    recipe, document = saved_run
    ran = runner.invoke(app, ["run", str(recipe), "--format", fmt, "--no-color", "-q"])
    reported = runner.invoke(app, ["report", str(document), "--format", fmt, "--no-color"])
    assert reported.exit_code == ran.exit_code == 2  # the broken model could not run
    assert reported.stdout == ran.stdout


def test_a_recipe_runs_document_is_gated_per_scan(saved_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, document = saved_run
    run = json.loads(document.read_text())
    assert [scan["error"] is not None for scan in run["scans"]] == [False, False, True]
    run["scans"] = [scan for scan in run["scans"] if scan["report"] is not None]  # drop the broken model
    ran = tmp_path / "ran.json"
    ran.write_text(json.dumps(run))
    assert runner.invoke(app, ["report", str(ran)]).exit_code == 1  # exploding fails its own gate
    assert runner.invoke(app, ["report", str(ran), "--fail-on", "none"]).exit_code == 0
    run["scans"] = [scan for scan in run["scans"] if scan["name"] == "vanishing"]
    ran.write_text(json.dumps(run))
    assert runner.invoke(app, ["report", str(ran)]).exit_code == 0  # vanishing does not fail the default gate
    assert runner.invoke(app, ["report", str(ran), "--fail-on", "vanishing"]).exit_code == 1
    run["scans"] = [{"name": "x"}]
    ran.write_text(json.dumps(run))
    assert_one_line_error(runner.invoke(app, ["report", str(ran)]), "gradcheck/run@1", "'scans'")
