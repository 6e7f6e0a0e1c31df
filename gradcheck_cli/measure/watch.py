"""The training watch's engine: per-step gradient statistics of the user's own loop.

    engine = WatchEngine(model, optimizer, every=50, sample_every=0, on_block=..., on_event=...)
    engine.attach()
    ... the user's loop: forward, backward, (clip), optimizer.step(), zero_grad(), engine.step(loss)
    engine.detach()                       # flushes the last rows, removes every hook

What it reads, and when (docs/architecture.md, the watch):
* gradients: a hook on each trainable parameter; the first to fire in a backward queues a
  callback that runs when the backward has finished and every .grad is accumulated; it takes
  each layer's squared gradient norm there, on the device. That is before the
  optimizer step and before any clip_grad_norm_ in the loop (the clip comes after backward
  returns). With gradient accumulation the last backward of the step wins: its .grad holds the
  sum of the micro-batches. A torch.autograd.grad call also ends in the callback; it reads .grad.
* non-finite values: one read per backward, at its end: whether every gradient norm is finite
  (and whether each float32 norm is in the range where it is exact; checked_layer_sq). It is the
  only per-step host read, and it is what lets the first NaN/Inf be caught BEFORE the optimizer
  writes it into the weights: the optimizer's step pre-hook (step(), when no optimizer was given)
  replays the step's batch (watch_replay.py) with the weights that produced it. On a GPU the
  read is a sync per step; it cannot move to the flush without giving that up: the host must know
  before optimizer.step() whether to replay, and afterwards the weights are gone (keeping a copy
  of them per step would cost more). Loops that log loss.item() or use GradScaler sync anyway.
* the update/weight ratio |Δw| / |w| of the user's own optimizer: a copy of the weights in the
  step pre-hook, the update subtracted into it in the post-hook (no second weight-sized buffer);
  three passes over the weights, so it is taken on every UPDATE_EVERY-th step only (steps 0, 10,
  20, ...); the other rows are NaN. The copy is made anew each time rather than kept: a kept one
  would hold the weights' size through every forward and backward, the peak (bench/README.md).
* the loss, from step(loss); activation statistics from the MeasurementSession, attached only for
  the forward of every `sample_every`-th step (0: never). Step 0's gradients always go to the
  session, so the final report has the scan's per-layer picture of the start of training.
* with fp16 AMP (`scaler=`, a torch.amp.GradScaler): the gradients read at the end of the backward
  are scaled by the loss scale; the norms are divided by it on the device, and the scaler's own
  overflow steps (which it skips) are counted, not reported as non-finite (watch_scaler.py).
Rows go into a device ring (watch_ring.py) and come over in one host transfer per `every` steps,
and at once after the first non-finite step. Nothing per step is kept beyond the ring.
Under torch.distributed (measure/distributed.py) the blocks are reduced across ranks, flushes
happen only at the `every` boundaries (collectives need every rank), and the read at the end of
a backward waits for DDP's all-reduce / FSDP's reduce-scatter.
The model and optimizer run exactly as without the watch: the hooks read and never write, and no
random number is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from gradcheck_cli.measure.distributed import (
    Candidate,
    RankReduction,
    alone,
    local_tensor,
    own_nonfinite_loss,
    unwrap,
)
from gradcheck_cli.measure.norms import _dense_values
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.measure.series import NonfiniteEvent, StepBlock
from gradcheck_cli.measure.session import MeasurementSession
from gradcheck_cli.measure.watch_replay import LastBatch, replay_last_batch
from gradcheck_cli.measure.watch_ring import Reducer, StepRing
from gradcheck_cli.measure.watch_scaler import ScalerReading

UPDATE_EVERY = 10
"""The update/weight ratio is measured on steps 0, UPDATE_EVERY, 2 * UPDATE_EVERY, ... (module
docstring: a weight copy per step would cost more than the rest of the watch)."""


class WatchEngine:
    """Hooks on the user's model and optimizer, a device ring, a flush per `every` steps."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, every: int,
                 sample_every: int, on_block: Callable[[StepBlock], None],
                 on_event: Callable[[NonfiniteEvent], None], reduce: Reducer | None = None,
                 scaler: Any = None) -> None:
        model = unwrap(model)  # DDP: the user's module (its names; a replay without collectives)
        self.model, self.optimizer = model, optimizer
        self.session = MeasurementSession(model)
        self.names = [acc.name for acc in self.session.layers]
        self.trainable = [p for p in self.session.trainable if p.requires_grad]
        self._owner = self.session.owner
        self.every, self.sample_every = every, sample_every
        self.ring = StepRing(every, len(self.names), self._owner.device, updates=optimizer is not None)
        self.on_block, self.on_event, self.reduce = on_block, on_event, reduce
        self.steps = 0
        self.scaler = ScalerReading(scaler) if scaler is not None else None
        """fp16 AMP (watch_scaler.py): norms divided by the loss scale, overflow steps skipped."""
        self._resample = False
        self.rank = _rank()
        self.ranks = reduce if isinstance(reduce, RankReduction) else None
        """Under torch.distributed (measure/distributed.py): flushes in lock-step only."""
        self._reported = False
        self._alone = False
        """Detached after an exception: the report is this rank's own, read without collectives."""
        self.event: NonfiniteEvent | None = None
        self._handles: list[Any] = []
        self._pending: torch.Tensor | None = None
        self._bad = False
        """The last backward's gradients held NaN/Inf (not yet counted)."""
        self._task = -1
        self._flush_now = False
        self._replaying = False
        self._last_batch: LastBatch | None = None
        self._sampled_grads: list[torch.Tensor | None] | None = None
        self._weights_before: list[torch.Tensor] | None = None

    # -- attaching ------------------------------------------------------------------------------

    def attach(self) -> None:
        handles: list[Any] = [self.model.register_forward_pre_hook(self._keep_batch, with_kwargs=True)]
        # One hook per trainable parameter, acting once per backward (torch's multi-grad hook in
        # mode "any" does the same but keeps an entry per backward forever: memory would grow).
        handles += [p.register_hook(self._on_gradient) for p in self.trainable]
        if self.ranks is not None and self.ranks.sharded:
            # FSDP2 sets the sharded .grad itself (no hook on them fires): the model's outputs
            # start the backward instead.
            handles.append(self.model.register_forward_hook(self._hook_outputs))
        if self.optimizer is not None:
            handles.append(self.optimizer.register_step_pre_hook(self._before_step))
            handles.append(self.optimizer.register_step_post_hook(self._after_step))
        self._handles = handles
        if self.sample_every > 0:
            self.session.attach()

    def detach(self, lockstep: bool = True) -> None:
        """Flush what is left and remove every hook (also the session's). `lockstep=False` (an
        exception in the user's loop): this rank's own numbers, without any collective."""
        if not lockstep and self.ranks is not None:
            self.reduce = self.ranks = None
            self._alone = True
            self._flush_now = self.event is not None and not self._reported
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self.session.detach()
        self._last_batch = None
        self._flush()

    # -- hooks ----------------------------------------------------------------------------------

    def _keep_batch(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A reference to the inputs of the last forward (not a copy) and the RNG state it saw."""
        if not self._replaying:
            self._last_batch = LastBatch.of(args, kwargs, self._owner.device)

    def _on_gradient(self, grad: torch.Tensor) -> None:
        task = torch._C._current_graph_task_id()
        if task != self._task and not self._replaying:
            self._task = task  # the first gradient of this backward: read them all at its end
            read = self._after_backward if self.ranks is None else self._after_final_callbacks
            torch.autograd.Variable._execution_engine.queue_callback(read)

    def _after_final_callbacks(self) -> None:
        """Under torch.distributed, read after the callbacks queued during the backward: DDP's
        all-reduce and FSDP's reduce-scatter write .grad in theirs (the engine runs a callback
        queued by a callback, after the others)."""
        torch.autograd.Variable._execution_engine.queue_callback(self._after_backward)

    def _hook_outputs(self, module: nn.Module, args: Any, output: Any) -> None:
        for tensor in _grad_tensors(output):
            tensor.register_hook(self._on_gradient)

    def _after_backward(self) -> None:
        """Every .grad of this backward is accumulated: take the layers' squared norms."""
        grads = [p.grad for p in self.trainable]
        given = [g for g in grads if g is not None]
        owner = self._owner if len(given) == len(grads) else \
            self._owner[[k for k, g in enumerate(grads) if g is not None]]
        self._pending, finite = checked_layer_sq(given, owner, len(self.names), self._owner.device)
        self._bad = not finite
        if self.scaler is not None:  # the true norms: divided by the loss scale (watch_scaler.py)
            self._pending = self.scaler.unscale_sq(self._pending)
            if not finite:
                self.scaler.note_overflow(self._nonfinite_counts())  # zero_grad may come before step(loss)
        if self._sampling():
            # The session reads them at step(loss), after zero_grad may have cleared them in place.
            self._sampled_grads = [None if g is None else g.detach().clone() for g in grads]
            if self.scaler is not None:
                self.scaler.unscale_(self._sampled_grads)

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._check_finite()
        if self.steps % UPDATE_EVERY == 0:
            self._weights_before = [local_tensor(p.detach()).clone() for p in self.trainable]

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        before, self._weights_before = self._weights_before, None
        if before is None:
            return
        after = [local_tensor(p.detach()) for p in self.trainable]
        n, device = len(self.names), self._owner.device
        weight_sq = checked_layer_sq(before, self._owner, n, device)[0]
        # The copy becomes w_before - w_after in place (the same norm as the update): no second
        # buffer the size of the weights (on GPT-2-small, 0.5 GB and a pass; bench/README.md).
        torch._foreach_sub_(before, after)
        delta_sq = checked_layer_sq(before, self._owner, n, device)[0]
        if self.ranks is not None:  # FSDP2: the shards' sums of squares add up first
            delta_sq, weight_sq = self.ranks.sum_shards(delta_sq, weight_sq)
        self.ring.write_update(torch.where(weight_sq > 0, (delta_sq / weight_sq).sqrt(),
                                           torch.full_like(weight_sq, math.nan)))

    # -- per step -------------------------------------------------------------------------------

    def step(self, loss: torch.Tensor | float) -> None:
        """The end of one optimizer step: write its row; flush every `every` steps."""
        if self.scaler is not None:
            self._scaler_verdict(loss)
        self._check_finite()
        self.ring.write(loss, self._pending)
        if self._sampled_grads is not None:
            with torch.no_grad():
                self.session.on_batch(loss, self._sampled_grads)
            self._sampled_grads = None
            self._resample = False
        if self.sample_every > 0 and self.steps % self.sample_every == 0:
            self.session.detach()
        self._pending = None
        self.ring.advance()
        self.steps += 1
        if self.ring.full or self._flush_now:
            self._flush()
        if self.sample_every > 0 and self.steps % self.sample_every == 0 and self._handles:
            self.session.attach()  # the next step's forward is a sampled one

    def _scaler_verdict(self, loss: torch.Tensor | float) -> None:
        """With a GradScaler: non-finite gradients from an overflow of the scaling are a skipped
        step (counted; no finding, no row, no sample), anything else stays (watch_scaler.py)."""
        assert self.scaler is not None
        if not self._bad:
            self.scaler.stepped()
        elif self.scaler.skipped_overflow(loss):
            self._bad = False
            self._pending = None
            self._resample = self._resample or self._sampled_grads is not None
            self._sampled_grads = None  # step 0's picture comes from the next step that is not skipped

    def _sampling(self) -> bool:
        return self.steps == 0 or self._resample or (self.sample_every > 0 and self.steps % self.sample_every == 0)

    def check_finite(self) -> None:
        """The step pre-hook's NaN/Inf check, for a backward run inside optimizer.step(closure).
        With a GradScaler it waits for step(loss): the scaler skips an overflowing step itself."""
        if self.scaler is None:
            self._check_finite()

    def _check_finite(self) -> None:
        """After a backward with NaN/Inf gradients: count them per layer, and on the first one
        replay the step's batch (before the optimizer changes the weights, from the pre-hook)."""
        if not self._bad:
            return
        self._bad = False  # handled: the next backward sets it again
        held = self.scaler.take_counts() if self.scaler is not None else None
        counts = held if held is not None else self._nonfinite_counts()
        self.ring.nonfinite.add_(counts)
        if self.event is None:
            self.event = self._nonfinite_event(counts.tolist())
            self._flush_now = self.ranks is None  # in lock-step: exchanged at the next flush

    def _nonfinite_counts(self) -> torch.Tensor:
        """NaN/Inf gradient elements per layer, on the device (read with the block)."""
        given = [k for k, p in enumerate(self.trainable) if p.grad is not None]
        counts = torch.zeros(len(self.names), dtype=torch.float64, device=self._owner.device)
        if given:
            per_param = [(~torch.isfinite(_dense_values(_grad(self.trainable[k])))).sum() for k in given]
            counts.index_add_(0, self._owner[given], torch.stack(per_param).to(counts))
        return counts

    def _nonfinite_event(self, counts: list[float]) -> NonfiniteEvent:
        # The layer closest to the loss: the last one in the model's registration order, the
        # order backward usually meets them in reverse (the replay names the op precisely).
        bad = [li for li in range(len(self.names)) if counts[li] > 0]
        layer = self.names[bad[-1]] if bad else None
        origin = None
        if self._last_batch is not None and not (self.ranks is not None and self.ranks.sharded):
            # (not under FSDP2: its forward gathers the shards, a collective one rank cannot run)
            self._replaying = True
            try:
                origin = replay_last_batch(self.session, self._last_batch)
            finally:
                self._replaying = False
        return NonfiniteEvent(step=self.steps, rank=self.rank, layer=layer,
                              origin_module=origin.module if origin else None,
                              origin_op=origin.op if origin else None,
                              direction=origin.direction if origin else None)

    def _flush(self) -> None:
        weight_sq = checked_layer_sq(self.trainable, self._owner, len(self.names), self._owner.device,
                                     check=False)[0]
        winner = self._exchange_event() if self.ranks is not None else None
        block = self.ring.flush(weight_sq, self.reduce)
        if block is not None and self.ranks is not None and self.ranks.spread is not None:
            block = replace(block, replicas=self.ranks.spread)
        if block is not None:
            self.on_block(block)
            if self.ranks is None:
                self._loss_event(block)
        if winner is not None:  # after its block (the series keeps the step it names)
            self.on_event(winner)
        if self._flush_now and self.event is not None:
            self.on_event(self.event)
        self._flush_now = False

    def _exchange_event(self) -> NonfiniteEvent | None:
        """Under torch.distributed, at every flush until one is found (before the ring's rows are
        reduced: this rank's own losses): every rank's first non-finite event (or its first
        non-finite loss) -> the earliest over ranks (measure/distributed.py), on every rank."""
        assert self.ranks is not None
        if self._reported:
            return None
        losses = self.ring.loss[:self.ring.row].tolist() if self.ring.row else []
        first = self.ring.first_step
        event = self.event
        if event is None:
            bad = [first + row for row, value in enumerate(losses) if not math.isfinite(value)]
            event = NonfiniteEvent(step=bad[0], rank=self.rank, layer=None) if bad else None
        mine = None if event is None else Candidate(
            event, event.origin_module is not None or own_nonfinite_loss(losses, first, event.step))
        winner = self.ranks.first_event(mine)
        if winner is not None:
            self._reported = True
        return winner

    def _loss_event(self, block: StepBlock) -> None:
        """A non-finite loss whose gradients stayed finite (no per-step read saw it): the event
        comes with the block that holds it, without a replay (the weights moved on since)."""
        if self.event is not None:
            return
        bad = [step for step, value in zip(block.steps, block.loss) if not math.isfinite(value)]
        if bad:
            self.event = NonfiniteEvent(step=bad[0], rank=self.rank, layer=None)
            self.on_event(self.event)

    # -- reading --------------------------------------------------------------------------------

    def measurements(self) -> Measurements:
        """The session's measurements: step 0 and the sampled steps (the scan's per-layer view)."""
        with alone(self._alone):
            measured = self.session.measurements()
        return replace(measured, loss_kind="watch", loss_trace=measured.losses)


