"""The paths bench/overhead.py times next to the scan: K training passes of the same batches, bare
or with one of the ways people watch gradients today.

Every path does what a training step does for batch b: ``torch.manual_seed(seed + b)``,
``make_batch(batch_size)`` (so all paths see the batches the scan draws), ``zero_grad(set_to_none)``,
forward, the target's loss and ``loss.backward()``; no optimizer step. The losses stay device
tensors. What each path adds:

* ``plain``: nothing: the denominator of every ratio.
* ``anomaly``: each pass under ``torch.autograd.detect_anomaly()`` (forward traces recorded, every
  backward function's output checked for NaN).
* ``naive``: a forward hook on every module that takes the norm of its tensor output and a gradient
  hook on every parameter that takes the norm of its gradient, each kept as a device tensor; after
  the backward all of them come to the host in one ``torch.stack(...).tolist()``. The
  straightforward hook-based monitor, without gradcheck's analysis.
* ``lightning``: after the backward, ``lightning.pytorch.utilities.grad_norm(model, 2)``'s work: the
  2-norm of each parameter's gradient (``p.grad.data.norm(2.0)``), the total norm over them
  (``torch.tensor(list(norms.values())).norm(2.0)``), then each value as a float, as a logger does.
* ``wandb``: ``wandb.watch(model, log="gradients", log_freq=1)``'s gradient hook on every parameter:
  ``log_tensor_stats`` of the gradient: a detached clone, the finite check, min and max to the host,
  ``histc`` into 64 bins between them, the counts and the bin edges as lists.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from gradcheck_cli.target.batches import call_model, move_to, split_batch
from gradcheck_cli.target.resolve import Target

Passes = Callable[[nn.Module, Target, int, int, int, torch.device], list[torch.Tensor]]
"""(model, target, batches, batch_size, seed, device) -> the K losses."""

WANDB_BINS = 64


def _passes(model: nn.Module, target: Target, batches: int, batch_size: int, seed: int,
            device: torch.device, around: Callable[[], AbstractContextManager[object]] = nullcontext,
            after_backward: Callable[[nn.Module], object] | None = None) -> list[torch.Tensor]:
    assert target.make_batch is not None and target.loss_fn is not None
    model.train()
    losses = []
    for b in range(batches):
        torch.manual_seed(seed + b)
        inputs, labels = split_batch(target.make_batch(batch_size))
        inputs, labels = move_to(inputs, device), move_to(labels, device)
        model.zero_grad(set_to_none=True)
        with around():
            loss = target.loss_fn(call_model(model, inputs), labels)
            loss.backward()
        if after_backward is not None:
            after_backward(model)
        losses.append(loss.detach())
    model.zero_grad(set_to_none=True)  # the model goes on to the next path as it came
    return losses


def plain(model: nn.Module, target: Target, batches: int, batch_size: int, seed: int,
          device: torch.device) -> list[torch.Tensor]:
    return _passes(model, target, batches, batch_size, seed, device)


@contextmanager
def _anomaly_mode() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Anomaly Detection has been enabled", on every entry
        with torch.autograd.detect_anomaly():
            yield


def anomaly(model: nn.Module, target: Target, batches: int, batch_size: int, seed: int,
            device: torch.device) -> list[torch.Tensor]:
    return _passes(model, target, batches, batch_size, seed, device, around=_anomaly_mode)


def naive(model: nn.Module, target: Target, batches: int, batch_size: int, seed: int,
          device: torch.device) -> list[torch.Tensor]:
    norms: list[torch.Tensor] = []
    sink: list[list[float]] = []

    def output_norm(module: nn.Module, args: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            norms.append(torch.linalg.vector_norm(output.detach()))

    def grad_norm(grad: torch.Tensor) -> None:
        norms.append(torch.linalg.vector_norm(grad.detach()))

    def transfer(_: nn.Module) -> None:
        sink.append(torch.stack(norms).tolist() if norms else [])
        norms.clear()

    handles = [m.register_forward_hook(output_norm) for m in model.modules()]
    handles += [p.register_hook(grad_norm) for p in model.parameters() if p.requires_grad]
    try:
        return _passes(model, target, batches, batch_size, seed, device, after_backward=transfer)
    finally:
        for handle in handles:
            handle.remove()


def lightning_grad_norm(module: nn.Module) -> dict[str, float]:
    """``lightning.pytorch.utilities.grad_norm(module, 2)``, each value read as a float (a logger)."""
    norms = {f"grad_2.0_norm/{name}": p.grad.data.norm(2.0)
             for name, p in module.named_parameters() if p.grad is not None}
    if norms:
        norms["grad_2.0_norm_total"] = torch.tensor(list(norms.values())).norm(2.0)
    return {key: float(value) for key, value in norms.items()}


def lightning(model: nn.Module, target: Target, batches: int, batch_size: int, seed: int,
              device: torch.device) -> list[torch.Tensor]:
    logged: list[dict[str, float]] = []
    return _passes(model, target, batches, batch_size, seed, device,
                   after_backward=lambda module: logged.append(lightning_grad_norm(module)))


def _histogram(grad: torch.Tensor, logged: list[tuple[list[float], list[float]]]) -> None:
    """wandb's log_tensor_stats for a dense float tensor."""
    flat = grad.detach().clone().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    finite = torch.isfinite(flat)
    if flat.numel() == 0 or (~finite).all().item():
        return
    if not finite.all():
        flat = flat[finite]
    tmin, tmax = flat.min().item(), flat.max().item()
    if tmin == tmax:
        logged.append(([float(flat.numel())], [tmin, tmax]))
        return
    counts = flat.histc(bins=WANDB_BINS, min=tmin, max=tmax).cpu()
    edges = torch.linspace(tmin, tmax, steps=WANDB_BINS + 1)
    logged.append((counts.tolist(), edges.tolist()))


def wandb(model: nn.Module, target: Target, batches: int, batch_size: int, seed: int,
          device: torch.device) -> list[torch.Tensor]:
    logged: list[tuple[list[float], list[float]]] = []
    handles = [p.register_hook(lambda grad: _histogram(grad, logged))
               for p in model.parameters() if p.requires_grad]
    try:
        return _passes(model, target, batches, batch_size, seed, device)
    finally:
        for handle in handles:
            handle.remove()


ANCHORS: dict[str, Passes] = {"anomaly": anomaly, "naive": naive, "lightning": lightning, "wandb": wandb}
"""The anchors, in the table's column order."""
