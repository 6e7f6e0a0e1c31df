"""Progress on stderr for `gradcheck scan` and `gradcheck run`. Called by cli/app.py only.

A transient Rich progress bar, advanced per probe batch by api.scan's ``on_stage`` callback (and
per scan in a multi-scan run); drawn only when stderr is a terminal and not ``--quiet``, so logs
and pipes never receive cursor codes. ``--verbose`` prints one line per stage instead (above the
bar when there is one): the stage, the batch and the scan, so a slow or stuck step is visible in a
CI log too. With --verify, api.scan announces each verification ("verifying he-init (1/3)") before
probing a patched copy; the stages of that probe are shown under it ("verifying he-init (1/3):
forward pass"), so the bar says which recommendation is being measured.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Rich is imported only when something is drawn: a piped, quiet scan skips it
    from rich.console import Console
    from rich.progress import Progress, TaskID

VERIFYING = "verifying "
"""How a verification's stage begins (verify/run.py); the stages after it that do not name it
themselves (the copy's "restoring the model") belong to it."""


class ScanProgress:
    """Use as a context manager; call ``start_scan`` before each scan and pass ``on_stage`` to
    api.scan."""

    def __init__(self, *, scans: int = 1, quiet: bool = False, verbose: bool = False,
                 console: Console | None = None) -> None:
        self._verbose = verbose and not quiet
        # The stream itself decides, not Rich's is_terminal: FORCE_COLOR (set in many CI images)
        # would make Rich draw the bar into a log file.
        stream = console.file if console is not None else sys.stderr
        show_bar = not quiet and hasattr(stream, "isatty") and stream.isatty()
        if console is None and (show_bar or self._verbose):
            console = _stderr_console()
        self._console = console
        self._progress: Progress | None = None
        if show_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=self._console, transient=True)
        self._scans = scans
        self._scan_number = 0
        self._scan_name = ""
        self._verifying = ""
        self._overall: TaskID | None = None
        self._batches: TaskID | None = None

    @property
    def shows_bar(self) -> bool:
        return self._progress is not None

    def __enter__(self) -> ScanProgress:
        if self._progress is not None:
            self._progress.start()
            if self._scans > 1:
                self._overall = self._progress.add_task("scans", total=self._scans)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start_scan(self, name: str) -> None:
        """A new scan begins: the previous one counts as done."""
        if self._scan_number and self._overall is not None and self._progress is not None:
            self._progress.advance(self._overall)
        self._scan_number += 1
        self._scan_name = name
        self._verifying = ""
        if self._progress is not None:
            if self._batches is not None:
                self._progress.remove_task(self._batches)
            self._batches = self._progress.add_task(self._label("starting"), total=None)

    def on_stage(self, stage: str, batch: int, batches: int) -> None:
        """probe.StageCallback: ``batch`` counts from 1 in the batch loop, 0 outside it."""
        shown = stage
        if stage.startswith(VERIFYING):  # "verifying he-init (1/3)", or one of its stages named under it
            self._verifying = stage.split(": ", 1)[0]
        elif self._verifying:
            shown = f"{self._verifying}: {stage}"
        if self._verbose:
            where = f" (batch {batch}/{batches})" if batch else ""
            scan = f"scan {self._scan_number}/{self._scans} {self._scan_name}: " if self._scans > 1 else ""
            assert self._console is not None  # made in __init__ whenever verbose
            self._console.print(f"gradcheck: {scan}{shown}{where}", soft_wrap=True)
        if self._progress is not None and self._batches is not None:
            done = max(batch - 1, 0) if batch else (batches if stage.startswith(("analys", "restor")) else 0)
            self._progress.update(self._batches, description=self._label(shown), total=batches,
                                  completed=done)

    def _label(self, stage: str) -> str:
        prefix = f"{self._scan_name}: " if self._scan_name else ""
        return f"{prefix}{stage}"


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, markup=False, emoji=False)