_TRUSTED = (1e-12, 1e18)
"""A tensor norm taken in float32 is exact enough inside this range (norms.py's fast range);
outside it (tiny gradients whose squares underflow, huge ones) it is taken again in float64."""


def checked_layer_sq(tensors: Sequence[torch.Tensor], owner: torch.Tensor, n_layers: int,
                     device: torch.device, check: bool = True) -> tuple[torch.Tensor, bool]:
    """Squared L2 norm per layer (float64, on the device) and whether all were finite, with ONE
    host read: the norms are taken in float32 by one fused call (float64 for float64 tensors),
    and the few outside _TRUSTED are taken again in float64 (a float64 pass over every gradient
    costs 5x the float32 one on a CPU, so it is kept for those). `check=False`: no read, the
    float32 norms as they are (the weights at a flush: a weight norm is far inside the range), and
    the flag says nothing."""
    per_layer = torch.zeros(n_layers, dtype=torch.float64, device=device)
    if not tensors:
        return per_layer, True
    values = _norm_inputs(tensors)
    wide = any(v.dtype == torch.float64 for v in values)
    with torch.no_grad():  # (gradients of a create_graph backward require grad: no graph here)
        norms = torch.stack(torch._foreach_norm(values, 2, dtype=torch.float64 if wide else torch.float32))
        norms = norms.to(device, torch.float64)
        if not check:
            return per_layer.index_add_(0, owner.to(device), norms.square()), True
        outside = (norms < _TRUSTED[0]) | (norms > _TRUSTED[1])
        finite, trusted = torch.stack([torch.isfinite(norms).all(), ~outside.any()]).tolist()
        if finite and not trusted and not wide:
            redo = outside.nonzero().flatten().tolist()
            norms[redo] = torch.stack(torch._foreach_norm([values[k] for k in redo], 2,
                                                          dtype=torch.float64)).to(norms)
        per_layer.index_add_(0, owner.to(device), norms.square())
    return per_layer, bool(finite)


_PLAIN_TYPES = (torch.Tensor, nn.Parameter)


def _norm_inputs(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors as torch._foreach_norm takes them (read under no_grad): plain dense tensors as
    they are, the usual case (a detach() and two checks per tensor cost more than the norms
    themselves on a 50-tensor model; bench/README.md), else a DTensor's local shard and a sparse
    tensor's values."""
    if all(type(t) in _PLAIN_TYPES and t.layout == torch.strided for t in tensors):
        return list(tensors)
    return [_dense_values(local_tensor(t.detach())) for t in tensors]


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None
    return local_tensor(p.grad.detach())


def _grad_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, a tuple/list/dict of them, a ModelOutput) that
    a backward can start from."""
    if isinstance(output, torch.Tensor):
        return [output] if output.requires_grad else []
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else ()
    return [t for v in values for t in _grad_tensors(v)]


def _rank() -> int:
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0

