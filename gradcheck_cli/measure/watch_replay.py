"""Where the watch's first NaN/Inf was born: replay the step's batch with origin tracking.

The watch keeps a reference to the inputs of the model's last forward (not a copy: the tensors
the user's loop made anyway, released at the next forward) and the torch RNG state that forward
started from (the same dropout masks on the replay). When a step's gradients are first
non-finite, before the optimizer step writes them into the weights, the forward runs once more
under the scan's origin tracking (replay.py, nonfinite_origin.py): first for the forward op that
turned finite inputs into NaN/Inf; when the forward was clean, for the backward node that did.
The loss of the replay is the output's `.loss` (Hugging Face models), the output itself when it
is a scalar, else the sum of its first floating tensor: the user's loss function is not known to
the watch, and a backward origin (sqrt at 0, a custom backward) shows under any loss.
The model comes back exactly as it was (restore.py: weights, buffers such as BatchNorm's running
statistics, .grad, modes, RNG states); the replay costs nothing on a run that stays finite.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from gradcheck_cli.measure.hooks import first_float_tensor
from gradcheck_cli.measure.records import NonfiniteOrigin
from gradcheck_cli.measure.replay import nonfinite_weights, replay_origin
from gradcheck_cli.measure.restore import restore_snapshot, take_snapshot
from gradcheck_cli.measure.session import MeasurementSession
from gradcheck_cli.target.isolation import RngStates


@dataclass(frozen=True)
class LastBatch:
    """The last forward's inputs (references) and the RNG state it began with."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None

    @staticmethod
    def of(args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device) -> LastBatch:
        cuda = None
        if device.type == "cuda" and torch.cuda.is_initialized():
            cuda = torch.cuda.get_rng_state_all()
        return LastBatch(args, dict(kwargs), torch.get_rng_state(), cuda)


def replay_last_batch(session: MeasurementSession, batch: LastBatch) -> NonfiniteOrigin | None:
    """The origin of the first NaN/Inf of `batch` (module docstring), or None when the replay does
    not reproduce it (a loss function outside the model, data that is not the model's input)."""
    model = session.model
    broken = nonfinite_weights(session)
    if broken is not None:
        return broken
    snapshot = take_snapshot(model)
    attached = bool(session._handles)
    rng = RngStates(torch=batch.torch_rng, python=random.getstate(), cuda=batch.cuda_rng)

    def forward_loss() -> torch.Tensor:
        return _scalar_loss(model(*batch.args, **batch.kwargs))

    try:
        session.attach()  # the module call stack, which names where an op ran
        with torch.enable_grad():
            origin = replay_origin(session, forward_loss, rng, True, False)
            if origin is None:
                origin = replay_origin(session, forward_loss, rng, False, False)
        return origin
    except Exception:  # a model that cannot run the same inputs twice: no origin, training goes on
        return None
    finally:
        if not attached:
            session.detach()
        restore_snapshot(snapshot)


def _scalar_loss(output: Any) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.is_floating_point():
        return loss.reshape(()) if loss.numel() == 1 else loss.sum()
    tensor = first_float_tensor(output)
    if tensor is None:
        raise TypeError("the model's output holds no floating-point tensor")
    return tensor.sum()
