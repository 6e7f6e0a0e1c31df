"""Isolation of user code: what gradcheck does around the code of a model file it runs.

A scan imports the user's file and calls build_model, make_batch, forward and loss_fn. That code
may draw random numbers, print, exit, or change process-wide state; this module keeps each of
those from changing what gradcheck reports or the process the caller had:

- Same seed, same report: `seed_all` seeds torch (CPU and every CUDA device), `random` and numpy
  (when installed) with `--seed` before the file is imported, before build_model and before every
  batch; `isolated_scan` puts the caller's RNG states back afterwards. Randomness that no global
  seed reaches stays the user's: `numpy.random.default_rng()` or `random.SystemRandom()` without a
  seed, `os.urandom`, a clock.
- The process the user had: `isolated_scan` gives back the default dtype, the grad mode and the
  working directory that user code may change (at import, in build_model, ...).
- stdout holds only the report (CLI only, `user_output_to_stderr`): while user code runs, sys.stdout
  and file descriptor 1 point at stderr, so `print`, logging to sys.stdout, `os.write(1, ...)` and C
  extensions (libc stdio, flushed before fd 1 is given back) all land on stderr. Handlers the user
  registers with `atexit` run after the report; a guard, registered after them so that it runs
  first, points stdout at stderr for the rest of the process. A leftover `breakpoint()` is skipped
  with a notice (a debugger would wait on stdin in CI and talk on stdout), unless PYTHONBREAKPOINT
  names a debugger explicitly. Not covered: `os._exit()` ends the process on the spot (no report,
  no handler runs; nothing in the process can intercept it), and a thread the user code started
  that keeps writing after the scan returned.
- The command line a script expects: while the file is imported, sys.argv is `[file]`, as
  `python file` gives it, so a top-level `parser.parse_args()` sees its defaults (`script_argv`).
- Every exit honest: SystemExit and any other BaseException from user code (KeyboardInterrupt and
  gradcheck's own ScanTimeout aside) is a user error, exit 2, naming the function and file:line.

Importing this module does not import torch (the CLI uses it before any scan).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gradcheck_cli.errors import UserError
from gradcheck_cli.text import exception_text

NUMPY_SEEDS = 2 ** 32
"""numpy.random.seed accepts 0 <= seed < 2**32; larger seeds are reduced modulo this."""


# --------------------------------------------------------------------------------------------------
# Seeds and RNG states
# --------------------------------------------------------------------------------------------------


def seed_all(seed: int) -> None:
    """Seed every global RNG user code may draw from: torch (CPU, and every CUDA device, lazily
    if CUDA has not started yet), Python's `random` and numpy's legacy global RandomState."""
    _seed_torch(seed)
    random.seed(seed)
    numpy = _numpy()
    if numpy is not None:
        numpy.random.seed(seed % NUMPY_SEEDS)


def _seed_torch(seed: int) -> None:
    """`torch.manual_seed(seed)`: the CPU generator, and the CUDA/XPU/MTIA/MPS ones.

    Without any accelerator in the process (`torch.accelerator.is_available()` false) the device
    half cannot act: manual_seed seeds a backend that has not started by queueing the call until it
    starts (with a formatted stack trace each time: 1-3 ms of a small model's scan, which seeds five
    times), and without a device it never starts. Then only the CPU generator is seeded, exactly as
    manual_seed seeds it; with an accelerator, manual_seed itself runs."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and not accelerator.is_available():
        torch.random.default_generator.manual_seed(int(seed))
    else:
        torch.manual_seed(seed)  # seeds the CUDA generators too (manual_seed_all)


