"""Run the probe batches with hooks and return plain numbers.

The only module that registers measuring hooks (restore.py adds one pre-hook per lazy module, to
capture the values it materialises with). Forward hooks record each layer's output scale and put a
tensor hook on the output to see the gradient arriving at the layer; parameter gradients come from
torch.autograd.grad, which leaves the user's .grad untouched. Full backward hooks are never used: they
break on in-place ops (nn.ReLU(inplace=True)). Every statistic stays a device tensor until the end
of its batch, where one transfer per batch brings it to the host (no per-parameter host syncs).
Every hook handle is removed in `finally`, and the model is restored (restore.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from gradcheck_cli.activations import KNOWN as ACTIVATIONS
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.activation_watch import (
    ActivationSite,
    CompositeActivations,
    FunctionalWatch,
    channels_first_layer,
    new_site,
)
from gradcheck_cli.measure.attention_scores import ScoreTracker
from gradcheck_cli.measure.backward import gradients
from gradcheck_cli.measure.cell_watch import CellWatch
from gradcheck_cli.measure.nonfinite_origin import OriginWatch
from gradcheck_cli.measure.norms import count_nonfinite, squared_norms, tensor_norm
from gradcheck_cli.measure.records import LayerMeasurement, Measurements, NonfiniteOrigin
from gradcheck_cli.measure.restore import restore_snapshot, take_snapshot
from gradcheck_cli.measure.spectra import recurrent_weights
from gradcheck_cli.target.batches import batch_has_nonfinite, call_model, move_to, split_batch
from gradcheck_cli.target.forward_error import forward_failure
from gradcheck_cli.target.guards import is_out_of_memory
from gradcheck_cli.target.isolation import RngStates, capture_rng, restore_rng, seed_all
from gradcheck_cli.target.losses import compute_loss

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


@dataclass
class _LayerAcc:
    """Per-layer device-side accumulators for one scan."""

    name: str
    module: nn.Module
    param_indices: list[int]
    order: int = -1
    out_sq: list[torch.Tensor] = field(default_factory=list)
    out_n: int = 0
    grad_sq: list[torch.Tensor] = field(default_factory=list)
    grad_n: int = 0
    step_rms: list[torch.Tensor] = field(default_factory=list)
    entry_rms: list[torch.Tensor] = field(default_factory=list)
    time_dims: tuple[int, int] | None = None
    """Recurrent layers whose input is watched: the (batch, feature) dims to average over."""
    io_features: tuple[int, int] | None = None
    """Last dim of the input and of the output on the first call: tells a weight stored
    (in, out) from nn.Linear's (out, in) (analyse/structure.py)."""


@dataclass
class _ActAcc:
    """A parameter-free activation module (activation_watch.KNOWN); its statistics go to one
    ActivationSite per layer that feeds it."""

    name: str
    type_name: str
    module: nn.Module


StageCallback = Callable[[str, int, int], None]
"""on_stage(stage, batch, batches): called as each stage starts; `batch` counts from 1 (0 outside
the batch loop). Used by the CLI for the progress bar and to name the stage a timeout stopped."""


def _no_stage(stage: str, batch: int, batches: int) -> None:
    return None


def run_probe(model: nn.Module, make_batch: Callable[[int], Any], loss_fn: Any,
              config: ScanConfig, on_stage: StageCallback | None = None) -> Measurements:
    """Probe `model` with config.batches batches; the model comes back exactly as it was."""
    stage = on_stage or _no_stage
    snapshot = take_snapshot(model)
    handles: list[Any] = []
    try:
        return _probe(model, make_batch, loss_fn, config, handles, stage)
    finally:
        # Announced first: a --timeout clock never interrupts what follows (guards.py).
        stage("restoring the model", 0, config.batches)
        for handle in handles:
            handle.remove()
        restore_snapshot(snapshot)


