"""CLI behaviour: exit codes, the stdout/stderr split, one-line errors, torch-free --help."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_errors import assert_one_line_error
from model_files import HEALTHY_FILE
from typer.testing import CliRunner

from gradcheck_cli import __version__
from gradcheck_cli.cli.app import app

runner = CliRunner()


def _write(tmp_path: Path, text: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"gradcheck {__version__}"


def test_healthy_file_exits_zero_with_a_table(tmp_path: Path) -> None:
    result = runner.invoke(app, ["scan", str(_write(tmp_path, HEALTHY_FILE)), "--no-color"])
    assert result.exit_code == 0, result.output
    assert "healthy" in result.stdout
    assert "\x1b[" not in result.stdout


def test_json_output_is_alone_on_stdout_and_follows_the_schema(tmp_path: Path) -> None:
    result = runner.invoke(app, ["scan", str(_write(tmp_path, HEALTHY_FILE)), "--format", "json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)  # stdout holds only the JSON document
    assert result.stderr == ""
    assert set(doc) == {"schema", "tool", "target", "config", "loss", "verdict", "layers",
                        "findings", "recommendations"}
    assert doc["schema"] == "gradcheck/report@1"
    assert doc["tool"] == {"name": "gradcheck", "version": __version__}
    assert doc["config"]["batches"] == 3 and doc["config"]["batch_size"] == 16
    assert doc["config"]["seed"] == 0 and doc["config"]["device"] == "cpu"
    assert doc["loss"]["kind"] == "cross_entropy" and len(doc["loss"]["values"]) == 3
    assert doc["verdict"] == "healthy"
    assert [layer["name"] for layer in doc["layers"]] == ["0", "2"]
    for layer in doc["layers"]:
        assert set(layer) == {"name", "type", "index", "params", "status", "grad_norm",
                              "weight_norm", "grad_to_weight", "nonfinite_grads", "activation",
                              "update_to_weight"}
        assert layer["update_to_weight"] is None  # no --steps
    assert doc["findings"] == [] and doc["recommendations"] == []


def test_exploding_builtin_exits_one_and_json_lists_findings() -> None:
    result = runner.invoke(app, ["scan", "builtin:relu-normal-init", "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "exploding"
    kinds = {f["kind"] for f in doc["findings"]}
    assert "exploding" in kinds
    for finding in doc["findings"]:
        assert set(finding) == {"kind", "layer", "severity", "message", "evidence"}
        assert finding["severity"] in {"error", "warning", "info"}
    ids = [r["id"] for r in doc["recommendations"]]
    assert "clip-gradients" in ids
    for rec in doc["recommendations"]:
        assert set(rec) == {"id", "title", "layers", "why", "code"} and rec["code"]


def test_fail_on_controls_the_exit_code() -> None:
    vanishing = ["scan", "builtin:deep-sigmoid", "--format", "json"]
    assert runner.invoke(app, vanishing).exit_code == 0  # default: exploding, nonfinite
    assert runner.invoke(app, [*vanishing, "--fail-on", "vanishing"]).exit_code == 1
    assert runner.invoke(app, [*vanishing, "--fail-on", "any"]).exit_code == 1
    assert runner.invoke(app, ["scan", "builtin:nan-log", "--fail-on", "none"]).exit_code == 0


def test_nan_in_the_batch_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    path = _write(tmp_path, HEALTHY_FILE.replace(
        "return torch.randn(batch_size, 8),",
        "x = torch.randn(batch_size, 8); x[0, 0] = float('nan'); return x,"))
    result = runner.invoke(app, ["scan", str(path), "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert "nonfinite-input" in {f["kind"] for f in doc["findings"]}
    assert "check-inputs" in [r["id"] for r in doc["recommendations"]]


@pytest.mark.parametrize("args,needles", [
    (["scan", "no_such_model.py"], ["no_such_model.py"]),
    (["scan", "builtin:deep-sigmod"], ["deep-sigmoid"]),
    (["scan", "builtin:relu-he", "--batches", "0"], ["--batches"]),
    (["scan", "builtin:relu-he", "--batch-size", "0"], ["--batch-size"]),
    (["scan", "builtin:relu-he", "--format", "xml"], ["--format", "xml"]),
    (["scan", "builtin:relu-he", "--fail-on", "explodin"], ["--fail-on", "explodin"]),
    (["scan", "builtin:relu-he", "--optimizer", "lion", "--steps", "1"], ["--optimizer"]),
    (["scan", "builtin:relu-he", "--device", "cuda:99"], ["cuda"]),
])
def test_usage_errors_exit_two_with_one_line(args: list[str], needles: list[str]) -> None:
    assert_one_line_error(runner.invoke(app, args), *needles)


def test_directory_is_a_user_error(tmp_path: Path) -> None:
    assert_one_line_error(runner.invoke(app, ["scan", str(tmp_path)]), tmp_path.name)


def test_import_error_shows_the_users_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "import torch\n\nx = undefined_name\n")
    assert_one_line_error(runner.invoke(app, ["scan", str(path)]), "model.py:3", "undefined_name")


def test_wrong_input_shape_names_the_module_and_shapes(tmp_path: Path) -> None:
    path = _write(tmp_path, HEALTHY_FILE.replace("torch.randn(batch_size, 8)", "torch.randn(batch_size, 5)"))
    assert_one_line_error(runner.invoke(app, ["scan", str(path)]), "(16, 5)")


def test_argmax_output_is_not_differentiable(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return self.fc(x).argmax(dim=1).float()
    """)
    result = runner.invoke(app, ["scan", str(path), "--input-shape", "4"])
    assert_one_line_error(result)


def test_no_trainable_parameters(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        from torch import nn

        def build_model():
            return nn.Linear(4, 2).requires_grad_(False)
    """)
    assert_one_line_error(runner.invoke(app, ["scan", str(path)]), "trainable")


def test_build_model_raising_shows_its_message(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        def build_model():
            raise ValueError("checkpoint path not configured")
    """)
    assert_one_line_error(runner.invoke(app, ["scan", str(path)]), "checkpoint path not configured")


def test_debug_shows_the_traceback() -> None:
    result = runner.invoke(app, ["scan", "builtin:nope", "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_list_builtins_names_every_builtin() -> None:
    from gradcheck_cli.target.zoo import BUILTINS

    result = runner.invoke(app, ["list", "builtins"])
    assert result.exit_code == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(BUILTINS) >= 8
    for line, builtin in zip(lines, BUILTINS):
        assert line.startswith(f"builtin:{builtin.name} ") and builtin.verdict in line


@pytest.mark.parametrize("argv", [["--help"], ["list", "builtins"], ["scan", "--help"]])
def test_help_and_list_do_not_import_torch(argv: list[str]) -> None:
    code = ("import sys; from gradcheck_cli.cli.app import app\n"
            f"try:\n    app({argv!r})\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "gradcheck_cli", "--version"], check=True,
                         capture_output=True, text=True)
    assert out.stdout.strip() == f"gradcheck {__version__}"
