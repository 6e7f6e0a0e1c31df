"""The scan's probe: seeded batches through a MeasurementSession, returned as plain numbers.

For each of config.batches batches: seed, draw the batch, run the model and the loss with the
session attached (session.py, hooks.py), take the gradients with torch.autograd.grad (backward.py:
the user's .grad stays untouched) and hand them to the session. The first batch whose forward,
loss or gradients turn NaN/Inf is replayed to find where they were born (replay.py); with --steps,
optimizer steps are taken between batches (steps.py). Every hook handle is removed in `finally`,
and the model is restored (restore.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.backward import gradients
from gradcheck_cli.measure.finish import still_lazy
from gradcheck_cli.measure.headroom import HeadroomMeter
from gradcheck_cli.measure.precision import MAX_BACKOFFS, LossScaler, autocast
from gradcheck_cli.measure.records import LayerMeasurement, Measurements, NonfiniteOrigin
from gradcheck_cli.measure.replay import nonfinite_weights, replay_origin
from gradcheck_cli.measure.restore import restore_snapshot, take_snapshot
from gradcheck_cli.measure.session import MeasurementSession, collector_paused
from gradcheck_cli.measure.step_series import StepRows
from gradcheck_cli.measure.steps import (
    largest_first_update,
    largest_updates,
    make_optimizer,
    max_update_ratios,
    take_steps,
    weight_squares,
)
from gradcheck_cli.target.batches import batch_has_nonfinite, call_model, move_to, split_batch
from gradcheck_cli.target.forward_error import forward_failure
from gradcheck_cli.target.guards import is_out_of_memory
from gradcheck_cli.target.isolation import RngStates, capture_rng, restore_rng, seed_all
from gradcheck_cli.target.losses import compute_loss

StageCallback = Callable[[str, int, int], None]
"""on_stage(stage, batch, batches): called as each stage starts; `batch` counts from 1 (0 outside
the batch loop). Used by the CLI for the progress bar and to name the stage a timeout stopped."""


def _no_stage(stage: str, batch: int, batches: int) -> None:
    return None


@dataclass
class _ProbeRun:
    """What the scan's batch loop adds to the session's own measurements."""

    config: ScanConfig
    stage: StageCallback
    optimizer: torch.optim.Optimizer | None
    loss_kind: str = ""
    nonfinite_input: bool = False
    origin: NonfiniteOrigin | None = None
    origin_pending: bool = True
    """Replay only the first failing batch."""
    trace: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    step_rounds: list[tuple[float, ...]] = field(default_factory=list)
    step_rows: StepRows = field(default_factory=StepRows)
    """With --steps: per optimizer step, per layer (step_series.py)."""
    as_built: dict[int, LayerMeasurement] | None = None
    scaler: LossScaler = field(default_factory=lambda: LossScaler(None))


def run_probe(model: nn.Module, make_batch: Callable[[int], Any], loss_fn: Any,
              config: ScanConfig, on_stage: StageCallback | None = None,
              headroom: bool | None = None) -> Measurements:
    """Probe `model` with config.batches batches; the model comes back exactly as it was.

    `headroom`: measure the mixed-precision headroom (headroom.py) on the first batch; None: only
    under --precision bf16/fp16, whose checks read it (analyse/checks/fp16_*.py,
    bf16_stale_update.py). An fp32 report reads none of it, so a default scan does not pay for it
    (it cost 9-17 % of a scan); True on an fp32 probe gives the same numbers as a prediction."""
    stage = on_stage or _no_stage
    snapshot = take_snapshot(model)
    session: MeasurementSession | None = None
    try:
        device = torch.device(config.device)
        model.to(device)
        model.train()
        session = MeasurementSession(model, device)
        if not session.trainable:
            raise UserError(f"{type(model).__name__} has no trainable parameters (all have "
                            "requires_grad=False); nothing to check")
        session.attach()
        measure_headroom = config.precision != "fp32" if headroom is None else headroom
        _headroom(session).active = measure_headroom  # the first batch only (_finish_precision)
        run = _ProbeRun(config, stage, make_optimizer(config, session.trainable) if config.steps > 0 else None,
                        scaler=LossScaler(config.loss_scale))
        with collector_paused():  # no garbage-collector pauses mid-probe (session.py)
            for batch_index in range(config.batches):
                if not _probe_batch(model, make_batch, loss_fn, session, run, batch_index):
                    break
            return _measurements(session, run)
    finally:
        # Announced first: a --timeout clock never interrupts what follows (guards.py).
        stage("restoring the model", 0, config.batches)
        if session is not None:
            session.detach()
        restore_snapshot(snapshot)


def _probe_batch(model: nn.Module, make_batch: Callable[[int], Any], loss_fn: Any,
                 session: MeasurementSession, run: _ProbeRun, batch_index: int) -> bool:
    """One probe batch (and the steps after it); False when the scan ends here."""
    config, stage, number = run.config, run.stage, batch_index + 1
    stage("making the batch", number, config.batches)
    seed_all(config.seed + batch_index)  # torch, CUDA, random and numpy: make_batch may draw from any
    inputs, target = split_batch(make_batch(config.batch_size))
    device = torch.device(config.device)
    inputs, target = move_to(inputs, device), move_to(target, device)
    bad_input = batch_has_nonfinite(inputs, target)
    run.nonfinite_input = run.nonfinite_input or bad_input
    rng = capture_rng()  # so that a replay of this batch sees the same dropout masks (and random/numpy draws)

    def forward() -> torch.Tensor:  # the replay's, the steps' and the loss scale's passes
        return _forward_loss(model, inputs, target, loss_fn, session, config.precision)[0]

    if run.scaler.dynamic:
        stage("finding the loss scale", number, config.batches)
        _settle_scale(forward, session, run.scaler, rng)
    stage("forward pass", number, config.batches)
    try:
        loss, run.loss_kind = _forward_loss(model, inputs, target, loss_fn, session, config.precision)
    except UserError as error:
        # A NaN born in this forward that made a later op or loss_fn raise is a nonfinite
        # finding at its origin, not a user error: the scan ends here with what it measured.
        # Only the user's own errors can be (a UserError wrapping them); never out-of-memory.
        if not run.origin_pending or bad_input or error.__cause__ is None or is_out_of_memory(error.__cause__):
            raise
        raised = replay_origin(session, forward, rng, True, session.outputs_nonfinite())
        if raised is None or raised.raised is None:
            raise
        run.origin, run.origin_pending = raised, False
        session.on_failed_forward()
        run.trace.append(math.nan)
        run.loss_kind = run.loss_kind or ("loss_fn" if loss_fn is not None else "")
        return False
    stage("backward pass", number, config.batches)
    grads = _scaled_gradients(loss, session, run.scaler.scale)
    facts = session.on_batch(loss, grads)
    _finish_precision(session, run, grads)
    run.trace.append(facts.loss)
    if run.origin_pending and not bad_input and (facts.forward_nonfinite or not facts.grads_finite):
        # Data that already holds NaN/Inf is its own origin (nonfinite-input).
        run.origin_pending = False
        stage("finding where the NaN/Inf starts", number, config.batches)
        run.origin = nonfinite_weights(session) or replay_origin(
            session, forward, rng, facts.forward_nonfinite, facts.outputs_nonfinite)
    # No optimizer step with NaN/Inf gradients: it would only write NaN into the weights (the
    # finding is made; torch.amp.GradScaler skips such steps for the same reason), and the next
    # pass on them could make the user's loss_fn raise over values gradcheck's own step produced.
    if run.optimizer is not None and batch_index < config.batches - 1 and facts.grads_finite:
        _steps_after_batch(session, run, forward, grads, facts.loss, batch_index)
    return True


def _steps_after_batch(session: MeasurementSession, run: _ProbeRun, forward: Callable[[], torch.Tensor],
                       grads: tuple[torch.Tensor | None, ...], loss: float, batch_index: int) -> None:
    """--steps: the optimizer steps on this batch, the first with its measured gradients."""
    assert run.optimizer is not None
    config = run.config
    if batch_index == 0:  # the model as built, before the probe's own steps change it
        _refuse_steps_with_unbuilt_lazy(session)
        run.as_built = session.layer_measurements(watchers=False)
    run.stage("optimizer steps", batch_index + 1, config.batches)
    stepped = take_steps(session, forward, run.optimizer, config.steps, grads, run.step_rows,
                         config.clip_grad_norm)
    run.step_losses.extend(stepped[:-1])
    run.trace.extend(stepped[:-1])
    # The loss each step's gradients came from: this batch's, then the loss after each step but
    # the last (that one is only in step_rounds): exactly this round's entries of the trace.
    run.step_rows.losses.extend((loss, *stepped[:-1]))
    run.step_rounds.append((loss, *stepped))


def _forward_loss(model: nn.Module, inputs: Any, target: Any, loss_fn: Any,
                  session: MeasurementSession, precision: str) -> tuple[torch.Tensor, str]:
    """The model and the loss, under autocast for --precision bf16/fp16 (precision.py)."""
    device = session.owner.device
    try:
        with torch.enable_grad(), autocast(device, precision):
            output = call_model(model, inputs)
    except UserError:
        raise
    except Exception as exc:  # the user's forward failed: say where and with which inputs
        failure = forward_failure(model, inputs, exc)  # the module that raised: from the traceback
        if precision != "fp32":  # e.g. nn.LSTM has no fp16 kernel in CPU autocast (oneDNN)
            failure = UserError(f"{failure}; under --precision {precision} (torch.autocast on {device.type}) "
                                f"an op may have no {precision} kernel: try another --precision or --device")
        raise failure from exc
    # enable_grad: a make_batch that switched grad off must not detach the loss
    with torch.enable_grad(), autocast(device, precision):
        return compute_loss(output, target, loss_fn)


def _scaled_gradients(loss: torch.Tensor, session: MeasurementSession,
                      scale: float) -> tuple[torch.Tensor | None, ...]:
    """The trainable gradients (backward.py), the backward run at loss * scale and the gradients
    divided by it again (as GradScaler's unscale_); the headroom hooks unscale theirs (headroom.py)."""
    tensors = session.trainable + session.leaves
    if scale == 1.0:
        return gradients(loss, tensors)[:len(session.trainable)]
    meter = _headroom(session)
    meter.scale = scale
    try:
        grads = gradients(loss * scale, tensors)[:len(session.trainable)]
    finally:
        meter.scale = 1.0
    return tuple(None if g is None else g / scale for g in grads)


def _settle_scale(forward: Callable[[], torch.Tensor], session: MeasurementSession, scaler: LossScaler,
                  rng: RngStates) -> None:
    """Dynamic loss scale: take the batch unmeasured at the current scale; while its gradients hold
    Inf/NaN, back off (the step a GradScaler skips, counted) and take it again. A loss that is
    already Inf/NaN is no scaler overflow (no scale can help): the measured pass reports it."""
    for attempt in range(MAX_BACKOFFS + 1):
        restore_rng(rng)  # the same dropout masks as the measured pass
        with session.paused():
            try:
                loss = forward()
            except UserError:
                break  # the measured pass raises it again, and handles it
            if not bool(torch.isfinite(loss.detach()).all()):
                break
            grads = gradients(loss * scaler.scale, session.trainable)
        finite = [torch.isfinite(g).all() for g in grads if g is not None and not g.is_sparse]
        if not finite or bool(torch.stack(finite).all()) or not scaler.retry_after_overflow(attempt):
            break
    restore_rng(rng)


def _finish_precision(session: MeasurementSession, run: _ProbeRun,
                      grads: tuple[torch.Tensor | None, ...]) -> None:
    """After a measured batch: the predicted updates (the first batch's gradients), the headroom
    measured on the first batch only (headroom.py), and the loss scaler told of a clean batch."""
    meter = _headroom(session)
    if meter.active:
        owners = [session.layers[li].name for li in session.owner_of]
        meter.predicted_updates(grads, session.trainable, owners, run.config.optimizer, run.config.lr)
    meter.active = False
    run.scaler.finished_batch()


def _headroom(session: MeasurementSession) -> HeadroomMeter:
    meter = session.state.headroom
    assert meter is not None, "MeasurementSession creates the headroom meter"
    return meter


def _measurements(session: MeasurementSession, run: _ProbeRun) -> Measurements:
    update_rows = run.step_rows.update
    updates = max_update_ratios(update_rows, len(session.layers))
    names = [layer.name for layer in session.layers]
    headroom = _headroom(session).read()
    records = {li: replace(record, update_to_weight=updates[li], headroom=headroom.get(record.name),
                           **_built_fields(run.as_built, li))
               for li, record in session.layer_measurements().items()}
    scaler = run.scaler
    stepped_layers = sorted(set(session.owner_of))  # the layers owning a trainable parameter
    step_points = run.step_rows.points(stepped_layers, weight_squares(session)) if run.step_rows.update else ()
    return replace(
        session.measurements(records),
        precision=run.config.precision,
        loss_scale=scaler.initial,
        scale_overflows=scaler.overflows,
        final_loss_scale=scaler.scale if scaler.initial is not None else None,
        loss_kind=run.loss_kind,
        nonfinite_input=run.nonfinite_input,
        step_losses=tuple(run.step_losses),
        loss_trace=tuple(run.trace),
        nonfinite_origin=run.origin,
        first_step_update=largest_first_update(update_rows, names),
        step_rounds=tuple(run.step_rounds),
        step_updates=largest_updates(update_rows, names),
        step_layers=tuple(names[li] for li in stepped_layers) if step_points else (),
        step_points=step_points,
    )


def _built_fields(as_built: dict[int, LayerMeasurement] | None, li: int) -> dict[str, Any]:
    """With --steps, the weight statistics and activation scales of the model as built (the first
    probe batch, before any step): the init checks judge the user's init, not weights that the
    probe's own (possibly diverging) steps moved. Without steps nothing changed, so nothing to swap."""
    if as_built is None:
        return {}
    built = as_built[li]
    return {"weight_sq": built.weight_sq, "weight_std": built.weight_std, "bias_mean": built.bias_mean,
            "output": built.output, "output_grad": built.output_grad}  # output_nonfinite: every batch


def _refuse_steps_with_unbuilt_lazy(session: MeasurementSession) -> None:
    """An optimizer cannot step a parameter that has no shape yet (torch refuses it mid-step)."""
    unbuilt = [acc for acc in session.layers if still_lazy(acc, session.params)]
    if unbuilt:
        raise UserError(f"module '{unbuilt[0].name}' ({type(unbuilt[0].module).__name__}) is never called by the "
                        "forward, so its lazy parameters were never created and --steps cannot update them; "
                        "scan without --steps, or replace it with its non-lazy class")
