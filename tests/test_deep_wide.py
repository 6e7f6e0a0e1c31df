"""Very deep (flat and nested) and very wide models scan without RecursionError; the model and the
recursion limit come back as they were. Smaller than bench/deep_wide.py's models, same structure."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gradcheck_cli import scan
from gradcheck_cli.cli.app import app
from gradcheck_cli.report.records import ScanResult
from gradcheck_cli.report.render import OutputFormat, render
from gradcheck_cli.target.guards import nesting_depth
from gradcheck_cli.target.resolve import Target

runner = CliRunner()

NESTED_LEVELS = 400
"""Deep enough that the forward alone (about 4 frames per level) passes Python's default limit."""


class Nest(nn.Module):
    def __init__(self, inner: nn.Module | None) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.fc(x))
        return self.inner(x) if self.inner is not None else x


def _nested(levels: int) -> nn.Module:
    node: nn.Module | None = None
    for _ in range(levels):
        node = Nest(node)
    assert node is not None
    return node


class Wide(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Linear(4, 4) for _ in range(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def _target(model: nn.Module) -> Target:
    return Target("big", lambda: model, lambda n: torch.randn(n, 4), lambda out, _: out.pow(2).mean())


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_nested_model_beyond_the_default_recursion_limit() -> None:
    torch.manual_seed(0)
    model = _nested(NESTED_LEVELS)
    assert nesting_depth(model) == NESTED_LEVELS + 1  # the Linear leaves are one level deeper
    limit = sys.getrecursionlimit()
    assert limit <= 4 * NESTED_LEVELS, "the test needs a forward deeper than the recursion limit"
    with pytest.raises(RecursionError):  # the plain forward cannot run at this limit ...
        model(torch.randn(2, 4))
    report = scan(_target(model), batches=1, batch_size=2)  # ... the scan makes room
    assert len(report.layers) == NESTED_LEVELS
    assert report.layers[-1].name == ".".join(["inner"] * (NESTED_LEVELS - 1) + ["fc"])
    assert sys.getrecursionlimit() == limit
    assert _hooks(model) == 0
    results = [ScanResult("big", "big", report)]
    assert render(results, OutputFormat.JSON).count('"name": "inner.') == NESTED_LEVELS - 1
    assert "inner.inner" in render(results, OutputFormat.TABLE, width=100, color=False)


def test_flat_deep_model() -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(1000):
        layers += [nn.Linear(4, 4), nn.Tanh()]
    model = nn.Sequential(*layers)
    report = scan(_target(model), batches=1, batch_size=2)
    assert [layer.name for layer in report.layers[:2]] == ["0", "2"]
    assert len(report.layers) == 1000
    assert _hooks(model) == 0


def test_wide_model() -> None:
    torch.manual_seed(0)
    model = Wide(1500)  # 3,000 parameter tensors (bench/deep_wide.py: 10,000)
    report = scan(_target(model), batches=1, batch_size=2)
    assert len(report.layers) == 1500
    assert report.verdict.value == "healthy"
    assert _hooks(model) == 0


def test_nested_model_file_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "nested.py"
    path.write_text(textwrap.dedent(f"""
        import torch
        from torch import nn

        class Nest(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.fc = nn.Linear(4, 4)
                self.inner = inner

            def forward(self, x):
                x = torch.tanh(self.fc(x))
                return self.inner(x) if self.inner is not None else x

        def build_model():
            node = None
            for _ in range({NESTED_LEVELS}):
                node = Nest(node)
            return node

        def make_batch(batch_size):
            return torch.randn(batch_size, 4)
    """))
    result = runner.invoke(app, ["scan", str(path), "--batches", "1", "--batch-size", "2", "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    assert "RecursionError" not in result.output
    assert result.stdout.count('"name": "inner.') == NESTED_LEVELS - 1