def _probe(model: nn.Module, make_batch: Callable[[int], Any], loss_fn: Any, config: ScanConfig,
           handles: list[Any], stage: StageCallback) -> Measurements:
    device = torch.device(config.device)
    model.to(device)
    model.train()

    params, owners = _own_params(model)
    trainable_idx = [i for i, p in enumerate(params) if p.requires_grad]
    if not trainable_idx:
        raise UserError(f"{type(model).__name__} has no trainable parameters (all have "
                        "requires_grad=False); nothing to check")
    trainable = [params[i] for i in trainable_idx]

    layers = [_LayerAcc(name, module, idxs) for name, module, idxs in owners]
    state: dict[str, Any] = {"active": True, "calls": 0, "last_layer": None, "stack": [],
                             "nonfinite": [], "leaves": [], "last_measured": (None, None),
                             "inputs": [], "sites": {}, "residual_in": set(),
                             "channels_first": {acc.name: channels_first_layer(acc.module) for acc in layers},
                             "composites": CompositeActivations(_composite_candidates(model)),
                             "scores": ScoreTracker()}
    state["cells"] = CellWatch()
    _register_hooks(model, layers, state, handles)

    losses: list[float] = []
    step_losses: list[float] = []
    trace: list[float] = []
    grad_norm_rows: list[list[float]] = []
    nonfinite_counts = [0] * len(layers)
    received = [False] * len(layers)
    nonfinite_input = False
    origin: NonfiniteOrigin | None = None
    origin_pending = True  # replay only the first failing batch
    loss_kind = ""
    optimizer = _make_optimizer(config, trainable) if config.steps > 0 else None
    layer_of_param = {pi: li for li, layer in enumerate(layers) for pi in layer.param_indices}
    owner_of = [layer_of_param[pi] for pi in trainable_idx]  # the layer of each trainable parameter
    step_owner = torch.tensor(owner_of, device=device)
    update_rows: list[torch.Tensor] = []
    step_rounds: list[tuple[float, ...]] = []
    as_built: dict[int, LayerMeasurement] | None = None

    for batch_index in range(config.batches):
        stage("making the batch", batch_index + 1, config.batches)
        seed_all(config.seed + batch_index)  # torch, CUDA, random and numpy: make_batch may draw from any
        inputs, target = split_batch(make_batch(config.batch_size))
        inputs, target = move_to(inputs, device), move_to(target, device)
        bad_input = batch_has_nonfinite(inputs, target)
        nonfinite_input = nonfinite_input or bad_input
        state["active"], state["nonfinite"], state["leaves"] = True, [], []
        rng = capture_rng()  # so that a replay of this batch sees the same dropout masks (and random/numpy draws)
        stage("forward pass", batch_index + 1, config.batches)
        try:
            loss, loss_kind = _forward_loss(model, inputs, target, loss_fn, state)
        except UserError as error:
            # A NaN born in this forward that made a later op or loss_fn raise is a nonfinite
            # finding at its origin, not a user error: the scan ends here with what it measured.
            # Only the user's own errors can be (a UserError wrapping them); never out-of-memory.
            if not origin_pending or bad_input or error.__cause__ is None or is_out_of_memory(error.__cause__):
                raise
            raised = _replay_origin(model, inputs, target, loss_fn, state, trainable, rng, True)
            if raised is None or raised.raised is None:
                raise
            origin, origin_pending = raised, False
            losses.append(math.nan)
            trace.append(math.nan)
            loss_kind = loss_kind or ("loss_fn" if loss_fn is not None else "")
            break
        stage("backward pass", batch_index + 1, config.batches)
        grads = gradients(loss, trainable + state["leaves"])  # backward.py: reentrant checkpoints too
        grads = grads[:len(trainable)]
        state["active"] = False
        state["cells"].end_forward()  # every step hook of this batch has fired

        sq, got = _layer_grad_sq(grads, owner_of, step_owner, len(layers))
        received = [r or g for r, g in zip(received, got)]
        # One host transfer per batch: the loss, every layer's squared gradient norm, and the
        # per-module non-finite output flags (tested here, once per batch, on the output norms).
        flags = ~torch.isfinite(torch.stack(state["nonfinite"])) if state["nonfinite"] else torch.zeros(0)
        host = torch.cat([loss.detach().double().reshape(1), sq, flags.double().to(sq.device)]).tolist()
        losses.append(host[0])
        trace.append(host[0])
        row = [math.sqrt(v) if v == v and v != math.inf else v for v in host[1:1 + len(layers)]]
        grad_norm_rows.append(row)
        forward_bad = any(host[1 + len(layers):]) or not math.isfinite(host[0])
        if origin_pending and not bad_input and (forward_bad or not all(map(math.isfinite, row))):
            # Data that already holds NaN/Inf is its own origin (nonfinite-input).
            origin_pending = False
            stage("finding where the NaN/Inf starts", batch_index + 1, config.batches)
            origin = _nonfinite_weights(layers, params) or _replay_origin(
                model, inputs, target, loss_fn, state, trainable, rng, forward_bad)
        for li, norm in enumerate(row):
            if not math.isfinite(norm):
                nonfinite_counts[li] += _count_nonfinite(layers[li], trainable_idx, grads)

        if optimizer is not None and batch_index < config.batches - 1:
            if batch_index == 0:  # the model as built, before the probe's own steps change it
                _refuse_steps_with_unbuilt_lazy(layers, params)
                as_built = {li: _finish_layer(layer, li, params, received[li], grad_norm_rows, 0, None)
                            for li, layer in enumerate(layers) if not _still_lazy(layer, params)}
            stage("optimizer steps", batch_index + 1, config.batches)
            stepped = _take_steps(model, inputs, target, loss_fn, trainable, optimizer, config.steps, state,
                                  grads, step_owner, len(layers), update_rows)
            step_losses.extend(stepped[:-1])
            trace.extend(stepped[:-1])
            step_rounds.append((host[0], *stepped))
        # Free this batch's gradients and graph before the next backward: holding them would
        # add a full copy of the gradients to the peak memory.
        del grads, sq, loss
        state["last_measured"] = (None, None)

    trainable_set = set(trainable_idx)
    updates = _max_update_ratios(update_rows, len(layers))
    # The first activation (in call order) that each layer feeds; one pass, not one per layer.
    first_site: dict[str, ActivationSite] = {}
    for site in state["sites"].values():
        first_site.setdefault(site.producer, site)
    return Measurements(
        layers=tuple(replace(_finish_layer(layer, li, params,
                                           received[li] if set(layer.param_indices) & trainable_set else None,
                                           grad_norm_rows,
                                           nonfinite_counts[li], first_site.get(layer.name)),
                             update_to_weight=updates[li], **_built_fields(as_built, li),
                             attention_scores=layer.name in state["scores"].layers,
                             **state["cells"].layer_fields(layer.name, layer.module))
                     for li, layer in enumerate(layers) if not _still_lazy(layer, params)),
        losses=tuple(losses),
        loss_kind=loss_kind,
        nonfinite_input=nonfinite_input,
        first_nonfinite_module=origin.module if origin is not None and origin.direction == "forward" else None,
        # The root is left out: its class name is the user's ("ReluNormalInitMLP" is no norm layer).
        module_types=tuple(type(m).__name__ for m in model.modules() if m is not model),
        residual_modules=tuple(sorted(state["residual_in"])),
        step_losses=tuple(step_losses),
        loss_trace=tuple(trace),
        nonfinite_origin=origin,
        first_grad_norm=math.sqrt(sum(v * v for v in grad_norm_rows[0])) if grad_norm_rows else None,
        first_step_update=_largest_first_update(update_rows, [layer.name for layer in layers]),
        step_rounds=tuple(step_rounds),
        step_updates=_largest_updates(update_rows, [layer.name for layer in layers]),
    )


