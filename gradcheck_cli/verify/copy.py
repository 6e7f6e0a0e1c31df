"""Copies of the user's model for --verify: every applier patches a copy, never the model itself.

A copy is `copy.deepcopy` of the built model (after the scan's probe restored it, so the copy holds
the weights the user built or loaded). A model that cannot be deep-copied (a handle to a file or a
process, a module holding an object that refuses to be pickled) is built again with the target's
`build_model()` from the same seeded start as the scan's (target/isolation.py `fresh_start`), and
the `--checkpoint` is applied again. When neither gives a new module (a `build_model()` that returns
the same module-level instance each time), the model cannot be copied: `NoCopy` (docs/verify.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


class NoCopy(Exception):
    """The model can neither be deep-copied nor built again as a separate module."""


class ModelCopier:
    """Makes fresh, independent copies of `model` (each call a new one)."""

    def __init__(self, model: nn.Module, build_model: Callable[[], object], seed: int,
                 checkpoint: tuple[Mapping[str, torch.Tensor], str] | None = None) -> None:
        self._model = model
        self._build_model = build_model
        self._seed = seed
        self._checkpoint = checkpoint
        self._deepcopy_failed: str | None = None
        """Why deepcopy failed once: later copies go straight to the rebuild."""

    def __call__(self) -> nn.Module:
        if self._deepcopy_failed is None:
            try:
                return copy.deepcopy(self._model)
            except Exception as exc:  # noqa: BLE001 - any failure of a user object's __deepcopy__/__reduce__
                self._deepcopy_failed = f"{type(exc).__name__}: {exc}"
        return self._rebuild()

    def _rebuild(self) -> nn.Module:
        from torch import nn

        from gradcheck_cli.target.checkpoint import apply_state_dict
        from gradcheck_cli.target.isolation import fresh_start
        from gradcheck_cli.target.scannable import unwrap_model

        fresh_start(self._seed)  # the same start as the scan's build: the same initial weights
        rebuilt = unwrap_model(self._build_model())
        if not isinstance(rebuilt, nn.Module) or rebuilt is self._model:
            raise NoCopy(f"the model cannot be deep-copied ({self._deepcopy_failed}) and build_model() "
                         "returns the same instance, so there is no copy to patch")
        if self._checkpoint is not None:
            apply_state_dict(rebuilt, *self._checkpoint)
        return rebuilt
