"""The typed state of one measurement session: what its hooks accumulate, on the device.

`LayerAccumulator` holds one layer's running sums (device tensors until the session is read, so
that no hook forces a host sync); `ForwardTrace` what the forward running now has seen (the module
call stack only in a diagnostic re-run: hooks.follow_calls);
`BatchTrace` what one batch adds before its gradients are read (session.on_batch); `Watchers` the
watchers that follow the user's own ops (activations, residual adds, attention scores, cells);
`HookState` ties them together for the hooks (hooks.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradcheck_cli.measure.activation_watch import ActivationSite, CompositeActivations, FunctionalWatch
from gradcheck_cli.measure.attention_scores import ScoreTracker
from gradcheck_cli.measure.cell_watch import CellWatch
from gradcheck_cli.measure.headroom import HeadroomMeter
from gradcheck_cli.measure.norms import DeferredSquares
from gradcheck_cli.target.call_frames import ModuleFrames


@dataclass
class LayerAccumulator:
    """One layer (a module owning parameters directly) over the session."""

    name: str
    module: nn.Module
    param_indices: list[int]
    order: int = -1
    """Execution order of the first measured call; -1 while the module never ran."""
    out_sq: list[torch.Tensor] = field(default_factory=list)
    """Squared L2 norm of each measured output (float64, 0-dim, on the device)."""
    out_n: int = 0
    grad_sq: list[torch.Tensor] = field(default_factory=list)
    """Squared L2 norm of each gradient that reached an output."""
    grad_n: int = 0
    step_rms: list[torch.Tensor] = field(default_factory=list)
    """Recurrent layers: per call, the RMS of the gradient w.r.t. the input at each step."""
    entry_rms: list[torch.Tensor] = field(default_factory=list)
    """Recurrent layers: per call, the RMS of the gradient w.r.t. the output at each step."""
    time_dims: tuple[int, int] | None = None
    """Recurrent layers whose input is watched: the (batch, feature) dims to average over."""
    io_features: tuple[int, int] | None = None
    """Last dim of the input and of the output on the first call (records.LayerMeasurement)."""
    batch_grad_sq: list[float] = field(default_factory=list)
    """Per batch (on the host): squared norm of the layer's own parameter gradients."""
    nonfinite_grads: int = 0
    received: bool = False
    """Some batch gave one of its parameters a gradient."""


@dataclass
class ActivationModule:
    """A parameter-free activation module (activations.KNOWN); its statistics go to one
    ActivationSite per layer that feeds it."""

    name: str
    type_name: str
    module: nn.Module


@dataclass
class ForwardTrace:
    """The forward running now (reset when the model's root module is called)."""

    stack: list[str] = field(default_factory=list)
    """Modules running, outermost first (names; "(root)" for the model itself); kept only while
    hooks.follow_calls is attached (the NaN replay)."""
    inputs: list[tuple[str, Any]] = field(default_factory=list)
    """(module, its first input) for the modules running, as `stack`."""
    last_layer: str | None = None
    """The layer that finished last: the producer of an activation that follows it."""
    finished: str | None = None
    """The module that finished last (layer or not): the replay names an op as coming after it
    (hooks.follow_calls)."""
    last_measured: tuple[torch.Tensor | None, Any] = (None, None)
    """(output, its DeferredSquares entry) of the last module measured: a container returning its
    last child's tensor is not measured twice."""


@dataclass
class BatchTrace:
    """What the forwards of the current batch add, until session.on_batch reads the gradients."""

    squares: DeferredSquares = field(default_factory=DeferredSquares)
    """The outputs' and output gradients' norms taken by the hooks, read together (norms.py):
    flushed at the end of each forward and by on_batch."""
    output_sq: list[torch.Tensor] = field(default_factory=list)
    """Every measured module output's squared norm: tested for NaN/Inf once per batch."""
    leaves: list[torch.Tensor] = field(default_factory=list)
    """Zero leaves added to recurrent inputs (hooks.watch_steps): their gradient is the gradient
    w.r.t. the input at every step."""


@dataclass
class Watchers:
    """What follows the user's own ops and calls (activation_watch, attention_scores, cell_watch)."""

    channels_first: dict[str, bool]
    composites: CompositeActivations
    activation_modules: set[str] = field(default_factory=set)
    sites: dict[tuple[str, str, str], ActivationSite] = field(default_factory=dict)
    residual_in: set[str] = field(default_factory=set)
    scores: ScoreTracker = field(default_factory=ScoreTracker)
    cells: CellWatch = field(default_factory=CellWatch)


ModuleOutputCallback = Callable[[str, str, Any], None]
"""replay_output(module, module_type, output): the NaN replay's view of every module output."""


@dataclass
class HookState:
    """Everything the session's hooks read and write."""

    watchers: Watchers
    active: bool = True
    """Measuring; False while the scan takes optimizer steps or replays a batch (session.paused)."""
    calls: int = 0
    """Layers called so far (the next one's `order`)."""
    forward: ForwardTrace = field(default_factory=ForwardTrace)
    batch: BatchTrace = field(default_factory=BatchTrace)
    depth: int = 0
    """Nesting of the root module's calls: 0 between forwards."""
    mode: FunctionalWatch | None = None
    """The function mode entered for the running forward (hooks.py), if any."""
    replay_output: ModuleOutputCallback | None = None
    headroom: HeadroomMeter | None = None
    """Mixed-precision headroom of every layer (headroom.py); the session creates it."""
    frames: ModuleFrames | None = None
    """The model's module calls on the Python stack (target/call_frames.py): where the function
    mode finds the module running and the inputs of the modules running; register_hooks sets it."""
