"""MeasurementSession: measure a model through whatever passes through it, then leave it as it was.

    session = MeasurementSession(model)            # nothing attached yet
    with session:                                  # attach(); detach() on exit, also on error
        for x, y in batches:
            loss = loss_fn(model(x), y)
            loss.backward()
            session.on_batch(loss)                 # reads each layer's p.grad (after backward)
            optimizer.step()
            optimizer.zero_grad()
    measurements = session.measurements()          # records.Measurements: plain numbers
    report = analyse(measurements, ScanConfig())   # analyse/pipeline.py

While attached, every forward of the model is measured (hooks.py): each layer's output sum of
squares and element count, the gradient arriving at its output (sum of squares, count), per-step
gradients of recurrent layers, activation saturation and dead units, residual adds, attention score
projections, hand-written recurrent cells, and whether a module output turned NaN/Inf. A batch ends
with `on_batch(loss)`, after the backward: it reads the gradient of each parameter that requires
one, from `p.grad` (so zero them between batches, as a training loop does, or each batch sees the
sum), or from `grads=`, the gradients of `session.trainable` computed by the caller (the scan takes
them with torch.autograd.grad so that the user's .grad stays untouched; `session.leaves` are the
extra tensors whose gradients feed the recurrent step statistics). Per layer it adds the batch's
squared gradient norm and counts NaN/Inf gradient elements. Several forwards before one on_batch
(a GAN's two passes) count as one batch.

The session records facts, not judgements: sums of squares, counts, maxima, flags (statistics.py),
which `Measurements.merge` combines across batches, sessions, steps and processes. `paused()`
stops measuring for forwards that are no probe (the scan's optimizer steps and NaN replays).
`detach()` removes every hook handle and leaves the function mode; the parameters, buffers and
.grad are the caller's (the scan also snapshots and restores them: restore.py).

Reads to the host do not grow with the number of layers (on an accelerator each is a sync): the
hooks' norms are checked once per forward and once per batch (norms.DeferredSquares; no read off
the CPU), the parameters' gradient norms once per batch (norms.squared_norms), then one transfer
brings the loss, every layer's squared gradient norm and the output NaN/Inf flags; reading the
measurements is one more (finish.py).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import TracebackType

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradcheck_cli.measure.accumulators import BatchTrace, ForwardTrace, HookState, LayerAccumulator, Watchers
from gradcheck_cli.measure.activation_watch import ActivationSite, CompositeActivations, channels_first_layer
from gradcheck_cli.measure.distributed import add_shards
from gradcheck_cli.measure.finish import layer_measurements, still_lazy
from gradcheck_cli.measure.headroom import HeadroomMeter
from gradcheck_cli.measure.hooks import composite_candidates, leave_watch, register_hooks
from gradcheck_cli.measure.norms import squared_norms
from gradcheck_cli.measure.records import LayerMeasurement, Measurements
from gradcheck_cli.measure.shard_scan import count_nonfinite_over_shards


@dataclass(frozen=True)
class BatchFacts:
    """What one batch showed, in plain numbers (the scan decides on a NaN replay from them)."""

    loss: float
    outputs_nonfinite: bool
    """A module output of the batch's forward held NaN/Inf."""
    grads_finite: bool
    """Every layer's gradient norm was finite."""

    @property
    def forward_nonfinite(self) -> bool:
        """A module output or the loss held NaN/Inf."""
        return self.outputs_nonfinite or not math.isfinite(self.loss)


