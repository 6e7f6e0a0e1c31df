"""The bad-input matrix of docs/bad-inputs.md: one test case per row, driven through the CLI.

Every row is a mistake a user can make; gradcheck must answer it with exit code 2 and exactly one
line on stderr, `gradcheck: error: ...`, naming what went wrong, where and how to fix it, with no
traceback unless `--debug` (and with `--debug`, the traceback). The row ids are the ids in the
first column of the docs table; `test_every_docs_row_has_a_test` keeps the two in step.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradcheck_cli.cli.app import app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
runner = CliRunner()

HEADER = "import torch\nfrom torch import nn\n"

MLP = HEADER + """
def build_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
"""

#: make_batch for MLP returning (inputs, integer class target)
CLASSES = "\ndef make_batch(batch_size):\n    return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))\n"


@dataclass(frozen=True)
class Row:
    """One row of the matrix: the files it needs, the arguments after `scan`, what the line says."""

    id: str
    args: tuple[str, ...]
    needles: tuple[str, ...]
    """Substrings the error line must hold: what went wrong, where, and how to fix it."""
    files: dict[str, str] = field(default_factory=dict)
    exit_code: int = 2
    command: str = "scan"
    make: Callable[[Path], None] | None = None
    """Writes what plain text cannot express (checkpoint files) into the row's folder."""
    other_scans_report: bool = False
    """A recipe row where the other scans still run: their report is on stdout."""
    lands: tuple[str, ...] = ()
    """Files the command must write into the row's folder (not an error: exit 0 rows)."""


def _model(body: str) -> dict[str, str]:
    return {"model.py": HEADER + textwrap.dedent(body)}


def _save_state_dict(name: str, model: str = "nn.Linear(3, 3)") -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        import torch
        from torch import nn

        torch.save(eval(model, {"nn": nn}).state_dict(), folder / name)
    return make


class _RunsCode:
    """Unpickling this would run a shell command; torch.load(weights_only=True) refuses it."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch pwned",))


def _save_code_pickle(folder: Path) -> None:
    import torch

    torch.save({"weight": _RunsCode()}, folder / "evil.pt")


def _save_with_namespace(folder: Path) -> None:
    """A training script's checkpoint that also pickles its argparse arguments (an object)."""
    import argparse

    import torch

    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, folder / "run.ckpt")


def _inflating(path: Path) -> None:
    from checkpoint_files import inflating_checkpoint

    inflating_checkpoint(path, 64 << 20)  # 64 MiB of zeros in a 64 KiB file


def _save_truncated(folder: Path) -> None:
    _save_state_dict("full.pt")(folder)
    (folder / "truncated.pt").write_bytes((folder / "full.pt").read_bytes()[:64])


RECIPE_SCANS = "version: 1\nscans:\n  - name: mlp\n    target: model.py\n"


