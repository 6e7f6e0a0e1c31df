"""Ctrl-C during a scan: exit 130 with one line, hooks removed and the model restored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import nn
from typer.testing import CliRunner

from gradcheck_cli import scan
from gradcheck_cli.cli.app import app
from gradcheck_cli.target.resolve import Target

runner = CliRunner()

INTERRUPTED_ON_BATCH_2 = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.fc(x)

def make_batch(batch_size):
    return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))
"""

SLOW_MODEL = """
import time
import torch
from torch import nn

MARKER = {marker!r}

class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        open(MARKER, "w").close()  # tells the test the scan is under way
        time.sleep(60)
        return self.fc(x)

def make_batch(batch_size):
    return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))
"""


class InterruptedOnCall(nn.Module):
    """Raises KeyboardInterrupt (what Ctrl-C raises) on the given forward call."""

    def __init__(self, on_call: int) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 4)
        self.on_call = on_call
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.on_call:
            raise KeyboardInterrupt
        return self.head(torch.relu(self.bn(self.fc(x))))


def _prepared(on_call: int) -> nn.Module:
    torch.manual_seed(0)
    model = InterruptedOnCall(on_call)
    model(torch.randn(4, 8)).sum().backward()  # the user's own .grad
    model.calls = 0
    model.eval()
    model.fc.register_forward_hook(lambda m, a, o: None)  # and a hook of their own
    return model


@pytest.mark.parametrize("steps,optimizer,on_call", [(0, "sgd", 2), (2, "adam", 2), (2, "adam", 3)],
                         ids=["batch-2", "adam-steps-forward", "batch-2-after-steps"])
def test_api_interrupt_restores_the_model(steps: int, optimizer: str, on_call: int) -> None:
    model = _prepared(on_call)
    before = snapshot(model)
    rng = torch.get_rng_state()
    target = Target("interrupted", lambda: model, lambda n: (torch.randn(n, 8), torch.randint(0, 4, (n,))))
    with pytest.raises(KeyboardInterrupt):
        scan(target, batches=3, batch_size=6, steps=steps, optimizer=optimizer, lr=0.5)
    assert model.calls == on_call  # it really stopped half-way
    assert_unchanged(before, model)
    assert torch.equal(torch.get_rng_state(), rng)


def test_cli_interrupt_exits_130_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(INTERRUPTED_ON_BATCH_2))
    result = runner.invoke(app, ["scan", str(path)])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == "gradcheck: interrupted"
    assert result.stdout == ""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_real_sigint_exits_130_without_traceback(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    path = tmp_path / "slow.py"
    path.write_text(textwrap.dedent(SLOW_MODEL.format(marker=str(marker))))
    process = subprocess.Popen([sys.executable, "-m", "gradcheck_cli", "scan", str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "NO_COLOR": "1"})
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the scan never reached the model's forward"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert stderr.strip() == "gradcheck: interrupted", stderr
    assert stdout == ""