class MeasurementSession:
    """Attaches to a model, measures what passes through it, detaches (module docstring)."""

    def __init__(self, model: nn.Module, device: torch.device | str | None = None) -> None:
        self.model = model
        self.params, owners = own_params(model)
        self.layers = [LayerAccumulator(name, module, idxs) for name, module, idxs in owners]
        trainable_idx = [i for i, p in enumerate(self.params) if p.requires_grad]
        self.trainable: list[nn.Parameter] = [self.params[i] for i in trainable_idx]
        """The parameters that get gradients, in the order on_batch's `grads` must follow."""
        layer_of_param = {pi: li for li, layer in enumerate(self.layers) for pi in layer.param_indices}
        self._trainable_layers = {layer_of_param[pi] for pi in trainable_idx}
        self.owner_of = [layer_of_param[pi] for pi in trainable_idx]
        """The layer of each trainable parameter."""
        if device is None:
            device = self.params[0].device if self.params else torch.device("cpu")
        self.owner = torch.tensor(self.owner_of, dtype=torch.long, device=device)
        self.state = HookState(Watchers(
            channels_first={acc.name: channels_first_layer(acc.module) for acc in self.layers},
            composites=CompositeActivations(composite_candidates(model))))
        self.state.headroom = HeadroomMeter([acc.name for acc in self.layers], device)
        self._handles: list[RemovableHandle] = []
        self._losses: list[float] = []
        self._first_grad_norm: float | None = None
        self._batches = 0

    # -- attaching ------------------------------------------------------------------------------

    def attach(self) -> MeasurementSession:
        """Register the hooks (hooks.py); measuring starts with the next forward."""
        if not self._handles:
            self._handles = register_hooks(self.model, self.layers, self.state)
        return self

    def detach(self) -> None:
        """Remove every hook handle and leave the function mode: the model is as it was attached
        (its weights, buffers and .grad are whatever the caller's own steps made them)."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        leave_watch(self.state)

    def __enter__(self) -> MeasurementSession:
        return self.attach()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.detach()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside are not measured (the call stack is still followed, for a replay)."""
        before, self.state.active = self.state.active, False
        try:
            yield
        finally:
            self.state.active = before

    # -- per batch ------------------------------------------------------------------------------

    @property
    def leaves(self) -> list[torch.Tensor]:
        """Tensors the hooks added to this batch's graph; pass them to autograd with the trainable
        parameters to feed the recurrent step statistics (loss.backward() reaches them anyway)."""
        return self.state.batch.leaves

    def outputs_nonfinite(self) -> bool:
        """Whether a module output of the current batch's forwards held NaN/Inf."""
        self.state.batch.squares.flush()
        squares = self.state.batch.output_sq
        return bool(squares) and not bool(torch.isfinite(torch.stack(squares)).all())

    def on_batch(self, loss: torch.Tensor | float,
                 grads: Sequence[torch.Tensor | None] | None = None) -> BatchFacts:
        """End a batch: read the gradients (`grads`, one per `trainable` parameter, None for none;
        default: each parameter's .grad) and add them to the statistics."""
        if grads is None:
            grads = [p.grad for p in self.trainable]
        grads = list(grads)[:len(self.trainable)]
        self.state.watchers.cells.end_forward()  # every step hook of this batch has fired
        self.state.batch.squares.flush()  # the output gradients' norms
        squares = self._layer_grad_sq(grads)
        trace = self.state.batch
        flags = ~torch.isfinite(torch.stack(trace.output_sq)) if trace.output_sq else torch.zeros(0)
        loss_value = loss.detach().double().reshape(1) if isinstance(loss, torch.Tensor) else \
            torch.tensor([float(loss)], dtype=torch.float64)
        # One host transfer per batch: the loss, every layer's squared gradient norm, the flags.
        host = torch.cat([loss_value.to(squares.device), squares, flags.double().to(squares.device)]).tolist()
        layer_sq = host[1:1 + len(self.layers)]
        norms = [math.sqrt(v) if math.isfinite(v) else v for v in layer_sq]
        if self._first_grad_norm is None:
            self._first_grad_norm = math.sqrt(sum(v * v for v in norms))
        for li, (layer, value) in enumerate(zip(self.layers, layer_sq)):
            layer.batch_grad_sq.append(value)
            if not math.isfinite(value):
                layer.nonfinite_grads += self._count_nonfinite(li, grads)
        self._losses.append(host[0])
        self._batches += 1
        # Free this batch's outputs, leaves and graph references before the next forward.
        self.state.batch = BatchTrace()
        self.state.forward.last_measured = (None, None)
        return BatchFacts(host[0], any(host[1 + len(self.layers):]), all(map(math.isfinite, norms)))

    def on_failed_forward(self) -> None:
        """A batch whose forward raised (on a NaN/Inf, say): its loss is NaN, no gradient."""
        self._losses.append(math.nan)
        self.state.batch = BatchTrace()
        self.state.forward = ForwardTrace()

    def _layer_grad_sq(self, grads: list[torch.Tensor | None]) -> torch.Tensor:
        """Squared gradient norm per layer as one float64 device tensor (no host sync)."""
        given = [k for k, g in enumerate(grads) if g is not None]
        for k in given:
            self.layers[self.owner_of[k]].received = True
        return group_sq([g for g in grads if g is not None], self.owner[given], len(self.layers))

    def _count_nonfinite(self, li: int, grads: list[torch.Tensor | None]) -> int:
        return count_nonfinite_over_shards([g for k, g in enumerate(grads)  # FSDP2: every rank's shard
                                            if g is not None and self.owner_of[k] == li])

    # -- reading --------------------------------------------------------------------------------

    def layer_measurements(self, watchers: bool = True) -> dict[int, LayerMeasurement]:
        """Each measured layer's record so far, by its index in `layers` (still-lazy layers, never
        called, are left out: they have nothing to measure). `watchers=False` leaves out what the
        watchers add (activation counts, attention scores, cell loops): the weights and sums only."""
        self.state.batch.squares.flush()  # a caller that never ended its last batch
        live = [li for li, layer in enumerate(self.layers) if not still_lazy(layer, self.params)]
        first_site: dict[str, ActivationSite] = {}
        for site in self.state.watchers.sites.values():  # the first activation each layer feeds
            first_site.setdefault(site.producer, site)
        entries = [(self.layers[li], li in self._trainable_layers,
                    first_site.get(self.layers[li].name) if watchers else None) for li in live]
        records = layer_measurements(entries, self.params)  # one host read for all (finish.py)
        if not watchers:
            return dict(zip(live, records))
        found = self.state.watchers
        return {li: replace(record, attention_scores=self.layers[li].name in found.scores.layers,
                            **found.cells.layer_fields(self.layers[li].name, self.layers[li].module))
                for li, record in zip(live, records)}

    def measurements(self, layers: dict[int, LayerMeasurement] | None = None) -> Measurements:
        """What the session measured so far, in plain numbers (records.Measurements); `layers`:
        the per-layer records when the caller already took (and amended) them."""
        records = self.layer_measurements() if layers is None else layers
        return Measurements(
            layers=tuple(records.values()),
            losses=tuple(self._losses),
            module_types=tuple(type(m).__name__ for m in self.model.modules() if m is not self.model),
            residual_modules=tuple(sorted(self.state.watchers.residual_in)),
            first_grad_norm=self._first_grad_norm,
            batches=self._batches,
        )


