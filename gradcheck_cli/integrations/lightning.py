"""The training watch as a Lightning callback (extra `.[lightning]`).

    from gradcheck_cli.integrations.lightning import GradcheckCallback
    trainer = lightning.pytorch.Trainer(max_steps=1000, callbacks=[GradcheckCallback(every=50)])
    trainer.fit(module, loader)          # the report is written when training ends

When training starts (`on_train_start`: the optimizers exist, the model is on its device) the
callback starts `gradcheck_cli.watch(pl_module, optimizer, ...)` with the module's one optimizer.
With several optimizers (each stepping some of the layers) it is given none: a ratio |Δw| / |w|
over one optimizer's step would read 0 for the layers the others step, so the report has no
update/weight ratios then; the gradient norms are read after every backward whatever optimizer
it serves (the last backward of a batch wins), and NaN/Inf is still caught before the update
(below).

One `w.step(loss)` per training batch that ended with an optimizer step (Lightning's
`trainer.global_step` moved): with `accumulate_grad_batches=k` that is every k-th batch, and in
manual optimization every batch in which the module stepped an optimizer. The loss is the one
`training_step` returned for the step's last batch: `outputs["loss"]` (which Lightning divides by
`accumulate_grad_batches` before calling back; the callback multiplies it back), and in manual
optimization the tensor, or the dict's "loss", that `training_step` returns: a manual module that
returns no loss stops at its first step with a UserError saying so.

Lightning runs the backward inside `optimizer.step(closure)`, after the optimizer's step
pre-hook, so `on_before_optimizer_step` (after the backward, before Lightning's gradient clipping
and before the update) is where the callback has the watch look for NaN/Inf: the norms are the
pre-clip ones and a NaN is caught before the update writes it into the weights.

The watch is closed, and its report written, on `on_train_end`, and on `on_exception` (an error
in training, or Ctrl-C, which Lightning reports to callbacks): the report then holds the steps
measured so far and `fail_on` is not applied; Lightning re-raises the error (on Ctrl-C it exits
with status 1). With `fail_on`, a matching finding at the end raises `WatchGateFailed` out of
`trainer.fit`. Only rank 0 writes. Imports `lightning.pytorch`, or the older standalone
`pytorch_lightning` when `lightning` is not installed.

Under `precision="16-mixed"` the precision plugin's GradScaler is given to the watch (`scaler=`):
the norms are the unscaled ones and the steps the scaler skips on an overflow are counted in the
report's config ("skipped_steps"), not reported as nonfinite; Lightning runs the scaler's step
after `on_before_optimizer_step`, so the NaN/Inf check then waits for the step's end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradcheck_cli.errors import UserError
from gradcheck_cli.integrations.holder import WatchHolder

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - only where the standalone package is all there is
    try:
        from pytorch_lightning import Callback  # type: ignore[assignment]
    except ImportError as missing:
        raise ImportError("gradcheck's Lightning callback needs Lightning: pip install 'gradcheck[lightning]'") \
            from missing


class GradcheckCallback(WatchHolder, Callback):  # type: ignore[misc]
    """Watch a Lightning training run (module docstring); the options are `watch(...)`'s."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._global_step = 0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._abandon(RuntimeError("a new training run started"))  # a watch left from an earlier fit
        optimizers = list(trainer.optimizers)
        self._start(pl_module, optimizers[0] if len(optimizers) == 1 else None, _scaler(trainer))
        self._global_step = trainer.global_step

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.watch is not None:
            self.watch.check_gradients()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.watch is None or trainer.global_step == self._global_step:
            return  # accumulating, or a batch whose training_step skipped the optimizer step
        self._global_step = trainer.global_step
        self.watch.step(_step_loss(outputs, pl_module.automatic_optimization, trainer.accumulate_grad_batches))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._abandon(exception)


def _scaler(trainer: Any) -> Any:
    """The GradScaler of `precision="16-mixed"` (the precision plugin's `scaler`; None under other
    precisions, bf16 included, which need none): the watch divides the norms by its scale and
    counts its skipped overflow steps (measure/watch_scaler.py)."""
    plugin = getattr(trainer, "precision_plugin", None) or getattr(getattr(trainer, "strategy", None),
                                                                   "precision_plugin", None)
    return getattr(plugin, "scaler", None)


def _step_loss(outputs: Any, automatic: bool, accumulate: int) -> Any:
    """The loss `training_step` returned for the step's last batch (module docstring)."""
    loss: Any = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not hasattr(loss, "detach"):
        raise UserError("gradcheck's Lightning callback needs the loss: return it from training_step "
                        "(a tensor or a dict with 'loss') in manual optimization")
    loss = loss.detach()
    return loss * accumulate if automatic and accumulate != 1 else loss
