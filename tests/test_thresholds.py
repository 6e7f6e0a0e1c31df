"""The thresholds registry (analyse/thresholds.py): one entry per Thresholds field with its source,
`gradcheck list thresholds` without torch, and settings that really change the analysis: a value
set as `thresholds.NAME` in pyproject.toml or a recipe moves the verdict or the finding the way the
mechanism predicts; a value outside its domain exits 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gradcheck_cli.analyse.thresholds import REGISTRY, Thresholds, entries_for, entry, quote
from gradcheck_cli.cli.app import app
from gradcheck_cli.cli.settings import SETTINGS
from gradcheck_cli.report.records import FindingKind

runner = CliRunner()


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _scan_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builtin: str,
               settings: str = "") -> tuple[int, dict[str, Any]]:
    """Scan `builtin` with `settings` as [tool.gradcheck.thresholds] of a pyproject.toml in cwd."""
    if settings:
        _write(tmp_path / "pyproject.toml", "[tool.gradcheck.thresholds]\n" + textwrap.dedent(settings))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["scan", f"builtin:{builtin}", "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


# --- the registry -------------------------------------------------------------------------------


def test_every_field_is_in_the_registry_with_its_source_and_vice_versa() -> None:
    assert [e.name for e in REGISTRY] == [f.name for f in fields(Thresholds)]
    kinds = {k.value for k in FindingKind}
    for item in REGISTRY:
        assert item.default == getattr(Thresholds(), item.name), item.name
        assert type(item.default) is type(getattr(Thresholds(), item.name)), item.name
        assert item.source.strip() and item.meaning.strip() and item.unit.strip(), item.name
        assert item.kinds and set(item.kinds) <= kinds, item.name
        assert f"thresholds.{item.name}" in SETTINGS


def test_entries_for_a_kind_are_the_thresholds_that_decide_it() -> None:
    assert [e.name for e in entries_for("dead-relu")] == ["dead_majority", "dead_significance", "dead_bias_share"]
    assert "explode_grad_to_weight" in [e.name for e in entries_for("exploding")]
    assert "explode_grad_to_weight" not in [e.name for e in entries_for("vanishing")]
    for kind in ("vanishing", "exploding", "vanishing-through-time", "exploding-through-time", "init-scale",
                 "saturated-activation", "dead-relu", "divergence"):
        assert entries_for(kind), kind
    assert entry("collapse").default == 1e-3
    with pytest.raises(KeyError):
        entry("no_such_threshold")


def test_quote_writes_values_as_the_docs_do() -> None:
    assert [quote(v) for v in (1e-3, 1e-12, 0.5, 70.0, 1e3, 1.2)] == ["1e-3", "1e-12", "0.5", "70", "1e3", "1.2"]


def test_list_thresholds_prints_every_entry_without_importing_torch() -> None:
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom gradcheck_cli.cli.app import app\n"
            "result = CliRunner().invoke(app, ['list', 'thresholds'])\n"
            "assert result.exit_code == 0, result.output\n"
            "assert 'torch' not in sys.modules, 'list thresholds imported torch'\n"
            "sys.stdout.write(result.stdout)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for item in REGISTRY:
        value = str(item.default) if isinstance(item.default, int) else quote(item.default)
        assert any(line.split()[:3] == [item.name, "=", value] for line in done.stdout.splitlines()), item.name
        assert f"source: {item.source}" in done.stdout
        assert item.meaning in done.stdout


# --- settings change the decision ---------------------------------------------------------------


def test_a_lower_explode_threshold_makes_a_healthy_model_exploding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """classify: relu-he's layers learn at grad/weight 0.4..1.3, healthy under the default 1e3;
    above a ceiling of 0.1 every one of them explodes."""
    code, report = _scan_json(tmp_path, monkeypatch, "relu-he")
    assert (code, report["verdict"]) == (0, "healthy")
    code, report = _scan_json(tmp_path, monkeypatch, "relu-he", "explode_grad_to_weight = 0.1\n")
    assert (code, report["verdict"]) == (1, "exploding")
    assert {f["kind"] for f in report["findings"]} == {"exploding"}
    assert len(report["findings"]) == len(report["layers"])


def test_a_wider_borderline_factor_marks_clear_calls_borderline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """checks: relu-normal-init's layers explode at grad/weight 3e4..1.1e5, 30-110x past the 1e3
    ceiling: clear calls under the default factor 2, borderline ones (with `margin`) within 1000x."""
    recipe = _write(tmp_path / "recipe.yaml", """
        version: 1
        scans:
          - name: wide
            target: builtin:relu-normal-init
            thresholds: {borderline: 1000}
          - name: default
            target: builtin:relu-normal-init
        """)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(recipe), "--format", "json"])
    assert result.exit_code == 1, result.output
    wide, default = (scan["report"]["findings"] for scan in json.loads(result.stdout)["scans"])
    exploding = [f for f in default if f["kind"] == "exploding"]
    assert exploding and not any("margin" in f["evidence"] for f in exploding)
    marked = [f for f in wide if f["kind"] == "exploding"]
    assert len(marked) == len(exploding)
    for finding in marked:
        assert 1 < finding["evidence"]["margin"] < 1000
        assert finding["evidence"]["margin"] == pytest.approx(finding["evidence"]["grad_to_weight"] / 1e3)


def test_a_stricter_collapse_threshold_finds_no_collapse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """depth: tanh-tiny-init's activations and output gradients both decay through its 8 plain
    layers, far below the default 1e-3 (a collapse, collapse_* evidence); a threshold of 1e-30
    lies below that decay, so the segment no longer counts as collapsed."""
    _, report = _scan_json(tmp_path, monkeypatch, "tanh-tiny-init")
    collapsed = [f for f in report["findings"] if "collapse_layers" in f["evidence"]]
    assert collapsed and all(f["evidence"]["collapse_layers"] == 8 for f in collapsed)
    worst = max(max(f["evidence"]["collapse_activation_total"], f["evidence"]["collapse_gradient_total"])
                for f in collapsed)
    assert worst > 1e-30
    _, report = _scan_json(tmp_path, monkeypatch, "tanh-tiny-init", "collapse = 1e-30\n")
    assert report["findings"] and not any("collapse_layers" in f["evidence"] for f in report["findings"])


def test_a_stricter_geometric_run_drops_the_structure_evidence_and_its_fixes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """depth: relu-normal-init's gradient grows ~4x per layer (a geometric run: stack_* evidence,
    add-normalization); a run that must grow 100x per layer is not found."""
    _, report = _scan_json(tmp_path, monkeypatch, "relu-normal-init")
    assert any("stack_total" in f["evidence"] for f in report["findings"])
    assert "add-normalization" in [r["id"] for r in report["recommendations"]]
    _, report = _scan_json(tmp_path, monkeypatch, "relu-normal-init", "run_min_gain = 100.0\n")
    assert report["verdict"] == "exploding"
    assert not any("stack_total" in f["evidence"] for f in report["findings"])
    assert "add-normalization" not in [r["id"] for r in report["recommendations"]]


# --- bad values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "message"), [
    ("borderline = 0.5", "key 'thresholds.borderline': expected a number >= 1, got 0.5"),
    ("dead_majority = 2", "key 'thresholds.dead_majority': expected a number above 0 and at most 1, got 2"),
    ("run_min_layers = 2.5", "key 'thresholds.run_min_layers': expected a positive integer, got 2.5"),
    ("gate_rms = -1.0", "key 'thresholds.gate_rms': expected a positive number, got -1.0"),
])
def test_a_bad_value_in_pyproject_exits_2_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, message: str) -> None:
    _write(tmp_path / "pyproject.toml", f"[tool.gradcheck.thresholds]\n{setting}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["scan", "builtin:relu-he"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"gradcheck: error: pyproject.toml:2: [tool.gradcheck] {message}"]


def test_a_bad_value_in_a_recipe_exits_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "recipe.yaml", """
        version: 1
        scans:
          - name: a
            target: builtin:relu-he
            thresholds: {lr_cut: 10}
        """)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "recipe.yaml"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["gradcheck: error: recipe.yaml:5: key 'scans[0].thresholds.lr_cut': "
                     "expected a number above 0 and at most 1, got 10"]


def test_show_config_lists_every_threshold_and_where_it_was_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "pyproject.toml", "[tool.gradcheck.thresholds]\ndead_significance = 0.05\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["scan", "builtin:relu-he", "--show-config"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split(maxsplit=2)[1:] for line in result.stdout.splitlines()
            if line.startswith("  thresholds.")}
    assert set(rows) == {f"thresholds.{item.name}" for item in REGISTRY}
    assert rows["thresholds.dead_significance"] == ["0.05", "pyproject.toml [tool.gradcheck]"]
    assert rows["thresholds.borderline"] == ["2.0", "built-in default"]
