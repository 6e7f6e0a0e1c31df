"""TARGET string -> Target: a model file, `file.py:NAME`, `pkg.module:attr` or `builtin:NAME`.

(Loader functions are filled in below the Target record.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """What gradcheck needs to probe a model; built without running the model."""

    name: str
    """The target as the user wrote it (shown in the report)."""
    build_model: Callable[[], Any]
    """Returns the nn.Module to scan (may be the user's own module-level instance)."""
    make_batch: Callable[[int], Any] | None = None
    """batch_size -> inputs | (inputs, target); inputs a tensor, tuple (positional) or dict (kwargs)."""
    loss_fn: Callable[[Any, Any], Any] | None = None
    """(output, target) -> scalar tensor; None means the default loss rules of DESIGN.md."""
