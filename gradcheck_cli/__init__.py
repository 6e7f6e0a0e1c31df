"""gradcheck: gradient diagnostics for PyTorch models.

`import gradcheck_cli` does not import torch; `gradcheck_cli.scan(...)` does, when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gradcheck_cli.report.records import Report


def scan(target: Any, config: Any = None, thresholds: Any = None, **options: Any) -> Report:
    """Scan a model (TARGET string or Target) and return a Report. See gradcheck_cli.api.scan."""
    from gradcheck_cli.api import scan as _scan

    return _scan(target, config, thresholds, **options)


__all__ = ["__version__", "scan"]