@contextmanager
def collector_paused() -> Iterator[None]:
    """The garbage collector off while the probe runs, then put back exactly as it was.

    A probe allocates many small objects per module call (hook closures' records, autograd graph
    nodes, tensors), which trips the collector's generation-0 threshold over and over: 150+
    collections per scan, each walking every tracked object. What the probe leaves is freed by
    reference counting; cycles wait for the next collection after the probe.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def own_params(model: nn.Module) -> tuple[list[nn.Parameter], list[tuple[str, nn.Module, list[int]]]]:
    """Unique parameters, and per layer the indices of the parameters it owns.

    A tied parameter belongs to the first module (in named_modules order) that owns it, so it is
    counted once; a module reused several times appears once (named_modules deduplicates).
    """
    params: list[nn.Parameter] = []
    index_of: dict[int, int] = {}
    owners = []
    for name, module in model.named_modules():
        idxs = []
        for p in module._parameters.values():
            if p is None or id(p) in index_of:
                continue
            index_of[id(p)] = len(params)
            idxs.append(len(params))
            params.append(p)
        if idxs:
            owners.append((name or "(root)", module, idxs))
    return params, owners


def group_sq(tensors: list[torch.Tensor], owner: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Squared L2 norm per layer of per-parameter tensors (owner[k]: the layer of tensors[k]), in
    float64 and exact at any magnitude, for any dtype and for sparse gradients (norms.py)."""
    per_layer = torch.zeros(n_layers, dtype=torch.float64, device=owner.device)
    if tensors:
        per_layer.index_add_(0, owner, squared_norms(tensors, owner.device))
    return add_shards(per_layer, tensors)  # FSDP2: the shards' squares add across ranks