def _numpy() -> Any:
    """numpy when it is installed (it is optional for gradcheck), else None."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


@dataclass(frozen=True)
class RngStates:
    """The global RNG states of the process, to give back after a scan."""

    torch: Any
    python: Any
    cuda: Any = None
    """Per-device CUDA states; None when CUDA had not started (there is no state to keep)."""
    numpy: Any = None


def capture_rng() -> RngStates:
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    numpy = sys.modules.get("numpy")
    return RngStates(torch=torch.get_rng_state(), python=random.getstate(), cuda=cuda,
                     numpy=numpy.random.get_state() if numpy is not None else None)


def restore_rng(states: RngStates) -> None:
    import torch

    torch.set_rng_state(states.torch)
    random.setstate(states.python)
    if states.cuda is not None:
        torch.cuda.set_rng_state_all(states.cuda)
    if states.numpy is not None:
        sys.modules["numpy"].random.set_state(states.numpy)


# --------------------------------------------------------------------------------------------------
# Process state
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessState:
    """Process-wide settings user code is known to change: a script's `torch.set_default_dtype`,
    `torch.set_grad_enabled(False)` for inference, `os.chdir` to find its data."""

    default_dtype: Any
    grad_enabled: bool
    num_threads: int
    """`torch.set_num_threads` in a model file changes the summation order of every later scan."""
    cwd: str | None
    """None when the working directory was already gone (nothing to go back to)."""


def capture_process_state() -> ProcessState:
    import torch

    try:
        cwd: str | None = os.getcwd()
    except OSError:
        cwd = None
    return ProcessState(torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads(), cwd)


def restore_process_state(state: ProcessState) -> None:
    import torch

    torch.set_default_dtype(state.default_dtype)
    torch.set_grad_enabled(state.grad_enabled)
    if torch.get_num_threads() != state.num_threads:
        torch.set_num_threads(state.num_threads)
    if state.cwd is None:
        return
    try:
        if os.getcwd() == state.cwd:
            return
    except OSError:
        pass  # the user code removed the folder it moved to: go back all the same
    try:
        os.chdir(state.cwd)
    except OSError as exc:
        raise UserError(f"the model's code changed the working directory and gradcheck cannot go back "
                        f"to {state.cwd}: {exc.strerror or exc}; do not remove or lock that folder "
                        "from the model file") from None


@contextlib.contextmanager
def script_argv(path: str) -> Iterator[None]:
    """sys.argv as `python path` with no arguments sets it, while the model file is imported.
    Training scripts parse their options at import (`opt = parser.parse_args()` at top level, as
    pytorch/examples' dcgan, vae and reinforcement_learning do); with gradcheck's own argv they
    failed with "unrecognized arguments: scan model.py ..." under gradcheck's name."""
    saved = sys.argv
    sys.argv = [path]
    try:
        yield
    finally:
        sys.argv = saved


def fresh_start(seed: int) -> None:
    """Every RNG seeded with `seed`, grad mode on: the state user code starts from (before the
    import and again before build_model, so that the model's init does not depend on what the
    import drew from the RNGs or switched off)."""
    import torch

    seed_all(seed)
    torch.set_grad_enabled(True)


@contextlib.contextmanager
def isolated_scan(seed: int) -> Iterator[None]:
    """Run one scan from a known state (`fresh_start`); afterwards the caller's RNG states,
    default dtype, grad mode and working directory are given back, so the scans of a recipe do
    not depend on each other or on their order."""
    rng = capture_rng()
    process = capture_process_state()
    fresh_start(seed)
    try:
        yield
    finally:
        restore_rng(rng)
        restore_process_state(process)


# --------------------------------------------------------------------------------------------------
# Exits: SystemExit and other BaseExceptions from user code
# --------------------------------------------------------------------------------------------------


def is_exit_from_user_code(exc: BaseException) -> bool:
    """True for a BaseException that is not an Exception, KeyboardInterrupt (the user pressed
    Ctrl-C: it ends gradcheck with 130) or gradcheck's own ScanTimeout: SystemExit, GeneratorExit
    or a user's BaseException subclass, which only user code raises during a scan."""
    from gradcheck_cli.target.guards import ScanTimeout

    return not isinstance(exc, (Exception, KeyboardInterrupt, ScanTimeout))


def is_user_code_failure(exc: BaseException) -> bool:
    """What a call into user code may turn into a UserError: any Exception, or an exit."""
    return isinstance(exc, Exception) or is_exit_from_user_code(exc)


def user_exit_error(exc: BaseException, target: str, stage: str) -> UserError:
    """The one line for a SystemExit (or other BaseException) that left the user's code during
    `stage` ('during the forward pass of batch 1/3'): 'model.py:14: forward() raised SystemExit: 0
    during the forward pass of batch 1/3; ...'."""
    from gradcheck_cli.target.forward_error import user_frame

    frame = user_frame(exc)
    where, function = (frame[0], f"{frame[1]}()") if frame else (target, "the model's code")
    return UserError(f"{where}: {function} raised {exception_text(exc)} {stage}; {exit_fix(exc)} "
                     "(--debug shows the traceback)")


def exit_fix(exc: BaseException) -> str:
    """How to fix an exit from user code, for the messages here and in targets.py."""
    if isinstance(exc, SystemExit):
        return ("gradcheck calls this code and needs it to return: remove the sys.exit()/exit() "
                'there (script code belongs under `if __name__ == "__main__":`)')
    return (f"gradcheck calls this code and needs it to return or raise an Exception: derive "
            f"{type(exc).__name__} from Exception, not BaseException")


# --------------------------------------------------------------------------------------------------
# stdout belongs to the report (CLI)
# --------------------------------------------------------------------------------------------------


Notice = Callable[[str], None]
"""Tells the user something on stderr (the CLI's warning line; silent under --quiet)."""


@contextlib.contextmanager
def user_output_to_stderr(notice: Notice) -> Iterator[None]:
    """While user code runs: its stdout goes to stderr (sys.stdout and fd 1), a leftover
    breakpoint() is skipped with a notice. On the way out stdout is given back for the report,
    and the exit guard is (re)registered after any atexit handler the user code added."""
    saved_stdout = sys.stdout
    saved_hook = sys.breakpointhook
    _flush_stdout()
    with _fd_to_stderr(1):
        sys.stdout = sys.stderr
        if not os.environ.get("PYTHONBREAKPOINT"):  # a debugger the user asked for is honoured
            sys.breakpointhook = _skip_breakpoint(notice)
        try:
            yield
        finally:
            sys.breakpointhook = saved_hook
            _flush_stdout()  # what user code left in buffers goes to stderr, before fd 1 is back
            sys.stdout = saved_stdout
    atexit.unregister(_stdout_to_stderr_for_good)
    atexit.register(_stdout_to_stderr_for_good)  # last registered: runs before the user's handlers


@contextlib.contextmanager
def _fd_to_stderr(fd: int) -> Iterator[None]:
    """Point file descriptor `fd` at stderr's file (at /dev/null when there is no stderr) and
    give it back after; nothing to do when `fd` is not open."""
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    try:
        _point_at_stderr(fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _point_at_stderr(fd: int) -> None:
    try:
        os.dup2(2, fd)
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def _flush_stdout() -> None:
    """Flush Python's stdout objects and the C library's stdio buffers (printf from extensions)."""
    for stream in (sys.stdout, sys.__stdout__, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    with contextlib.suppress(Exception):  # no C library to flush (some platforms): nothing buffered there
        import ctypes

        ctypes.CDLL(None).fflush(None)


def _stdout_to_stderr_for_good() -> None:
    """At exit, after the report: whatever still runs (the user's atexit handlers, finalizers at
    shutdown) writes to stderr."""
    _flush_stdout()
    with contextlib.suppress(OSError):
        _point_at_stderr(1)
    sys.stdout = sys.stderr


def _skip_breakpoint(notice: Notice) -> Callable[..., None]:
    """A sys.breakpointhook that does not stop: a debugger would wait for input that never comes
    in CI, and write to stdout. Each location is told once."""
    told: set[str] = set()

    def skip(*args: Any, **kwargs: Any) -> None:
        caller = sys._getframe(1)
        where = f"{_shown(caller.f_code.co_filename)}:{caller.f_lineno}"
        if where not in told:
            told.add(where)
            notice(f"skipped breakpoint() at {where}: gradcheck runs without a debugger "
                   "(set PYTHONBREAKPOINT=pdb.set_trace to stop there)")
    return skip


def _shown(filename: str) -> str:
    relative = os.path.relpath(filename) if os.path.isabs(filename) else filename
    return filename if relative.startswith("..") else relative
