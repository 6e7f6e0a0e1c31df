"""What both framework callbacks keep of a watch: its options, the running watch, the last report.

The callbacks (lightning.py, huggingface.py) differ in when they start, step and stop the watch;
how they start it with the user's options and end it, gated or not, is this one piece.
Framework-free: importing it imports no framework and no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradcheck_cli.cli.watch import watch

if TYPE_CHECKING:
    from gradcheck_cli.analyse.thresholds import Thresholds
    from gradcheck_cli.cli.watch import Watch
    from gradcheck_cli.report.records import Report


class WatchHolder:
    """The watch's options (`watch(...)`'s keywords), the running watch and the last report."""

    def __init__(self, *, every: int = 50, sample_every: int = 0,
                 output: str | Path | None = "gradcheck-watch.json", quiet: bool = False,
                 fail_on: Iterable[str] | None = None, thresholds: Thresholds | None = None) -> None:
        super().__init__()  # the framework's Callback, after this class in the callbacks' bases
        self.options: dict[str, Any] = {"every": every, "sample_every": sample_every, "output": output,
                                        "quiet": quiet, "fail_on": fail_on, "thresholds": thresholds}
        self.watch: Watch | None = None
        """The running watch, between the start and the end of training."""
        self.report: Report | None = None
        """The last finished watch's report."""

    def _start(self, model: Any, optimizer: Any, scaler: Any) -> None:
        self.watch = watch(model, optimizer, scaler=scaler, **self.options)

    def _finish(self) -> None:
        """Close the running watch with the gate (WatchGateFailed when fail_on matches)."""
        watching, self.watch = self.watch, None
        if watching is not None:
            try:
                watching.close()
            finally:
                self.report = watching.report

    def _abandon(self, error: BaseException) -> None:
        """Close without the gate: the report holds what was measured, the error goes on as it was."""
        watching, self.watch = self.watch, None
        if watching is not None:
            watching.__exit__(type(error), error, error.__traceback__)
            self.report = watching.report
