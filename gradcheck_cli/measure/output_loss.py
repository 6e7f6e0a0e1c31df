"""The loss a model returns, read where a training framework does not hand it to callbacks.

The Hugging Face Trainer computes the loss inside `Trainer.compute_loss` from the model's output
(`outputs["loss"]`) and gives its callbacks no loss (README, "Watching training"). A forward hook
on the model adds up the `loss` of each training forward's output on the device (no host read;
the output and everything the Trainer sees are left as they were), and the callback takes the
step's loss once per optimizer step. With gradient accumulation a step has several forwards, and
the step's loss is the one the Trainer accumulates for its own log:
* when the forward got `num_items_in_batch` (the Trainer passes it to models that take loss
  keyword arguments), the model divided the micro-batch's summed loss by the step's item count:
  each output loss is a share of the step's loss, and the step's loss is their sum;
* otherwise each output loss is its micro-batch's mean, and the step's loss is their mean.
Forwards in eval mode (the Trainer's evaluation) are not counted, nor a forward of the very same
input tensors as the last one counted: the watch's replay of a non-finite step (watch_replay.py)
runs the model again on the batch it kept, and that is not a new micro-batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class OutputLoss:
    """A forward hook on `model` adding up its training outputs' `loss` until taken."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._total: torch.Tensor | None = None
        self._forwards = 0
        self._shares = False
        self._inputs: tuple[torch.Tensor, ...] = ()
        """The input tensors of the last forward counted (references, as the watch keeps them)."""
        self._handle: Any = None

    def attach(self) -> None:
        if self._handle is None:
            self._handle = self.model.register_forward_hook(self._add, with_kwargs=True)

    def detach(self) -> None:
        """Remove the hook and drop what it holds (the model comes back as it was)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.remove()
        self.take()
        self._inputs = ()

    def take(self) -> torch.Tensor | None:
        """The loss of the forwards since the last take (module docstring), a 0-d tensor on the
        model's device, or None when none of them returned a floating-point `loss`."""
        total, forwards, shares = self._total, self._forwards, self._shares
        self._total, self._forwards, self._shares = None, 0, False
        if total is None:
            return None
        return total if shares else total / forwards

    def _add(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if not (isinstance(loss, torch.Tensor) and loss.is_floating_point() and loss.numel() == 1):
            return
        inputs = tuple(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
        if inputs and len(inputs) == len(self._inputs) and all(a is b for a, b in zip(inputs, self._inputs)):
            return  # the same batch run again (the watch's replay): counted already
        self._inputs = inputs
        value = loss.detach().reshape(()).to(torch.float64)
        self._total = value if self._total is None else self._total + value
        self._forwards += 1
        self._shares = self._shares or kwargs.get("num_items_in_batch") is not None