def _built_fields(as_built: dict[int, LayerMeasurement] | None, li: int) -> dict[str, Any]:
    """With --steps, the weight statistics and activation scales of the model as built (the first
    probe batch, before any step): the init checks judge the user's init, not weights that the
    probe's own (possibly diverging) steps moved. Without steps nothing changed, so nothing to swap."""
    if as_built is None:
        return {}
    built = as_built[li]
    return {"weight_norm": built.weight_norm, "weight_std": built.weight_std, "bias_mean": built.bias_mean,
            "output_rms": built.output_rms, "output_grad_rms": built.output_grad_rms}


def _outputs_nonfinite(state: dict[str, Any]) -> bool:
    """Whether a module output of the probe forward that just ran held NaN/Inf."""
    return bool(state["nonfinite"]) and not bool(torch.isfinite(torch.stack(state["nonfinite"])).all())


def _still_lazy(layer: _LayerAcc, params: list[nn.Parameter]) -> bool:
    """A lazy module the forward never called: its parameters have no shape or values yet, so
    there is nothing to measure; it is left out of the report (restore.py gives it back lazy)."""
    return any(is_lazy(params[pi]) for pi in layer.param_indices)


def _refuse_steps_with_unbuilt_lazy(layers: list[_LayerAcc], params: list[nn.Parameter]) -> None:
    """An optimizer cannot step a parameter that has no shape yet (torch refuses it mid-step)."""
    unbuilt = [acc for acc in layers if _still_lazy(acc, params)]
    if unbuilt:
        raise UserError(f"module '{unbuilt[0].name}' ({type(unbuilt[0].module).__name__}) is never called by the "
                        "forward, so its lazy parameters were never created and --steps cannot update them; "
                        "scan without --steps, or replace it with its non-lazy class")


