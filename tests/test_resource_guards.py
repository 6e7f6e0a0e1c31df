"""--timeout names the running stage and leaves the process as it was; out-of-memory is one clear line."""

from __future__ import annotations

import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from gradcheck_cli import scan
from gradcheck_cli.cli.app import app
from gradcheck_cli.errors import UserError
from gradcheck_cli.target.guards import RESTORING, ScanTimeout, StageClock
from gradcheck_cli.target.resolve import Target

runner = CliRunner()


class Stalls(nn.Module):
    """Sleeps `seconds` in every forward from call `from_call` on; swallows Exception like sloppy code."""

    def __init__(self, seconds: float, from_call: int = 1) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.seconds = seconds
        self.from_call = from_call
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.from_call:
            try:
                time.sleep(self.seconds)
            except Exception:  # a timeout must not be swallowed by the user's own handler
                pass
        return self.fc(x)


class Fails(nn.Module):
    """Raises `error` in the forward pass (or, with in_backward, in the backward pass) of batch 1."""

    def __init__(self, error: BaseException, in_backward: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.error = error
        self.in_backward = in_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        if not self.in_backward:
            raise self.error
        out.register_hook(self._raise)
        return out

    def _raise(self, grad: torch.Tensor) -> None:
        raise self.error


def _target(model: nn.Module) -> Target:
    return Target("net.py", lambda: model, lambda n: (torch.randn(n, 8), torch.randint(0, 4, (n,))))


def _hooks(model: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


# ------------------------------------------------------------------------------------ --timeout


def test_timeout_names_the_stage_and_restores_everything() -> None:
    model = Stalls(seconds=30, from_call=2)
    weights = model.fc.weight.detach().clone()

    def handler(signum: int, frame: Any) -> None:
        raise AssertionError("the previous SIGALRM handler must not fire")

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        started = time.monotonic()
        with pytest.raises(UserError) as info:
            scan(_target(model), timeout=1.0)
        elapsed = time.monotonic() - started
        assert signal.getsignal(signal.SIGALRM) is handler
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert str(info.value) == ("scan of net.py timed out after 1 s during the forward pass of batch 2/3; "
                               "raise --timeout or lower --batch-size/--batches")
    assert elapsed < 10  # the 30 s sleep was interrupted, not waited for
    assert _hooks(model) == [0, 0]
    assert torch.equal(model.fc.weight, weights)


def test_a_pending_alarm_of_the_caller_is_given_back() -> None:
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 50.0)
        scan(_target(Stalls(seconds=0.0)), timeout=20)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 50.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == []


def test_timeout_without_signals_is_checked_between_stages() -> None:
    # Outside the main thread there is no SIGALRM: the deadline is checked as each stage starts.
    model = Stalls(seconds=0.6)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            scan(_target(model), timeout=0.9)
        except BaseException as exc:  # noqa: B036 - handed to the main thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert len(errors) == 1 and isinstance(errors[0], UserError)
    assert "timed out after 0.9 s during the forward pass of batch 2/3" in str(errors[0])
    assert model.calls == 2 and _hooks(model) == [0, 0]


def test_the_restore_is_never_interrupted() -> None:
    clock = StageClock(timeout=None)
    clock("forward pass", 2, 3)
    clock(RESTORING, 0, 3)
    clock.on_alarm(signal.SIGALRM, None)  # the alarm lands during the restore: no exception
    clock.deadline = time.monotonic() - 1  # ... and the deadline has passed
    with pytest.raises(ScanTimeout) as info:
        clock("analysing the measurements", 0, 3)
    assert info.value.where == "during the forward pass of batch 2/3"


def test_cli_timeout_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "slow.py"
    path.write_text(textwrap.dedent("""
        import time
        import torch
        from torch import nn

        class Slow(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(8, 4)

            def forward(self, x):
                time.sleep(30)
                return self.fc(x)
    """))
    result = runner.invoke(app, ["scan", str(path), "--timeout", "1.5"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"gradcheck: error: scan of {path} timed out after 1.5 s during the forward pass of batch 1/3; "
        "raise --timeout or lower --batch-size/--batches")


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_cli_invalid_timeout(value: str) -> None:
    result = runner.invoke(app, ["scan", "builtin:relu-he", "--timeout", value])
    assert result.exit_code == 2
    assert "--timeout" in result.stderr and "Traceback" not in result.stderr


def test_api_invalid_timeout() -> None:
    with pytest.raises(UserError, match="--timeout must be a positive number of seconds"):
        scan("builtin:relu-he", timeout=0)


# ------------------------------------------------------------------------------------ out of memory


@pytest.mark.parametrize("error,in_backward,expected", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False,
     "ran out of CUDA memory during the forward pass of batch 1/3 with --batch-size 16; try --batch-size 8"),
    (MemoryError(), False,
     "ran out of CPU memory during the forward pass of batch 1/3 with --batch-size 16; try --batch-size 8"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True,
     "ran out of CPU memory during the backward pass of batch 1/3 with --batch-size 16; try --batch-size 8"),
], ids=["cuda-forward", "cpu-forward", "cpu-backward"])
def test_out_of_memory_is_one_clear_line(error: BaseException, in_backward: bool, expected: str) -> None:
    model = Fails(error, in_backward)
    with pytest.raises(UserError) as info:
        scan(_target(model))
    assert str(info.value).startswith("scan of net.py " + expected)
    assert _hooks(model) == [0, 0]


def test_out_of_memory_with_batch_size_1_suggests_a_smaller_input() -> None:
    with pytest.raises(UserError, match="with --batch-size 1; try a smaller input"):
        scan(_target(Fails(MemoryError())), batch_size=1)


def test_out_of_memory_in_make_batch_via_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build_model():
            return nn.Linear(8, 4)

        def make_batch(batch_size):
            raise MemoryError
    """))
    result = runner.invoke(app, ["scan", str(path), "--batch-size", "64"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "ran out of CPU memory while making batch 1/3 with --batch-size 64; try --batch-size 32" in lines[0]


def test_other_runtime_errors_are_not_called_out_of_memory() -> None:
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        scan(_target(Fails(RuntimeError("shape mismatch"), in_backward=True)))
    assert "memory" not in str(info.value)