ROWS: list[Row] = [
    # ------------------------------------------------------------------------------- targets
    Row("target-empty", ("",), ("no target given", "model.py", "builtin:NAME")),
    Row("target-syntax", ("my model",), ("cannot understand target 'my model'", "expected",
                                          "pkg.module:attr")),
    Row("target-missing-py", ("net",), ("did you mean net.py?",), {"net.py": MLP}),
    Row("target-no-such-file", ("missing.py",), ("no such file: missing.py", "check the path")),
    Row("target-directory", ("models",), ("models is a directory", "models/model.py"),
        {"models/model.py": MLP}),
    Row("target-not-python", ("model.txt",), ("model.txt is not a .py file", "model.py"),
        {"model.txt": MLP}),
    Row("target-missing-name", ("model.py:Nett",), ("model.py has no attribute 'Nett'",
                                                    "found: build_model", "model.py:NAME"),
        {"model.py": MLP}),
    Row("target-empty-name", ("model.py:",), ("names nothing after ':'", "model.py:NAME"),
        {"model.py": MLP}),
    Row("target-uninstalled-package", ("gc_not_installed_xyz.models:build",),
        ("cannot import module 'gc_not_installed_xyz.models'", "is it installed?")),
    Row("target-attr-not-a-model", ("os.path:sep",), ("os.path:sep is a str",
                                                      "expected a function returning an nn.Module")),
    Row("target-builtin-typo", ("builtin:deep-sigmod",), ("deep-sigmod", "deep-sigmoid")),
    Row("target-builtin-empty", ("builtin:",), ("needs a model name", "gradcheck list builtins")),
    # ---------------------------------------------------------------------------- model files
    Row("file-empty", ("model.py",), ("model.py is empty", "define build_model()"),
        {"model.py": "\n"}),
    Row("file-unreadable", ("model.py",), ("cannot read model.py", "ermission",
                                           "check its permissions"), {"model.py": MLP}),
    Row("file-syntax-error", ("model.py",), ("model.py:3", "SyntaxError", "fix model.py"),
        {"model.py": HEADER + "def build_model(:\n    pass\n"}),
    Row("file-import-error", ("model.py",), ("model.py:3", "No module named 'gc_missing_dep'",
                                             "install it"),
        {"model.py": HEADER + "import gc_missing_dep\n"}),
    Row("file-error-at-import", ("model.py",), ("model.py:4", "NameError", "undefined_name",
                                                "fix model.py"),
        {"model.py": HEADER + "\nWIDTH = undefined_name\n"}),
    Row("file-exits-at-import", ("model.py",), ("model.py:3", "SystemExit", "fix model.py"),
        {"model.py": HEADER + "raise SystemExit(3)\n"}),
    Row("model-not-found", ("model.py",), ("no model found", "looked for build_model()",
                                           "define build_model()"),
        {"model.py": HEADER + "def helper():\n    return 1\n"}),
    Row("model-ambiguous", ("model.py",), ("found 2 nn.Module classes (A, B)", "model.py:B"),
        _model("""
            class A(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(2, 2)
            class B(A):
                pass
        """)),
    Row("model-needs-arguments", ("model.py:Net",), ("model.py:Net() needs arguments (width)",
                                                     "define build_model()"),
        _model("""
            class Net(nn.Module):
                def __init__(self, width):
                    super().__init__()
                    self.fc = nn.Linear(width, 2)
        """)),
    Row("build-model-raises", ("model.py",), ("model.py:build_model() raised ValueError",
                                              "no checkpoint configured", "model.py:5", "fix it"),
        _model("""
            def build_model():
                raise ValueError("no checkpoint configured")
        """)),
    Row("build-model-not-module", ("model.py",), ("build_model() returned a dict, not an nn.Module",
                                                  "return Net()"),
        _model("""
            def build_model():
                return {"fc": nn.Linear(2, 2)}
        """)),
    Row("model-only-buffers", ("model.py", "--input-shape", "4"), ("Scale has no parameters",
                                                                   "only buffers (factor)", "trainable weights"),
        _model("""
            class Scale(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.register_buffer("factor", torch.ones(4))
                def forward(self, x):
                    return x * self.factor
            def build_model():
                return Scale()
        """)),
    Row("model-frozen", ("model.py",), ("model.py: Linear has no trainable parameters", "requires_grad=False",
                                        "requires_grad_(True)"),
        _model("""
            def build_model():
                return nn.Linear(4, 2).requires_grad_(False)
        """)),
    Row("model-meta-device", ("model.py",), ("meta device", "to_empty", "--checkpoint"),
        _model("""
            def build_model():
                with torch.device("meta"):
                    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        """)),
    Row("model-torchscript", ("model.py",), ("TorchScript", "scan the eager"),
        _model("""
            def build_model():
                return torch.jit.script(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)))
        """)),
    Row("forward-raises", ("model.py",), ("in module 'body.1' (Block)", "KeyError", "model.py:11",
                                          "fix the forward at model.py:11"),
        _model("""
            class Block(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(8, 8)
                def forward(self, x):
                    cache = {}
                    y = self.fc(x)
                    return y + cache["previous"]
            class Outer(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Sequential(nn.Linear(8, 8), Block())
                def forward(self, x):
                    return self.body(x)
            def build_model():
                return Outer()
        """)),
    Row("forward-returns-none", ("model.py",), ("returned None", "no tensor", "return a tensor"),
        _model("""
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(8, 2)
                def forward(self, x):
                    self.fc(x)
        """)),
    Row("output-integer", ("model.py",), ("integer tensor", "argmax", "return the logits"),
        _model("""
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(8, 3)
                def forward(self, x):
                    return self.fc(x).argmax(dim=1)
        """)),
    Row("model-hard-coded-cuda", ("model.py",), ("in module '(root)' (Net)", "CUDA", "device"),
        _model("""
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(8, 2)
                def forward(self, x):
                    return self.fc(x) + torch.zeros(2, device="cuda")
        """)),
    Row("forward-exits", ("model.py",), ("model.py:10: forward() raised SystemExit: 0",
                                         "during the forward pass of batch 1/3", "remove the sys.exit()"),
        _model("""
            import sys
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(8, 2)
                def forward(self, x):
                    sys.exit(0)
        """)),
    Row("build-model-exits", ("model.py",), ("model.py:build_model() raised SystemExit",
                                             "(at model.py:6)", "remove the sys.exit()"),
        _model("""
            import sys
            def build_model():
                sys.exit()
        """)),
    Row("base-exception", ("model.py",), ("model.py:11: forward() raised StopTraining: early stop",
                                          "derive StopTraining from Exception"),
        _model("""
            class StopTraining(BaseException):
                pass
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(8, 2)
                def forward(self, x):
                    raise StopTraining("early stop")
        """)),
    # Not errors: a report on stdout, the exit code of the findings (test_row_that_is_no_error).
    Row("model-prints", ("model.py",), ("noise at import", "n_params 18", "noise in forward"), exit_code=0,
        files=_model("""
            import sys
            print("noise at import")
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(8, 2)
                    print("n_params", sum(p.numel() for p in self.parameters()))
                def forward(self, x):
                    sys.stdout.write("noise in forward\\n")
                    return self.fc(x)
        """)),
    Row("model-breakpoint", ("model.py",), ("gradcheck: warning: skipped breakpoint() at model.py:9",
                                            "PYTHONBREAKPOINT=pdb.set_trace"), exit_code=0,
        files=_model("""
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc = nn.Linear(8, 2)
                def forward(self, x):
                    breakpoint()
                    return self.fc(x)
        """)),
    Row("import-disables-grad", ("model.py",), (), exit_code=0,
        files={"model.py": MLP.replace(HEADER, HEADER + "torch.set_grad_enabled(False)\n")}),
    Row("import-sets-dtype", ("model.py",), (), exit_code=0,
        files={"model.py": MLP.replace(HEADER, HEADER + "torch.set_default_dtype(torch.float64)\n")}),
    Row("import-changes-cwd", ("model.py", "--write-baseline", "baseline.txt"),
        ("wrote the baseline to baseline.txt",), exit_code=0, lands=("baseline.txt",),
        files={"model.py": MLP.replace(HEADER, HEADER + "import os\nos.makedirs('data')\nos.chdir('data')\n")}),
    # --------------------------------------------------------------------------------- batches
    Row("input-shape-missing", ("model.py",), ("cannot infer the input shape", "Conv2d",
                                               "--input-shape 3x32x32", "make_batch"),
        _model("""
            def build_model():
                return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
        """)),
    Row("input-shape-syntax", ("model.py", "--input-shape", "3 by 32"),
        ("invalid --input-shape '3 by 32'", "3x32x32"), {"model.py": MLP}),
    Row("input-shape-wrong", ("model.py", "--input-shape", "5"),
        ("in module '0' (Linear)", "(16, 5)", "--input-shape"), {"model.py": MLP}),
    Row("batch-none", ("model.py",), ("make_batch returned None", "return", "(inputs, target)"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n    torch.randn(batch_size, 8)\n"}),
    Row("batch-string", ("model.py",), ("make_batch returned a str", "expected inputs"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n    return 'a cat sat'\n"}),
    Row("batch-list-of-strings", ("model.py",), ("make_batch returned a list of 3 items",
                                                 "expected inputs"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n    return ['a', 'cat', 'sat']\n"}),
    Row("batch-raises", ("model.py",), ("model.py:make_batch(16) raised FileNotFoundError",
                                        "model.py:9", "fix make_batch"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n    open('data/train.bin')\n"}),
    Row("batch-wrong-dtype", ("model.py",), ("in module '0' (Linear)", "float64", "dtype",
                                             "make_batch"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n"
                           "    return torch.randn(batch_size, 8, dtype=torch.float64)\n"}),
    Row("batch-integer-inputs", ("model.py",), ("in module '0' (Linear)", "int64", "make_batch"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n"
                           "    return torch.randint(0, 5, (batch_size, 8))\n"}),
    Row("batch-meta-device", ("model.py",), ("the batch", "meta", "make_batch"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n"
                           "    return torch.empty(batch_size, 8, device='meta')\n"}),
    # ---------------------------------------------------------------------------------- losses
    Row("loss-nan", ("model.py",), (), exit_code=1, files={"model.py": MLP + CLASSES + textwrap.dedent("""
        def loss_fn(output, target):
            return (output - output.detach().max() - 1).log().mean()
    """)}),
    Row("loss-not-scalar", ("model.py",), ("loss_fn returned a tensor of shape (16,)", "return a scalar",
                                           ".mean()"),
        {"model.py": MLP + CLASSES + "\ndef loss_fn(output, target):\n"
                                     "    return nn.functional.cross_entropy(output, target, reduction='none')\n"}),
    Row("loss-not-tensor", ("model.py",), ("loss_fn returned a float", "scalar tensor"),
        {"model.py": MLP + CLASSES + "\ndef loss_fn(output, target):\n    return 0.5\n"}),
    Row("loss-exits", ("model.py",), ("model.py:14: loss_fn() raised SystemExit: the loss is broken",
                                      "remove the sys.exit()"),
        {"model.py": MLP + CLASSES + "\nimport sys\n\ndef loss_fn(output, target):\n"
                                     "    sys.exit('the loss is broken')\n"}),
    Row("loss-raises-on-nan", ("model.py",), (), exit_code=1, files={"model.py": MLP + CLASSES + textwrap.dedent("""
        def loss_fn(output, target):  # log of negative outputs, then BCE refuses the NaN
            probs = torch.sigmoid(output.log())
            return nn.functional.binary_cross_entropy(probs, nn.functional.one_hot(target, 4).float())
    """)}),
    Row("loss-raises", ("model.py",), ("loss_fn raised RuntimeError", "model.py:12",
                                       "fix loss_fn(output, target)"),
        {"model.py": MLP + CLASSES + "\ndef loss_fn(output, target):\n"
                                     "    return (output - target).pow(2).mean()\n"}),
    Row("target-wrong-shape-mse", ("model.py",), ("float target of shape (16, 3)", "(16, 4)",
                                                  "for MSE", "loss_fn(output, target)"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n"
                           "    return torch.randn(batch_size, 8), torch.randn(batch_size, 3)\n"}),
    Row("target-wrong-shape-ce", ("model.py",), ("integer target of shape (16, 2)", "(16, 4)",
                                                 "cross-entropy", "fix make_batch"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n    return torch.randn(batch_size, 8), "
                           "torch.randint(0, 4, (batch_size, 2))\n"}),
    Row("target-class-out-of-range", ("model.py",), ("holds class 9", "4 classes (0..3)"),
        {"model.py": MLP + "\ndef make_batch(batch_size):\n    return torch.randn(batch_size, 8), "
                           "torch.full((batch_size,), 9)\n"}),
    # --------------------------------------------------------------------------------- options
    # Option values are checked before anything runs; the line names the option, the value given
    # and what is expected.
    Row("option-batches", ("builtin:relu-he", "--batches", "0"), ("--batches", "got 0", "expected")),
    Row("option-batch-size", ("builtin:relu-he", "--batch-size", "-4"), ("--batch-size", "got -4", "expected")),
    Row("option-steps", ("builtin:relu-he", "--steps", "-1"), ("--steps", "got -1", "expected")),
    Row("option-optimizer", ("builtin:relu-he", "--steps", "1", "--optimizer", "lion"),
        ("--optimizer", "lion", "sgd, adam, adamw")),
    Row("option-lr", ("builtin:relu-he", "--lr", "-0.1"), ("--lr", "-0.1", "positive")),
    Row("option-adam-sparse-grads", ("model.py", "--steps", "1", "--optimizer", "adam"),
        ("--optimizer adam", "sparse gradients", "--optimizer sgd", "SparseAdam"),
        _model("""
            def build_model():
                torch.manual_seed(0)
                return nn.Sequential(nn.EmbeddingBag(50, 8, sparse=True), nn.Linear(8, 2))

            def make_batch(batch_size):
                return torch.randint(0, 50, (batch_size, 5)), torch.randint(0, 2, (batch_size,))
            """)),
    Row("option-steps-unbuilt-lazy", ("model.py", "--steps", "1"),
        ("module 'aux' (LazyLinear)", "never called by the forward", "--steps", "without --steps"),
        _model("""
            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.body = nn.Linear(5, 3)
                    self.aux = nn.LazyLinear(2)  # an auxiliary head the forward never calls

                def forward(self, x):
                    return self.body(x)

            def build_model():
                torch.manual_seed(0)
                return Net()

            def make_batch(batch_size):
                return torch.randn(batch_size, 5), torch.randint(0, 3, (batch_size,))
            """)),
    Row("option-device-cuda", ("builtin:relu-he", "--device", "cuda"), ("no CUDA device", "--device cpu")),
    Row("option-device-bogus", ("builtin:relu-he", "--device", "gpu0"), ("--device", "gpu0", "cuda:")),
    Row("option-format", ("builtin:relu-he", "--format", "xml"), ("--format", "xml", "table, json")),
    Row("option-fail-on", ("builtin:relu-he", "--fail-on", "explodin"), ("--fail-on", "explodin", "exploding")),
    # --------------------------------------------------------------------------------- recipes
    Row("recipe-missing", ("nope.yaml",), ("no such recipe file: nope.yaml", "check the path"), command="run"),
    Row("recipe-empty", ("audit.yaml",), ("audit.yaml:1: the recipe is empty", "version: 1"),
        {"audit.yaml": ""}, command="run"),
    Row("recipe-invalid-yaml", ("audit.yaml",), ("audit.yaml:3: invalid YAML",),
        {"audit.yaml": "version: 1\nscans: [\n"}, command="run"),
    Row("recipe-unknown-key", ("audit.yaml",), ("audit.yaml:5", "unknown key 'batchs'",
                                                "did you mean 'batches'?"),
        {"audit.yaml": RECIPE_SCANS + "    batchs: 2\n", "model.py": MLP}, command="run"),
    Row("recipe-missing-target", ("audit.yaml",), ("audit.yaml:4", "no such file: missing.py",
                                                   "recipe's folder"),
        {"audit.yaml": RECIPE_SCANS.replace("model.py", "missing.py")}, command="run"),
    Row("recipe-scan-fails", ("audit.yaml", "--no-color"), ("scan 'broken'", "broken.py:build_model() raised",
                                                            "broken.py:5"),
        {"audit.yaml": RECIPE_SCANS + "  - name: broken\n    target: broken.py\n", "model.py": MLP,
         "broken.py": HEADER + "\ndef build_model():\n    raise ValueError('no weights')\n"},
        command="run", other_scans_report=True),
    Row("pyproject-unknown-key", ("model.py",), ("pyproject.toml:2", "[tool.gradcheck]", "unknown key 'batchs'",
                                                 "did you mean 'batches'?"),
        {"pyproject.toml": "[tool.gradcheck]\nbatchs = 2\n", "model.py": MLP}),
    # ----------------------------------------------------------------------------- checkpoints
    Row("checkpoint-missing", ("model.py", "--checkpoint", "nope.pt"), ("--checkpoint nope.pt: no such file",
                                                                         ".safetensors"), {"model.py": MLP}),
    Row("checkpoint-format", ("model.py", "--checkpoint", "weights.onnx"), ("unknown checkpoint format '.onnx'",
                                                                             "a torch.save file (.pt, .pth, .ckpt"),
        {"model.py": MLP, "weights.onnx": "x"}),
    Row("checkpoint-global", ("model.py", "--checkpoint", "run.ckpt"), (
        "refusing to load run.ckpt", "it needs the global argparse.Namespace", "torch.save(model.state_dict()"),
        {"model.py": MLP}, make=_save_with_namespace),
    Row("checkpoint-inflating", ("model.py", "--checkpoint", "bomb.pt"), (
        "refusing to load --checkpoint bomb.pt", "would inflate to 64.0 MiB", "torch.save never compresses"),
        {"model.py": MLP}, make=lambda folder: _inflating(folder / "bomb.pt")),
    Row("checkpoint-runs-code", ("model.py", "--checkpoint", "evil.pt"), ("refusing to load evil.pt",
                                                                          "could run code", "posix.system",
                                                                          "torch.save(model.state_dict()"),
        {"model.py": MLP}, make=_save_code_pickle),
    Row("checkpoint-mismatch", ("model.py", "--checkpoint", "other.pt"), (
        "checkpoint other.pt does not match the model Sequential", "missing keys: 0.weight",
        "unexpected keys: weight, bias", "same model definition"), {"model.py": MLP},
        make=_save_state_dict("other.pt")),
    Row("checkpoint-shapes", ("model.py", "--checkpoint", "wide.pt"), (
        "shape mismatches: 0.weight (checkpoint (32, 8), model (16, 8))",), {"model.py": MLP},
        make=_save_state_dict("wide.pt", "nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))")),
    Row("checkpoint-truncated", ("model.py", "--checkpoint", "truncated.pt"), (
        "cannot read --checkpoint truncated.pt", "truncated or corrupted", "save it again"),
        {"model.py": MLP}, make=_save_truncated),
    # ------------------------------------------------------------------------- resource guards
    Row("option-timeout", ("builtin:relu-he", "--timeout", "-1"), ("--timeout", "got -1", "positive")),
    Row("option-timeout-huge", ("builtin:relu-he", "--timeout", "1e10"), (
        "--timeout", "expected at most 1e+09 seconds", "got 10000000000.0")),
    Row("option-seed-huge", ("builtin:relu-he", "--seed", "18446744073709551615"), (
        "--seed", "expected an integer from 0 to 9223372036854775807", "got 18446744073709551615")),
    Row("baseline-nested", ("builtin:relu-he", "--baseline", "baseline.json"), (
        "baseline baseline.json: nested too deeply to read", "--write-baseline"),
        {"baseline.json": '{"schema": "gradcheck/baseline@1", "findings": ' + "[" * 100_000 + "]" * 100_000 + "}"}),
    Row("pyproject-nested", ("model.py",), ("pyproject.toml: nested too deeply to read", "[tool.gradcheck]"),
        {"pyproject.toml": "[tool.gradcheck]\nfail_on = " + "[" * 100_000 + "]" * 100_000 + "\n", "model.py": MLP}),
    Row("output-folder-missing", ("builtin:relu-he", "--output", "reports/report.json"), (
        "cannot write reports/report.json: No such file or directory", "check that the folder exists")),
    Row("scan-timeout", ("builtin:relu-he", "--timeout", "0.000001"), ("timed out after", "raise --timeout")),
]

BY_ID = {row.id: row for row in ROWS}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in tmp_path, so that targets and messages read as a user would type them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _setup(row: Row, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in row.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if row.make is not None:
        row.make(folder)
    if row.id == "file-unreadable":
        _make_unreadable(folder / "model.py", monkeypatch)
    if row.id in ("option-device-cuda", "model-hard-coded-cuda"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this row needs a machine without CUDA")


def _make_unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000; root reads any file anyway, so there the read itself is made to fail as it
    would for another user (the message path is the same: open() raising PermissionError)."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    import gradcheck_cli.target.resolve as targets

    real_open = open

    def open_as_other_user(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.path.realpath(file) == os.path.realpath(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(targets, "open", open_as_other_user, raising=False)


def _error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("gradcheck: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("row", [r for r in ROWS if r.exit_code == 2], ids=lambda r: r.id)
def test_row_exits_two_with_one_clear_line(row: Row, in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _setup(row, in_tmp, monkeypatch)
    result = runner.invoke(app, [row.command, *row.args])
    assert result.exit_code == 2, result.output
    line = _error_line(result)
    assert "Traceback" not in result.stderr
    if row.other_scans_report:  # the failing scan did not stop the others
        assert "model.py" in result.stdout and "verdict" in result.stdout
    else:
        assert result.stdout == ""
    assert not (in_tmp / "pwned").exists()  # nothing in a refused checkpoint ran
    for needle in row.needles:
        assert needle in line, f"{needle!r} not in: {line}"
    # gradcheck's own files are never blamed for the user's mistake
    assert "gradcheck_cli" not in line

    debug = runner.invoke(app, [row.command, *row.args, "--debug"])
    assert debug.exit_code == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1] == line


@pytest.mark.parametrize("row", [r for r in ROWS if r.exit_code == 0], ids=lambda r: r.id)
def test_row_that_is_no_error(row: Row, in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a model file does to stdout or the process is no error: stdout holds the JSON report
    alone, the row's text is on stderr, and files land in the folder gradcheck started in."""
    import json

    monkeypatch.delenv("PYTHONBREAKPOINT", raising=False)
    _setup(row, in_tmp, monkeypatch)
    result = runner.invoke(app, [row.command, *row.args, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verdict"] == "healthy"
    for needle in row.needles:
        assert needle in result.stderr, f"{needle!r} not in: {result.stderr}"
    for name in row.lands:
        assert (in_tmp / name).is_file(), name
    import torch

    # the process is given back as it was: working directory, default dtype, grad mode
    assert Path.cwd() == in_tmp
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()


@pytest.mark.parametrize("row_id", ["loss-nan", "loss-raises-on-nan"])
def test_nan_loss_on_the_first_batch_is_a_finding(row_id: str, in_tmp: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows loss-nan and loss-raises-on-nan: not a crash but a `nonfinite` finding, exit 1 under
    the default --fail-on (a loss_fn that raises on a NaN born before it is no user error)."""
    import json

    _setup(BY_ID[row_id], in_tmp, monkeypatch)
    result = runner.invoke(app, ["scan", "model.py", "--format", "json"])
    assert result.exit_code == 1, result.output
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "nonfinite"
    assert doc["loss"]["values"][0] == "NaN"
    assert "nonfinite" in {f["kind"] for f in doc["findings"]}


@pytest.mark.parametrize("row_id", ["forward-raises"])  # one: each costs a fresh torch import
def test_a_real_process_prints_one_line_and_no_traceback(row_id: str, in_tmp: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """As a console script: nothing else reaches stderr (warnings, torch's own messages)."""
    row = BY_ID[row_id]
    _setup(row, in_tmp, monkeypatch)
    done = subprocess.run([sys.executable, "-m", "gradcheck_cli", "scan", *row.args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradcheck: error: "), done.stderr
    for needle in row.needles:
        assert needle in lines[0]


def test_every_docs_row_has_a_test() -> None:
    """The ids in the first column of the docs table are exactly the ids of ROWS."""
    ids = re.findall(r"^\| `([a-z0-9-]+)` \|", DOCS.read_text(encoding="utf-8"), flags=re.M)
    assert len(ids) == len(set(ids)), "duplicate row ids in docs/bad-inputs.md"
    assert set(ids) == set(BY_ID), (set(ids) ^ set(BY_ID))
    assert len(ROWS) >= 25