def _nonfinite_weights(layers: list[_LayerAcc], params: list[nn.Parameter]) -> NonfiniteOrigin | None:
    """The first layer, in execution order, whose own weights are NaN/Inf (after diverged optimizer
    steps, or from a checkpoint): every op reading them is non-finite, so no op is the origin."""
    for layer in sorted(layers, key=lambda acc: (acc.order < 0, acc.order)):
        if _still_lazy(layer, params):
            continue
        own = [params[pi].detach() for pi in layer.param_indices]
        if all(bool(torch.isfinite(p).all()) for p in own):
            continue
        nan = any(bool(torch.isnan(p).any()) for p in own)
        inf = any(bool(torch.isinf(p).any()) for p in own)
        return NonfiniteOrigin(
            direction="weights", module=layer.name, module_type=type(layer.module).__name__,
            op="weights", after=None, input_max_abs=math.inf, dtype=str(own[0].dtype).replace("torch.", ""),
            dtype_max=float(torch.finfo(own[0].dtype).max) if own[0].is_floating_point() else math.inf,
            produced="nan+inf" if nan and inf else ("nan" if nan else "inf"))
    return None


def _replay_origin(model: nn.Module, inputs: Any, target: Any, loss_fn: Any, state: dict[str, Any],
                   trainable: list[nn.Parameter], rng: RngStates, forward_bad: bool) -> NonfiniteOrigin | None:
    """Run a failing batch again under OriginWatch (nonfinite_origin.py) to name the op where the
    first NaN/Inf appears: in the forward when its outputs or loss were non-finite, else in the
    backward (node hooks, removed in `finally`). The probe's own hooks stay inactive."""
    types = {name or "(root)": type(m).__name__ for name, m in model.named_modules()}

    def where() -> tuple[str, str, str | None]:
        module = state["stack"][-1] if state["stack"] else "(loss)"
        return module, types.get(module, "loss"), state.get("finished")

    node_handles: list[Any] = []

    def on_node(node: Any, op: str, location: tuple[str, str, str | None]) -> None:
        node_handles.append(node.register_hook(watch.backward_hook(op, location)))

    def on_module_output(module: str, module_type: str, output: Any) -> None:
        out = _first_float_tensor(output)
        if out is not None and out.grad_fn is not None:  # e.g. a custom autograd.Function's node
            watch.watch_node(out.grad_fn, type(out.grad_fn).__name__, (module, module_type, module))

    watch = OriginWatch(where, None if forward_bad else on_node)
    state["active"], state["finished"] = False, None
    state["replay_output"] = None if forward_bad else on_module_output
    restore_rng(rng)
    try:
        with watch:
            loss, _ = _forward_loss(model, inputs, target, loss_fn, state)
        state["replay_output"] = None
        if forward_bad:
            return watch.forward_origin
        if loss.requires_grad:
            watch.watch_graph(loss.grad_fn)
            torch.autograd.grad(loss, trainable, allow_unused=True)
        return watch.backward_origin
    except UserError as error:
        # A later op or loss_fn that raised on the NaN (binary_cross_entropy refuses NaN inputs):
        # the origin is still where the NaN began, and what raised goes with it.
        # (Only an error of the user's code, which a UserError wraps as its cause: "loss_fn returned a
        # tensor of shape (16,)" is a mistake whatever the values.)
        origin, cause = watch.forward_origin, error.__cause__
        if (forward_bad and origin is not None and cause is not None
                and watch.raised_on_nonfinite(cause, _outputs_nonfinite(state))):
            return replace(origin, raised=watch.describe_raise(cause))
        return None  # a model that cannot run the same batch twice: the report goes on without an origin
    finally:
        state["replay_output"] = None
        for handle in node_handles:
            handle.remove()


