"""Resource guards for one scan: the --timeout clock, out-of-memory messages, deep module nesting.

The scan reports each stage as it starts (probe.StageCallback); `StageClock` remembers the running
stage so that a timeout or an out-of-memory error can name it ("the forward pass of batch 2/3").

The time limit interrupts the main thread with SIGALRM (`signal.setitimer`): the handler raises
`ScanTimeout`, a BaseException so that a user's `except Exception` cannot swallow it, and the probe's
`finally` removes the hooks and restores the model as for any other failure. The one-shot alarm never
interrupts the restore itself: while "restoring the model" runs it only marks the deadline passed, and
the next stage raises. Where signals are unavailable (a non-main thread, Windows) the deadline is
checked as each stage starts. A signal is handled between Python bytecodes, so one long C++ kernel
finishes before the scan stops.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gradcheck_cli.errors import UserError

RESTORING = "restoring the model"
"""The stage a timeout must never interrupt: the user's model is being put back."""
FRAMES_PER_LEVEL = 6
"""Python frames one level of module nesting takes in a hooked forward (__call__, _call_impl, forward,
measured as 4; 2 spare), used to make room for deeply nested models."""
MAX_RECURSION_LIMIT = 60_000
"""Never raise Python's recursion limit beyond this: deeper C stacks risk a crash, not an error."""
MAX_TIMEOUT = 1e9
"""The longest --timeout in seconds (about 31 years). signal.setitimer converts the delay to
nanoseconds in a signed 64-bit integer, which overflows past 2**63 ns (about 9.2e9 s)."""


class ScanTimeout(BaseException):
    """The scan ran past --timeout; `where` says during which stage."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


def describe_stage(stage: str, batch: int, batches: int) -> str:
    """'during the forward pass of batch 2/3', 'while building the model'."""
    if batch <= 0:
        return f"while {stage}"
    if stage == "making the batch":
        return f"while making batch {batch}/{batches}"
    if stage == "optimizer steps":
        return f"during the optimizer steps after batch {batch}/{batches}"
    if stage in ("forward pass", "backward pass"):
        return f"during the {stage} of batch {batch}/{batches}"
    return f"while {stage} (batch {batch}/{batches})"


class StageClock:
    """An on_stage callback that remembers the running stage and enforces the deadline."""

    def __init__(self, timeout: float | None, forward_to: Any = None) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self.stage: tuple[str, int, int] = ("loading the target", 0, 0)
        self.work_stage = self.stage
        """The last stage other than the restore: what was running when a scan failed."""
        self._forward_to = forward_to

    @property
    def where(self) -> str:
        """The stage a failure or timeout interrupted, in words."""
        return describe_stage(*self.work_stage)

    def __call__(self, stage: str, batch: int, batches: int) -> None:
        running = self.where
        self.stage = (stage, batch, batches)
        if stage != RESTORING:
            if self.expired():
                raise ScanTimeout(running)
            self.work_stage = self.stage
        if self._forward_to is not None:
            self._forward_to(stage, batch, batches)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def on_alarm(self, signum: int, frame: Any) -> None:
        if self.stage[0] != RESTORING:
            raise ScanTimeout(self.where)
        # during the restore: the next stage (or the end of the scan) reports the timeout


@contextmanager
def time_limit(clock: StageClock) -> Iterator[None]:
    """Arm a one-shot SIGALRM for clock.timeout seconds (main thread only), and disarm it after."""
    if clock.timeout is not None and clock.timeout > MAX_TIMEOUT:
        raise UserError(f"--timeout {clock.timeout:g} is beyond the longest timer, {MAX_TIMEOUT:g} seconds; "
                        "give fewer seconds, or leave --timeout out for no limit")
    if clock.timeout is None or not _can_use_alarm():
        yield
        return
    previous_handler = signal.signal(signal.SIGALRM, clock.on_alarm)
    previous_delay, _ = signal.setitimer(signal.ITIMER_REAL, clock.timeout)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:  # someone else's alarm was pending: give it back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(previous_delay - (time.monotonic() - started), 1e-3))


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def timeout_error(target: str, timeout: float, where: str) -> UserError:
    return UserError(f"scan of {target} timed out after {timeout:g} s {where}; "
                     "raise --timeout or lower --batch-size/--batches")


def is_out_of_memory(exc: BaseException | None) -> bool:
    """torch.OutOfMemoryError (CUDA), MemoryError, or an allocator RuntimeError saying so."""
    if exc is None:
        return False
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_error(exc: BaseException, target: str, where: str, batch_size: int) -> UserError:
    """'ran out of CUDA memory during the forward pass of batch 1/3 with --batch-size 16; try ...'."""
    memory = "CUDA" if type(exc).__name__ == "OutOfMemoryError" or "cuda" in str(exc).lower() else "CPU"
    smaller = f"--batch-size {batch_size // 2}" if batch_size > 1 else "a smaller input (--input-shape)"
    return UserError(f"scan of {target} ran out of {memory} memory {where} with --batch-size {batch_size}; "
                     f"try {smaller} (or a smaller model input)")


def nesting_depth(model: Any) -> int:
    """How deeply the model's modules nest, counted without recursion (the root is depth 1)."""
    deepest = 0
    pending = [(model, 1)]
    seen: set[int] = set()
    while pending:
        module, depth = pending.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in module._modules.values() if child is not None)
    return deepest


@contextmanager
def recursion_room(model: Any) -> Iterator[None]:
    """Let a deeply nested model run: raise the recursion limit for the scan, restore it after.

    A model nested N modules deep needs about FRAMES_PER_LEVEL * N Python frames for one forward; the
    default limit (1000) stops at about 250 levels. Only ever raised, never lowered, and capped.
    """
    previous = sys.getrecursionlimit()
    needed = min(_stack_depth() + FRAMES_PER_LEVEL * nesting_depth(model) + 500, MAX_RECURSION_LIMIT)
    if needed > previous:
        sys.setrecursionlimit(needed)
    try:
        yield
    finally:
        if needed > previous:
            sys.setrecursionlimit(previous)


def _stack_depth() -> int:
    frame = sys._getframe()
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back  # type: ignore[assignment]
    return depth
