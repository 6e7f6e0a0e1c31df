"""Recipes: every error message (exact FILE:LINE and key), valid recipes, `gradcheck run`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from model_files import HEALTHY_FILE
from typer.testing import CliRunner

from gradcheck_cli.cli.app import app
from gradcheck_cli.cli.recipes import RecipeError, load_recipe
from gradcheck_cli.cli.settings import resolve
from gradcheck_cli.report.gate import matches
from gradcheck_cli.report.records import Finding, FindingKind, Severity

runner = CliRunner()


BROKEN_FILE = """
def build_model():
    raise RuntimeError("the weights server is down")
"""


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so that messages name 'recipe.yaml' and no pyproject.toml is found."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.py").write_text(textwrap.dedent(HEALTHY_FILE))
    return tmp_path


def _write(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


VALID_HEAD = """
version: 1
scans:
  - name: mlp
    target: model.py
"""

ERRORS = [
    ("unknown-key-suggestion", """
        version: 1
        scans:
          - name: a
            target: model.py
          - name: b
            target: model.py
            batchs: 2
        """, "recipe.yaml:7: key 'scans[1].batchs': unknown key 'batchs'; did you mean 'batches'?"),
    ("wrong-type", """
        version: 1
        defaults:
          batches: three
        scans: [{name: a, target: model.py}]
        """, "recipe.yaml:3: key 'defaults.batches': expected a positive integer, got 'three'"),
    ("bool-is-not-an-integer", """
        version: 1
        scans: [{name: a, target: model.py, batch_size: true}]
        """, "recipe.yaml:2: key 'scans[0].batch_size': expected a positive integer, got true"),
    ("bad-version", """
        version: 2
        scans: [{name: a, target: model.py}]
        """, "recipe.yaml:1: key 'version': unsupported recipe version 2; expected 1"),
    ("missing-version", """
        scans: [{name: a, target: model.py}]
        """, "recipe.yaml:1: missing key 'version'; add 'version: 1' at the top"),
    ("missing-target", """
        version: 1
        scans:
          - name: a
            batches: 2
        """, "recipe.yaml:3: key 'scans[0]': missing required key 'target' in this scan; "
             "add e.g. 'target: model.py (or builtin:NAME, pkg.module:attr)'"),
    ("missing-scans", """
        version: 1
        defaults: {batches: 1}
        """, "recipe.yaml:1: missing key 'scans'; list the scans to run, e.g. "
             "scans: [{name: mlp, target: model.py}]"),
    ("empty-scans", """
        version: 1
        scans: []
        """, "recipe.yaml:2: key 'scans': the list of scans is empty; add at least one, e.g. "
             "- {name: mlp, target: model.py}"),
    ("scans-not-a-list", """
        version: 1
        scans:
          name: a
          target: model.py
        """, "recipe.yaml:2: key 'scans': expected a list of scans, got a mapping"),
    ("bad-fail-on-kind", """
        version: 1
        defaults:
          fail_on: [exploding, explodng-through-time]
        scans: [{name: a, target: model.py}]
        """, "recipe.yaml:3: key 'defaults.fail_on': unknown finding kind or status "
             "'explodng-through-time'; did you mean 'exploding-through-time'?"),
    ("bad-threshold-name", """
        version: 1
        defaults:
          thresholds:
            vanish_relativ: 1.0e-4
        scans: [{name: a, target: model.py}]
        """, "recipe.yaml:4: key 'defaults.thresholds.vanish_relativ': unknown key 'vanish_relativ'; "
             "did you mean 'vanish_relative'?"),
    ("negative-threshold", """
        version: 1
        scans:
          - name: a
            target: model.py
            thresholds: {explode_relative: -70}
        """, "recipe.yaml:5: key 'scans[0].thresholds.explode_relative': expected a positive number, got -70"),
    ("bad-optimizer", """
        version: 1
        defaults:
          optimizer: {name: adamm, lr: 0.001}
        scans: [{name: a, target: model.py}]
        """, "recipe.yaml:3: key 'defaults.optimizer.name': expected one of sgd, adam, adamw, "
             "got 'adamm'; did you mean 'adam'?"),
    ("duplicate-names", """
        version: 1
        scans:
          - name: a
            target: model.py
          - name: a
            target: builtin:lstm
        """, "recipe.yaml:5: key 'scans[1].name': duplicate scan name 'a' (also scans[0]); "
             "give every scan its own name"),
    ("duplicate-key", """
        version: 1
        defaults:
          batches: 1
          batches: 2
        scans: [{name: a, target: model.py}]
        """, "recipe.yaml:4: duplicate key 'batches' (first on line 3); keep one"),
    ("yaml-syntax", """
        version: 1
        scans:
          - name: a
            target: [model.py
        """, "recipe.yaml:5: invalid YAML: expected ',' or ']', but got '<stream end>' "
             "(while parsing a flow sequence)"),
    ("non-mapping-top-level", """
        - name: a
        - name: b
        """, "recipe.yaml:1: expected a mapping at the top level (version, defaults, scans), got a list"),
    ("empty-file", "", "recipe.yaml:1: the recipe is empty; expected a mapping with 'version: 1' and 'scans:'"),
    ("unknown-top-level-key", """
        version: 1
        default: {batches: 1}
        scans: [{name: a, target: model.py}]
        """, "recipe.yaml:2: key 'default': unknown key 'default'; did you mean 'defaults'?"),
    ("per-scan-key-in-defaults", """
        version: 1
        defaults: {input_shape: [3, 32, 32]}
        scans: [{name: a, target: model.py}]
        """, "recipe.yaml:2: key 'defaults.input_shape': 'input_shape' describes one model: "
             "set it in a scan, not here"),
    ("target-file-missing", """
        version: 1
        scans:
          - name: a
            target: models/missing.py
        """, "recipe.yaml:4: key 'scans[0].target': no such file: models/missing.py "
             "(relative paths resolve against the recipe's folder .)"),
    ("python-tag-is-not-constructed", """
        version: 1
        scans: !!python/object/apply:os.system ["echo owned"]
        """, "recipe.yaml:2: invalid YAML: could not determine a constructor for the tag "
             "'tag:yaml.org,2002:python/object/apply:os.system'; a recipe holds plain values only "
             "(it is read with yaml.safe_load)"),
]


@pytest.mark.parametrize("text,message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_recipe_errors_name_file_line_and_key(in_tmp: Path, text: str, message: str) -> None:
    _write(in_tmp, text)
    with pytest.raises(RecipeError) as info:
        load_recipe("recipe.yaml")
    assert str(info.value) == message


def test_recipe_path_that_does_not_exist_or_is_a_directory(in_tmp: Path) -> None:
    with pytest.raises(RecipeError, match=r"^no such recipe file: nope\.yaml; check the path$"):
        load_recipe("nope.yaml")
    (in_tmp / "recipes").mkdir()
    with pytest.raises(RecipeError, match=r"^recipes is a directory, not a recipe; pass a YAML file"):
        load_recipe("recipes")


def test_valid_recipe_resolves_targets_against_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "audit"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "mlp.py").write_text(textwrap.dedent(HEALTHY_FILE))
    recipe = _write(folder, """
        version: 1
        defaults:
          batches: 2
          optimizer: {name: Adam, lr: 1e-3}     # YAML 1.1 reads 1e-3 as text: accepted
          thresholds: {min_stack: 6}
        scans:
          - name: file
            target: models/mlp.py:build_model
            input_shape: 3x8
            batches: 1
            checkpoint: weights/mlp.pt
          - name: builtin
            target: builtin:lstm
          - name: module
            target: mypkg.models:build
            optimizer: sgd
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scans = load_recipe(recipe).scans
    assert [s.name for s in scans] == ["file", "builtin", "module"]
    assert Path(scans[0].target.rpartition(":")[0]).resolve() == (folder / "models" / "mlp.py").resolve()
    assert scans[0].target.endswith(":build_model")
    assert [s.target for s in scans[1:]] == ["builtin:lstm", "mypkg.models:build"]

    first, third = resolve(scans[0].defaults, scans[0].overrides), resolve(scans[2].defaults, scans[2].overrides)
    config = first.scan_config()
    assert (config.batches, config.optimizer, config.lr, config.input_shape) == (1, "adam", 1e-3, (3, 8))
    assert first.thresholds().min_stack == 6
    assert Path(config.checkpoint or "").resolve() == (folder / "weights" / "mlp.pt").resolve()
    assert first.values["batches"].source == f"recipe {recipe}:10"
    assert first.values["optimizer.lr"].source == f"recipe {recipe}:4"
    assert first.values["seed"].source == "built-in default"
    assert (third.scan_config().optimizer, third.scan_config().lr) == ("sgd", 1e-3)


# ------------------------------------------------------------------------------ gradcheck run


def test_three_scans_give_one_report_with_the_worst_exit_code(in_tmp: Path) -> None:
    _write(in_tmp, """
        version: 1
        defaults: {batches: 1, batch_size: 4}
        scans:
          - name: file
            target: model.py
          - name: sigmoid-strict
            target: builtin:deep-sigmoid
            fail_on: [vanishing]
          - name: sigmoid-standard
            target: builtin:deep-sigmoid
        """)
    result = runner.invoke(app, ["run", "recipe.yaml", "--format", "json", "--quiet"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "gradcheck/run@1"
    scans = {s["name"]: s for s in doc["scans"]}
    assert list(scans) == ["file", "sigmoid-strict", "sigmoid-standard"]
    assert [scans[n]["exit_code"] for n in scans] == [0, 1, 0]
    assert scans["sigmoid-strict"]["report"]["config"]["fail_on"] == ["vanishing"]
    assert scans["sigmoid-standard"]["report"]["verdict"] == "vanishing"  # reported, not failing
    assert all(s["report"]["config"]["batches"] == 1 for s in doc["scans"])


THREE_SCANS = """
    version: 1
    defaults: {batches: 1, batch_size: 4}
    scans:
      - {name: file, target: model.py}
      - {name: sigmoid-strict, target: builtin:deep-sigmoid, fail_on: [vanishing]}
      - {name: sigmoid-standard, target: builtin:deep-sigmoid}
    """


@pytest.mark.parametrize("fmt", ["table", "markdown", "sarif", "junit", "github"])
def test_three_scans_give_one_report_in_every_format(in_tmp: Path, fmt: str) -> None:
    import xml.etree.ElementTree as ET

    _write(in_tmp, THREE_SCANS)
    result = runner.invoke(app, ["run", "recipe.yaml", "--format", fmt, "--quiet", "--no-color"])
    assert result.exit_code == 1, result.output
    if fmt == "sarif":
        [sarif_run] = json.loads(result.stdout)["runs"]  # one document for the three scans
        assert {r["ruleId"] for r in sarif_run["results"]} == {"vanishing"}
    elif fmt == "junit":
        suites = ET.fromstring(result.stdout).findall("testsuite")
        assert [s.get("name") for s in suites] == ["file", "sigmoid-strict", "sigmoid-standard"]
        assert [int(s.get("failures", "0")) > 0 for s in suites] == [False, True, False]
    elif fmt == "github":
        lines = result.stderr.splitlines()
        strict = [line for line in lines if "(scan sigmoid-strict)" in line]
        standard = [line for line in lines if "(scan sigmoid-standard)" in line]
        # the same findings: errors where they fail the scan's gate, warnings where they do not
        assert strict and all(line.startswith("::error ") for line in strict)
        assert len(standard) == len(strict) and all(line.startswith("::warning ") for line in standard)
    else:
        for name in ("file", "sigmoid-strict", "sigmoid-standard"):
            assert name in result.stdout, name


def test_a_scan_that_errors_does_not_stop_the_others(in_tmp: Path) -> None:
    (in_tmp / "broken.py").write_text(textwrap.dedent(BROKEN_FILE))
    _write(in_tmp, """
        version: 1
        defaults: {batches: 1, batch_size: 4}
        scans:
          - {name: before, target: model.py}
          - {name: broken, target: broken.py}
          - {name: after, target: builtin:relu-he}
        """)
    result = runner.invoke(app, ["run", "recipe.yaml", "--format", "json", "--quiet"])
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    by_name = {s["name"]: s for s in doc["scans"]}
    assert by_name["before"]["report"]["verdict"] == "healthy"
    assert by_name["after"]["report"]["verdict"] == "healthy"
    assert by_name["broken"]["report"] is None
    assert "the weights server is down" in by_name["broken"]["error"]
    assert "Traceback" not in result.stderr
    assert "scan 'broken'" in result.stderr


def test_command_line_overrides_every_scan_of_the_recipe(in_tmp: Path) -> None:
    _write(in_tmp, """
        version: 1
        defaults: {batches: 3, fail_on: [vanishing]}
        scans:
          - {name: a, target: builtin:deep-sigmoid, batches: 2}
          - {name: b, target: model.py}
        """)
    result = runner.invoke(app, ["run", "recipe.yaml", "--format", "json", "--quiet",
                                 "--batches", "1", "--fail-on", "none"])
    assert result.exit_code == 0, result.output
    configs = [s["report"]["config"] for s in json.loads(result.stdout)["scans"]]
    assert [c["batches"] for c in configs] == [1, 1]
    assert [c["fail_on"] for c in configs] == [["none"], ["none"]]


def test_broken_recipe_gives_one_line_and_exit_two(in_tmp: Path) -> None:
    _write(in_tmp, VALID_HEAD + "    batchs: 2\n")
    result = runner.invoke(app, ["run", "recipe.yaml"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "gradcheck: error: recipe.yaml:5: key 'scans[0].batchs': unknown key 'batchs'; did you mean 'batches'?"]


def test_bad_command_line_value_for_run_names_the_option(in_tmp: Path) -> None:
    _write(in_tmp, VALID_HEAD)
    result = runner.invoke(app, ["run", "recipe.yaml", "--fail-on", "explodin"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "gradcheck: error: --fail-on: unknown finding kind or status 'explodin'; did you mean 'exploding'?"]


# ------------------------------------------------------------------------------ shipped recipes

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"

# What each shipped recipe demonstrates, as its comments say: exit code, then per scan the
# verdict and the finding kinds that fail its gate.
SHIPPED: dict[str, tuple[int, dict[str, tuple[str, set[str]]]]] = {
    "quick.yaml": (0, {"mlp": ("healthy", set()), "transformer": ("healthy", set())}),
    "standard.yaml": (0, {"mlp": ("healthy", set()), "convnet": ("healthy", set()),
                          "deep-sigmoid": ("vanishing", set())}),
    "strict.yaml": (1, {"mlp": ("healthy", set()), "tanh-tiny-init": ("vanishing", {"vanishing"})}),
    "recurrent.yaml": (1, {"rnn-long": ("vanishing", {"vanishing-through-time"}), "lstm": ("healthy", set())}),
    # exit 1 from the unverified gate alone: no finding of deep-sigmoid is in its fail_on
    "verified.yaml": (1, {"mlp": ("healthy", set()), "deep-sigmoid": ("vanishing", set())}),
}


def test_every_shipped_recipe_is_tested() -> None:
    assert sorted(p.name for p in RECIPES_DIR.glob("*.yaml")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_recipe_runs_from_any_folder_with_its_documented_result(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative targets must resolve against the recipe's folder
    result = runner.invoke(app, ["run", str(RECIPES_DIR / name), "--format", "json", "--quiet"])
    expected_code, expected_scans = SHIPPED[name]
    assert result.exit_code == expected_code, result.output
    doc = json.loads(result.stdout)
    assert [s["name"] for s in doc["scans"]] == list(expected_scans)
    for scan in doc["scans"]:
        verdict, failing_kinds = expected_scans[scan["name"]]
        report = scan["report"]
        assert scan["error"] is None and report is not None, scan["error"]
        assert report["verdict"] == verdict, scan["name"]
        failing = {f["kind"] for f in report["findings"] if _fails_gate(f, report["config"]["fail_on"])}
        assert failing == failing_kinds, scan["name"]


def _fails_gate(finding: dict[str, Any], fail_on: list[str]) -> bool:
    """gate.matches on a finding of the JSON report."""
    return matches(Finding(FindingKind(finding["kind"]), finding["layer"], Severity(finding["severity"]),
                           finding["message"], {}), fail_on)