def _own_params(model: nn.Module) -> tuple[list[nn.Parameter], list[tuple[str, nn.Module, list[int]]]]:
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


def _register_hooks(model: nn.Module, layers: list[_LayerAcc], state: dict[str, Any],
                    handles: list[Any]) -> None:
    layer_of = {id(acc.module): acc for acc in layers}
    for name, module in model.named_modules():
        acc = layer_of.get(id(module))
        type_name = type(module).__name__
        act = None
        if acc is None and type_name in ACTIVATIONS:
            act = _ActAcc(name, type_name, module)
            state.setdefault("act_names", set()).add(name or "(root)")
        handles.append(module.register_forward_pre_hook(_unwatched(_pre_hook(name, acc, state))))
        handles.append(module.register_forward_hook(_unwatched(_post_hook(name, acc, act, state))))


def _unwatched(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Run one of the probe's own hooks outside the FunctionalWatch mode.

    The hooks' tensor ops are gradcheck's, not the user's forward; inside the mode each of them
    (even .dim()) would pass through a Python __torch_function__: measured as ~40 % of a scan of a
    1,000-layer MLP (bench/deep_wide.py).
    """
    def run(*args: Any) -> Any:
        with torch._C.DisableTorchFunction():
            return hook(*args)
    return run


def _pre_hook(name: str, acc: _LayerAcc | None, state: dict[str, Any]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
        state["stack"].append(name or "(root)")
        state["inputs"].append((name or "(root)", args[0] if args else None))
        if acc is None or not state["active"]:
            return None
        if acc.order < 0:
            acc.order = state["calls"]
            state["calls"] += 1
        state["cells"].before_call(acc.name, module, args)  # a cell called in a loop (cell_watch.py)
        if isinstance(module, RECURRENT) and args and isinstance(args[0], torch.Tensor):
            return _watch_steps(module, acc, args, state["leaves"])
        return None
    return hook


def _watch_steps(module: nn.Module, acc: _LayerAcc, args: tuple[Any, ...],
                 leaves: list[torch.Tensor]) -> tuple[Any, ...]:
    """See the gradient reaching each time step of a recurrent layer's input.

    The fused RNN's output gradient holds only each step's direct contribution; the gradient w.r.t.
    the input sees what flows back through the recurrence. We add a zero leaf to the input and
    ask autograd for its gradient too: that is the gradient w.r.t. the input at every step, whether
    or not the input itself requires grad, and the graph upstream is unchanged.
    """
    x = args[0]
    if not x.is_floating_point() or x.dim() != 3 or not torch.is_grad_enabled():
        return args  # no_grad: a reentrant checkpoint's first pass (its recompute is watched)
    leaf = torch.zeros_like(x, requires_grad=True)
    leaves.append(leaf)
    x = x + leaf
    time_dims = (0, 2) if module.batch_first else (1, 2)
    acc.time_dims = time_dims

    def grad_hook(g: torch.Tensor) -> None:
        acc.step_rms.append(_per_step_rms(g, time_dims))
    x.register_hook(grad_hook)
    return (x, *args[1:])


def _watch_entries(acc: _LayerAcc, out: torch.Tensor) -> None:
    """Per-step gradient w.r.t. a recurrent layer's output sequence: each step's direct share of
    the loss (where the gradient enters), which tells a bidirectional layer's near end."""
    dims = acc.time_dims
    if dims is None or out.dim() != 3:
        return

    def hook(g: torch.Tensor) -> None:
        acc.entry_rms.append(_per_step_rms(g, dims))
    out.register_hook(hook)


def _per_step_rms(g: torch.Tensor, dims: tuple[int, int]) -> torch.Tensor:
    """RMS over (batch, features) per step, scaled by the step's max |g| first: the far steps of a
    vanishing RNN hold ~1e-37, whose square would underflow float32 to 0."""
    g = g.detach()
    g = g.abs() if g.is_complex() else g  # a complex state's RMS is that of |g|
    g = g if g.dtype == torch.float64 else g.float()  # float64: 1e-50 must not become 0
    scale = g.abs().amax(dim=dims, keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (g / safe).pow(2).mean(dim=dims).sqrt() * scale.flatten()


def _post_hook(name: str, acc: _LayerAcc | None, act: _ActAcc | None,
               state: dict[str, Any]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        state["stack"].pop()
        if state["inputs"]:
            state["inputs"].pop()
        state["finished"] = name or "(root)"  # the replay names the module an op came after
        if state.get("replay_output") is not None:
            state["replay_output"](name or "(root)", type(module).__name__, output)
        if not state["active"]:
            return
        if acc is not None:
            state["cells"].after_call(acc.name, output)
        out = _first_float_tensor(output)
        if out is None:
            return
        last_out, last_sq = state["last_measured"]
        if out is last_out:
            # A container returning its last child's tensor: the child measured it already.
            sq = last_sq
        else:
            sq = tensor_norm(out).square()  # float64: finite outputs never read as Inf (norms.py)
            state["last_measured"] = (out, sq)
            state["nonfinite"].append(sq)  # tested for non-finite values once per batch
        if acc is not None:
            acc.out_sq.append(sq)
            acc.out_n += out.numel()
            state["last_layer"] = acc.name
            if out.requires_grad:
                out.register_hook(_grad_hook(acc, out.numel()))
                _watch_entries(acc, out)
        if acc is not None and acc.io_features is None:
            acc.io_features = _io_features(args, out)
        if acc is not None:
            state["scores"].mark(out, acc.name)
        activation = act
        if activation is None and name in state["composites"].candidates:
            function = state["composites"].finish(name, args, output)  # a GELU written with a tanh
            activation = _ActAcc(name, function, module) if function else None
        if activation is not None:
            _record_activation(activation, out.detach(), state)
    return hook


def _grad_hook(acc: _LayerAcc, numel: int) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        acc.grad_sq.append(tensor_norm(grad).square())
        acc.grad_n += numel
    return hook


def _record_activation(act: _ActAcc, out: torch.Tensor, state: dict[str, Any]) -> None:
    """Per-unit saturation / dead-unit counts of a module activation, per producing layer."""
    producer = state["last_layer"]
    if producer is None:
        return  # an activation of the raw input: no layer to report it on
    key = (act.name or "(root)", act.type_name, producer)
    site = state["sites"].get(key)
    if site is None:
        site = state["sites"][key] = new_site(act.name or "(root)", act.type_name, producer, act.module)
    site.record(out, state["channels_first"].get(producer, False))


def _functional_watch(state: dict[str, Any]) -> FunctionalWatch:
    """Functional activations and residual adds of one probe forward (activation_watch.py)."""
    def where() -> tuple[str, str | None, bool, bool]:
        module = state["stack"][-1] if state["stack"] else "(root)"
        producer = state["last_layer"]
        return (module, producer, state["channels_first"].get(producer, False),
                module in state.get("act_names", ()))
    state["composites"].pending.clear()  # what a failed forward left
    state["scores"].start()
    return FunctionalWatch(where, lambda: state["inputs"], lambda: state["leaves"], state["sites"],
                           state["residual_in"], state["composites"], state["scores"])


def _first_float_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_float_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        for item in output.values():
            found = _first_float_tensor(item)
            if found is not None:
                return found
    return None


def _forward_loss(model: nn.Module, inputs: Any, target: Any, loss_fn: Any,
                  state: dict[str, Any]) -> tuple[torch.Tensor, str]:
    state["stack"], state["inputs"], state["last_layer"] = [], [], None
    try:
        with torch.enable_grad(), _functional_watch(state) if state["active"] else nullcontext():
            output = call_model(model, inputs)
    except UserError:
        raise
    except Exception as exc:  # the user's forward failed: say where and with which inputs
        raise forward_failure(model, inputs, exc, state["stack"]) from exc
    with torch.enable_grad():  # a make_batch that switched grad off must not detach the loss
        return compute_loss(output, target, loss_fn)


def _layer_grad_sq(grads: tuple[torch.Tensor | None, ...], owner_of: list[int], owner: torch.Tensor,
                   n_layers: int) -> tuple[torch.Tensor, list[bool]]:
    """Squared gradient norm per layer as one device tensor (no host sync), and which layers got one."""
    given = [k for k, g in enumerate(grads) if g is not None]
    received = [False] * n_layers
    for k in given:
        received[owner_of[k]] = True
    return _group_sq([g for g in grads if g is not None], owner[given], n_layers), received


def _count_nonfinite(layer: _LayerAcc, trainable_idx: list[int],
                     grads: tuple[torch.Tensor | None, ...]) -> int:
    position = {pi: k for k, pi in enumerate(trainable_idx)}
    total = 0
    for pi in layer.param_indices:
        g = grads[position[pi]] if pi in position else None
        if g is not None:
            total += count_nonfinite(g)
    return total


def _real(t: torch.Tensor) -> torch.Tensor:
    """A parameter's values as float64 for a statistic (the real part of a complex one)."""
    t = t.detach()
    return (t.real if t.is_complex() else t).double()


def _wide(t: torch.Tensor) -> torch.dtype:
    """float64, or complex128 for a complex tensor: its std is then that of z (a real number)."""
    return torch.complex128 if t.is_complex() else torch.float64


def _finish_layer(layer: _LayerAcc, li: int, params: list[nn.Parameter], received: bool | None,
                  grad_norm_rows: list[list[float]], nonfinite: int,
                  site: ActivationSite | None) -> LayerMeasurement:
    own = [params[pi] for pi in layer.param_indices]
    main_weight = max((p for p in own if p.dim() >= 2), key=lambda p: p.numel(), default=None)
    with torch.no_grad():
        weight_norm = math.sqrt(float(squared_norms(own, own[0].device).sum()))
    out_sq = float(torch.stack(layer.out_sq).sum()) if layer.out_sq else None
    grad_sq = float(torch.stack(layer.grad_sq).sum()) if layer.grad_sq else None
    steps, entries = _step_rms(layer.step_rms), _step_rms(layer.entry_rms)
    activation: dict[str, Any] = site.summary() if site is not None else {}
    bias = layer.module._parameters.get("bias")
    got_grad = received is True
    return LayerMeasurement(
        name=layer.name,
        type_name=type(layer.module).__name__,
        params=sum(p.numel() for p in own),
        # Dimensions of size 1 do not count: a (C, 1, 1) layer scale is a vector, not a kernel.
        param_dim=max(sum(1 for size in p.shape if size > 1) for p in own),
        weight_shape=tuple(main_weight.shape) if main_weight is not None else None,
        io_features=layer.io_features,
        bias_mean=float(_real(bias).mean()) if bias is not None and bias.numel() else None,
        weight_std=float(main_weight.detach().to(_wide(main_weight)).std()) if main_weight is not None else None,
        trainable=received is not None,
        order=layer.order,
        weight_norm=weight_norm,
        grad_norms=tuple(row[li] for row in grad_norm_rows) if got_grad else (),
        nonfinite_grads=nonfinite,
        output_rms=math.sqrt(out_sq / layer.out_n) if out_sq is not None and layer.out_n else None,
        output_grad_rms=(math.sqrt(grad_sq / layer.grad_n)
                         if grad_sq is not None and layer.grad_n else None),
        output_nonfinite=out_sq is not None and not math.isfinite(out_sq),
        activation=activation,
        step_grad_rms=steps,
        step_entry_grad_rms=entries,
        bidirectional=bool(getattr(layer.module, "bidirectional", False)),
        recurrent_weights=recurrent_weights(layer.module) if isinstance(layer.module, RECURRENT) else (),
    )


def _step_rms(per_call: list[torch.Tensor]) -> tuple[float, ...]:
    """Per-step RMS over all calls (root of the mean square, in float64 on the host so that tiny
    values survive squaring); () when the calls' lengths differ."""
    if not per_call or len({t.shape[0] for t in per_call}) != 1:
        return ()
    return tuple(torch.stack(per_call).cpu().double().pow(2).mean(0).sqrt().tolist())


def _io_features(args: tuple[Any, ...], out: torch.Tensor) -> tuple[int, int] | None:
    """(last dim of the input, last dim of the output) of a layer call with a float tensor input."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 or out.dim() == 0:
        return None
    return int(x.shape[-1]), int(out.shape[-1])


def _composite_candidates(model: nn.Module) -> set[str]:
    """Parameter-free leaf modules that are no known activation: where a GELU or SiLU written with
    a tanh or sigmoid inside may live (activation_watch.CompositeActivations)."""
    return {name for name, module in model.named_modules()
            if name and type(module).__name__ not in ACTIVATIONS
            and not module._parameters and not module._modules}


def _make_optimizer(config: ScanConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    factories = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    return factories[config.optimizer](params, lr=config.lr)


def _take_steps(model: nn.Module, inputs: Any, target: Any, loss_fn: Any,
                params: list[nn.Parameter], optimizer: torch.optim.Optimizer, steps: int,
                state: dict[str, Any], grads: tuple[torch.Tensor | None, ...],
                owner: torch.Tensor, n_layers: int, update_rows: list[torch.Tensor]) -> list[float]:
    """`steps` optimizer steps on the current batch, the first with the probe's own gradients.

    Returns the loss on this batch after each step, the last one included (the descent lemma is a
    statement about the batch a step was taken on: comparing it with the next batch's loss would
    mix the step's effect with the data's); hooks are inactive so these passes do not count as
    probes. Appends to `update_rows` one device
    tensor per step: each layer's update/weight ratio |Δw| / |w| (`owner` maps each parameter to
    its layer). Plain SGD moves the weights by exactly lr * g, so there it is lr * |g| / |w|, with
    no copy; adaptive optimizers rescale g per element, so the change is measured around step().
    """
    losses = []
    state["active"] = False
    plain_sgd = isinstance(optimizer, torch.optim.SGD)
    if not plain_sgd and any(g is not None and g.is_sparse for g in grads):
        # torch.optim.Adam/AdamW raise on them: the user's own training would need SparseAdam there.
        name = type(optimizer).__name__
        raise UserError(f"--optimizer {name.lower()} cannot step the model's sparse gradients "
                        f"(nn.Embedding/EmbeddingBag(sparse=True)): torch.optim.{name} refuses them; "
                        "use --optimizer sgd for --steps (train such parameters with torch.optim.SparseAdam)")
    lr = float(optimizer.param_groups[0]["lr"])
    for step in range(steps):
        for p, g in zip(params, grads):
            p.grad = g
        weights = [p.detach() for p in params]
        weight_sq = _group_sq(weights, owner, n_layers)
        if plain_sgd:
            given = [(k, g) for k, g in enumerate(grads) if g is not None]
            change_sq = _group_sq([g for _, g in given], owner[[k for k, _ in given]], n_layers) * lr * lr
            optimizer.step()
        else:
            before = [w.clone() for w in weights]
            optimizer.step()
            change_sq = _group_sq(list(torch._foreach_sub(weights, before)), owner, n_layers)
        update_rows.append(torch.where(weight_sq > 0, change_sq / weight_sq, torch.nan).sqrt())
        for p in params:
            p.grad = None
        loss, _ = _forward_loss(model, inputs, target, loss_fn, state)
        losses.append(float(loss.detach()))
        if step < steps - 1:
            grads = gradients(loss, params)
    return losses


def _group_sq(tensors: list[torch.Tensor], owner: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Squared L2 norm per layer of per-parameter tensors (owner[k]: the layer of tensors[k]), in
    float64 and exact at any magnitude, for any dtype and for sparse gradients (norms.py)."""
    per_layer = torch.zeros(n_layers, dtype=torch.float64, device=owner.device)
    if tensors:
        per_layer.index_add_(0, owner, squared_norms(tensors, owner.device))
    return per_layer


def _largest_updates(rows: list[torch.Tensor], names: list[str]) -> tuple[tuple[str, float], ...]:
    """Per optimizer step, in order: the layer it changed most and that update/weight ratio
    (NaN when no layer had a finite ratio: weights already NaN/Inf)."""
    result = []
    for row in rows:
        seen = [(v, name) for v, name in zip(row.tolist(), names) if math.isfinite(v)]
        ratio, name = max(seen) if seen else (math.nan, "")
        result.append((name, ratio))
    return tuple(result)


def _largest_first_update(rows: list[torch.Tensor], names: list[str]) -> tuple[str, float] | None:
    """The first step's largest layer update/weight ratio and its layer (the lower-lr basis)."""
    if not rows:
        return None
    first = [(v, name) for v, name in zip(rows[0].tolist(), names) if not math.isnan(v)]
    if not first:
        return None
    ratio, name = max(first)
    return name, ratio


def _max_update_ratios(rows: list[torch.Tensor], n_layers: int) -> list[float | None]:
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
