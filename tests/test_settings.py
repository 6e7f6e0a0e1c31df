"""Configuration layers: command line > recipe > pyproject.toml [tool.gradcheck] > built-in
defaults, the discovery of pyproject.toml, its error messages, and --show-config."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.cli.app import app
from gradcheck_cli.cli.pyproject import find_pyproject, pyproject_layer
from gradcheck_cli.cli.settings import BUILTIN_SOURCE, SETTINGS, resolve
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError

runner = CliRunner()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _shown_config(stdout: str) -> dict[str, dict[str, tuple[str, str]]]:
    """--show-config output -> {title: {key: (value, source)}}."""
    blocks: dict[str, dict[str, tuple[str, str]]] = {}
    current: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        if not line.startswith("  "):
            current = blocks.setdefault(line, {})
            continue
        key, value, source = line.split(maxsplit=2)
        current[key] = (value, source)
    return blocks


def test_builtin_layer_is_exactly_the_scan_config_and_threshold_defaults() -> None:
    resolved = resolve()
    assert resolved.scan_config() == ScanConfig()
    assert resolved.thresholds() == Thresholds()
    assert {s.source for s in resolved.values.values()} == {BUILTIN_SOURCE}
    assert list(resolved.values) == list(SETTINGS)


def test_nearest_pyproject_with_a_gradcheck_table_is_used(tmp_path: Path) -> None:
    project = _write(tmp_path / "project" / "pyproject.toml", """
        [project]
        name = "demo"

        [tool.gradcheck]
        batches = 2
        """)
    _write(tmp_path / "project" / "sub" / "pyproject.toml", """
        [project]
        name = "sub-package-without-gradcheck-settings"
        """)
    deeper = tmp_path / "project" / "sub" / "deeper"
    deeper.mkdir()
    found = find_pyproject(deeper)
    assert found is not None and found[0] == project.resolve()
    assert found[1] == {"batches": 2}
    assert find_pyproject(tmp_path) is None


def test_precedence_command_line_over_recipe_over_pyproject_over_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "pyproject.toml", """
        [tool.gradcheck]
        batches = 2
        batch_size = 8
        seed = 5
        fail_on = ["vanishing"]

        [tool.gradcheck.thresholds]
        explode_relative = 50.0
        """)
    _write(tmp_path / "audit" / "recipe.yaml", """
        version: 1
        defaults:
          seed: 6
          batches: 4
        scans:
          - name: a
            target: builtin:relu-he
            batches: 3
            optimizer: {lr: 0.5}
        """)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "audit/recipe.yaml", "--show-config", "--batches", "1"])
    assert result.exit_code == 0, result.output
    [(title, shown)] = _shown_config(result.stdout).items()
    assert title == "scan a (builtin:relu-he)"
    assert shown["batches"] == ("1", "command line (--batches)")
    assert shown["seed"] == ("6", "recipe audit/recipe.yaml:3")
    assert shown["optimizer.lr"] == ("0.5", "recipe audit/recipe.yaml:9")
    assert shown["batch_size"] == ("8", "pyproject.toml [tool.gradcheck]")
    assert shown["fail_on"] == ("vanishing", "pyproject.toml [tool.gradcheck]")
    assert shown["thresholds.explode_relative"] == ("50.0", "pyproject.toml [tool.gradcheck]")
    assert shown["steps"] == ("0", BUILTIN_SOURCE)
    assert shown["optimizer.name"] == ("sgd", BUILTIN_SOURCE)
    assert set(shown) == set(SETTINGS)


def test_scan_show_config_prints_the_layers_and_does_not_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "pyproject.toml", """
        [tool.gradcheck]
        batches = 2
        optimizer = {name = "adam", lr = 0.001}
        """)
    monkeypatch.chdir(tmp_path)
    # the target does not exist: a scan would exit 2, --show-config only resolves the settings
    result = runner.invoke(app, ["scan", "missing.py", "--show-config", "--lr", "0.1"])
    assert result.exit_code == 0, result.output
    shown = _shown_config(result.stdout)["scan missing.py"]
    assert shown["batches"] == ("2", "pyproject.toml [tool.gradcheck]")
    assert shown["optimizer.name"] == ("adam", "pyproject.toml [tool.gradcheck]")
    assert shown["optimizer.lr"] == ("0.1", "command line (--lr)")
    assert shown["batch_size"] == ("16", BUILTIN_SOURCE)


def test_pyproject_settings_reach_the_scan_and_the_command_line_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "pyproject.toml", """
        [tool.gradcheck]
        batches = 1
        batch_size = 4
        fail_on = ["vanishing"]
        """)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["scan", "builtin:deep-sigmoid", "--format", "json", "--quiet"])
    assert result.exit_code == 1, result.output
    config = json.loads(result.stdout)["config"]
    assert (config["batches"], config["batch_size"], config["fail_on"]) == (1, 4, ["vanishing"])
    overridden = runner.invoke(app, ["scan", "builtin:deep-sigmoid", "--format", "json", "--quiet",
                                     "--fail-on", "exploding"])
    assert overridden.exit_code == 0, overridden.output
    assert json.loads(overridden.stdout)["config"]["fail_on"] == ["exploding"]


@pytest.mark.parametrize("text,message", [
    ("""
     [tool.gradcheck]
     batches = 2
     batchs = 3
     """, "pyproject.toml:3: [tool.gradcheck] key 'batchs': unknown key 'batchs'; did you mean 'batches'?"),
    ("""
     [tool.gradcheck]
     fail_on = ["exploding", "nonfinte"]
     """, "pyproject.toml:2: [tool.gradcheck] key 'fail_on': unknown finding kind or status 'nonfinte'; "
          "did you mean 'nonfinite'?"),
    ("""
     [tool.gradcheck]
     seed = 1

     [tool.gradcheck.thresholds]
     min_stack = 0
     """, "pyproject.toml:5: [tool.gradcheck] key 'thresholds.min_stack': expected a positive integer, got 0"),
    ("""
     [tool.gradcheck]
     input_shape = [3, 32, 32]
     """, "pyproject.toml:2: [tool.gradcheck] key 'input_shape': 'input_shape' describes one model: "
          "set it in a scan, not here"),
])
def test_pyproject_errors_name_file_line_and_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str) -> None:
    _write(tmp_path / "pyproject.toml", text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        pyproject_layer()
    assert str(info.value) == message
    result = runner.invoke(app, ["scan", "builtin:relu-he"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"gradcheck: error: {message}"]


def test_invalid_toml_is_one_line_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "pyproject.toml", "[tool.gradcheck]\nbatches = \n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["scan", "builtin:relu-he", "--show-config"])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("gradcheck: error: pyproject.toml:2: invalid TOML: Invalid value")


def test_help_shows_the_effective_builtin_defaults() -> None:
    result = runner.invoke(app, ["scan", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())  # help text is wrapped to the terminal
    assert "probe batches. [default: 3]" in text and "[default: exploding,nonfinite]" in text
