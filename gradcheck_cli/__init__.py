"""gradcheck: gradient diagnostics for PyTorch models.

`import gradcheck_cli` does not import torch; `gradcheck_cli.scan(...)` does, when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gradcheck_cli.cli.watch import Watch
    from gradcheck_cli.report.records import Report


def scan(target: Any, config: Any = None, thresholds: Any = None, **options: Any) -> Report:
    """Scan a model (TARGET string or Target) and return a Report. See gradcheck_cli.api.scan."""
    from gradcheck_cli.api import scan as _scan

    return _scan(target, config, thresholds, **options)


def watch(model: Any, optimizer: Any = None, *, every: int = 50, sample_every: int = 0,
          output: Any = "gradcheck-watch.json", quiet: bool = False, fail_on: Any = None,
          thresholds: Any = None, scaler: Any = None) -> Watch:
    """Watch a training loop (`with watch(model, optimizer) as w: ... w.step(loss)`) and return
    the Watch; see gradcheck_cli.api.watch."""
    from gradcheck_cli.cli.watch import watch as _watch

    return _watch(model, optimizer, every=every, sample_every=sample_every, output=output, quiet=quiet,
                  fail_on=fail_on, thresholds=thresholds, scaler=scaler)


__all__ = ["__version__", "scan", "watch"]
