"""--steps: the scan's optimizer steps between probe batches, and the update/weight ratios.

The steps run with the session paused (they are no probe); each one records, per layer, the
relative change of the weights |Δw| / |w|, the norm of the gradient it used and the weight norm
(step_series.py: the report's series), and the loss on the same batch after the step. With
config.clip_grad_norm (verify: clip-gradients, docs/fixes/clip-gradients.md) the gradients are
clipped before each step exactly as torch.nn.utils.clip_grad_norm_ clips them, so the update
ratios are those of the clipped steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.backward import gradients
from gradcheck_cli.measure.session import MeasurementSession, group_sq
from gradcheck_cli.measure.step_series import StepRows

ForwardLoss = Callable[[], torch.Tensor]
"""Runs the model and the loss on the current batch; returns the loss."""


def make_optimizer(config: ScanConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    factories = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    return factories[config.optimizer](params, lr=config.lr)


def take_steps(session: MeasurementSession, forward_loss: ForwardLoss, optimizer: torch.optim.Optimizer,
               steps: int, grads: tuple[torch.Tensor | None, ...], rows: StepRows,
               clip_grad_norm: float | None = None) -> list[float]:
    """`steps` optimizer steps on the current batch, the first with the probe's own gradients.

    Returns the loss on this batch after each step, the last one included (the descent lemma is a
    statement about the batch a step was taken on: comparing it with the next batch's loss would
    mix the step's effect with the data's); the session is paused so these passes do not count as
    probes. Adds to `rows` one row of device tensors per step (StepRows.add): each layer's squared
    norm of the gradient the step used, its update/weight ratio |Δw| / |w| and its squared weight
    norm before the step (the weights after a step are those before the next one: StepRows.points).
    Plain SGD moves the weights by exactly lr * g, so there the ratio is lr * |g| / |w|, with no
    copy; adaptive optimizers rescale g per element, so the change is measured around step(). With
    `clip_grad_norm`, every step's gradients are clipped to that total norm first (and their norms
    are those of the clipped gradients the step used).
    """
    params = session.trainable
    plain_sgd = isinstance(optimizer, torch.optim.SGD)
    if not plain_sgd and any(g is not None and g.is_sparse for g in grads):
        # torch.optim.Adam/AdamW raise on them: the user's own training would need SparseAdam there.
        name = type(optimizer).__name__
        raise UserError(f"--optimizer {name.lower()} cannot step the model's sparse gradients "
                        f"(nn.Embedding/EmbeddingBag(sparse=True)): torch.optim.{name} refuses them; "
                        "use --optimizer sgd for --steps (train such parameters with torch.optim.SparseAdam)")
    losses = []
    with session.paused():
        for step in range(steps):
            if clip_grad_norm is not None:
                grads = clip_gradients(grads, clip_grad_norm)
            rows.add(*_step(session, optimizer, grads, plain_sgd))
            loss = forward_loss()
            losses.append(float(loss.detach()))
            if step < steps - 1:
                grads = gradients(loss, params)
    return losses


def clip_gradients(grads: tuple[torch.Tensor | None, ...], max_norm: float) -> tuple[torch.Tensor | None, ...]:
    """The gradients scaled as torch.nn.utils.clip_grad_norm_(params, max_norm) scales them: by
    max_norm / (total + 1e-6), capped at 1, with `total` the L2 norm over all of them. New tensors:
    the probe's own gradients stay as measured. torch refuses sparse gradients there (no sparse
    norm kernel); their coalesced values have the same norm, so they are counted by those."""
    given = [g for g in grads if g is not None]
    if not given:
        return grads
    total = torch.nn.utils.get_total_norm([g.coalesce().values() if g.is_sparse else g for g in given])
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return tuple(None if g is None else g * scale.to(g.device) for g in grads)


def _step(session: MeasurementSession, optimizer: torch.optim.Optimizer, grads: tuple[torch.Tensor | None, ...],
          plain_sgd: bool) -> tuple[torch.Tensor, frozenset[int], torch.Tensor, torch.Tensor]:
    """One optimizer step with `grads`. Per layer: the squared norm of its gradients, the layers
    that got one, the update/weight ratio (NaN for zero weights) and the squared weight norm
    before the step. Weights and gradients are summed in one group_sq (one host sync, as
    squared_norms does per call): their layers side by side, the gradients' shifted by n_layers."""
    params, owner, n_layers = session.trainable, session.owner, len(session.layers)
    lr = float(optimizer.param_groups[0]["lr"])
    for p, g in zip(params, grads):
        p.grad = g
    weights = [p.detach() for p in params]
    given = [k for k, g in enumerate(grads) if g is not None]
    both = group_sq(weights + [g for g in grads if g is not None], torch.cat([owner, owner[given] + n_layers]),
                    2 * n_layers)
    weight_sq, grad_sq = both[:n_layers], both[n_layers:]
    received = frozenset(session.owner_of[k] for k in given)
    if plain_sgd:
        change_sq = grad_sq * lr * lr
        optimizer.step()
    else:
        before = [w.clone() for w in weights]
        optimizer.step()
        change_sq = group_sq(list(torch._foreach_sub(weights, before)), owner, n_layers)
    for p in params:
        p.grad = None
    return grad_sq, received, torch.where(weight_sq > 0, change_sq / weight_sq, torch.nan).sqrt(), weight_sq


def weight_squares(session: MeasurementSession) -> torch.Tensor:
    """Each layer's squared norm of its trainable weights now (a device tensor; one host sync)."""
    return group_sq([p.detach() for p in session.trainable], session.owner, len(session.layers))


def largest_updates(rows: list[torch.Tensor], names: list[str]) -> tuple[tuple[str, float], ...]:
    """Per optimizer step, in order: the layer it changed most and that update/weight ratio
    (NaN when no layer had a finite ratio: weights already NaN/Inf)."""
    result = []
    for row in rows:
        seen = [(v, name) for v, name in zip(row.tolist(), names) if math.isfinite(v)]
        ratio, name = max(seen) if seen else (math.nan, "")
        result.append((name, ratio))
    return tuple(result)


def largest_first_update(rows: list[torch.Tensor], names: list[str]) -> tuple[str, float] | None:
    """The first step's largest layer update/weight ratio and its layer (the lower-lr basis)."""
    if not rows:
        return None
    first = [(v, name) for v, name in zip(rows[0].tolist(), names) if not math.isnan(v)]
    if not first:
        return None
    ratio, name = max(first)
    return name, ratio


def max_update_ratios(rows: list[torch.Tensor], n_layers: int) -> list[float | None]:
    """Per layer, the largest update/weight ratio over the steps (None without steps or weights).

    The largest, not the mean: one step that moves the weights by 100% is what wrecks a layer.
    """
    if not rows:
        return [None] * n_layers
    columns = torch.stack(rows).T.tolist()
    result: list[float | None] = []
    for column in columns:
        seen = [v for v in column if not math.isnan(v)]
        result.append(max(seen) if seen else None)
    return result
