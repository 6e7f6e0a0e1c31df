"""The training watch as a Hugging Face `TrainerCallback` (extra `.[transformers]`).

    from gradcheck_cli.integrations.huggingface import GradcheckTrainerCallback
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[GradcheckTrainerCallback(every=50)])
    trainer.train()                      # the report is written when training ends

`on_train_begin` (which the Trainer calls with the model and its optimizer) starts
`gradcheck_cli.watch(model, optimizer, ...)`; the optimizer Accelerate wraps is unwrapped to the
torch optimizer that steps. The Trainer runs backward, then its gradient clipping
(`max_grad_norm`), then `optimizer.step()`: the watch reads the norms at the end of the backward
(pre-clip) and looks for NaN/Inf in the optimizer's step pre-hook, before the update.

One `w.step(loss)` per optimizer step, in `on_step_end` (with `gradient_accumulation_steps=k`,
every k-th micro-batch). The Trainer gives callbacks no loss and its `on_log` sees an average
every `logging_steps`, so the loss is read from the model: a forward hook adds up the `loss` of
the step's training forwards (measure/output_loss.py) into the step's loss as the Trainer
accumulates it for its own log (the sum of the micro-batches' shares when the Trainer passes
`num_items_in_batch`, else their mean; on one process). A model
whose output has no loss (the Trainer computing it outside the model: `label_smoothing_factor`,
`compute_loss_func`, an overridden `compute_loss`) stops at the first step with a UserError
saying so, the report of what was measured written.

`on_train_end` closes the watch and writes the report; with `fail_on`, a matching finding raises
`WatchGateFailed` out of `trainer.train()`. The Trainer calls no callback when training raises:
the watch then stays open, its hooks on the model, until the process exits, when an `atexit`
handler closes it and writes the report of the steps measured (no gate; the error has already
ended the run). A process that goes on after the error (a notebook) calls `callback.close()`.

With `fp16=True` the Trainer's Accelerator keeps its GradScaler on the optimizer it wraps
(AcceleratedOptimizer.scaler), which `on_train_begin` receives: the watch is given it (`scaler=`),
so the norms are the unscaled ones and the scaler's skipped overflow steps are counted in the
report's config ("skipped_steps"), not reported as nonfinite. (The callback's kwargs hold no
Accelerator; an optimizer that is not Accelerate's wrapper has no scaler to find.)
"""

from __future__ import annotations

import atexit
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as missing:
    raise ImportError("gradcheck's Trainer callback needs transformers: pip install 'gradcheck[transformers]'") \
        from missing

from gradcheck_cli.errors import UserError
from gradcheck_cli.integrations.holder import WatchHolder
from gradcheck_cli.measure.output_loss import OutputLoss

NO_LOSS = ("gradcheck's Trainer callback reads the loss from the model's output, and this model's output has "
           "no 'loss' (label_smoothing_factor, compute_loss_func or an overridden compute_loss compute it outside "
           "the model): use gradcheck_cli.watch in your own loop, or let the model compute its loss")


class GradcheckTrainerCallback(WatchHolder, TrainerCallback):  # type: ignore[misc]
    """Watch a Hugging Face Trainer run (module docstring); the options are `watch(...)`'s."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._loss: OutputLoss | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        self.close()  # a watch left open by an earlier train() that raised
        tap = OutputLoss(model)
        self._start(model, _torch_optimizer(optimizer), getattr(optimizer, "scaler", None))
        tap.attach()
        self._loss = tap
        atexit.register(self.close)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watch is None or self._loss is None:
            return
        loss = self._loss.take()
        if loss is None:
            self.close()
            raise UserError(NO_LOSS)
        self.watch.step(loss)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stop()
        self._finish()

    def close(self) -> None:
        """Close a watch that training left open (module docstring): the report of the steps
        measured, without the gate. Nothing happens when no watch is open."""
        self._stop()
        self._abandon(RuntimeError("training ended without on_train_end"))

    def _stop(self) -> None:
        atexit.unregister(self.close)
        tap, self._loss = self._loss, None
        if tap is not None:
            tap.detach()


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer that steps: Accelerate's AcceleratedOptimizer holds it as `.optimizer`
    and steps it, so hooks on the wrapper would never run."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
