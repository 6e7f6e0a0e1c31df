"""Run the probe batches with hooks and return plain numbers.

The only module that registers torch hooks. Forward hooks record each layer's output scale and put a
tensor hook on the output to see the gradient arriving at the layer; parameter gradients come from
torch.autograd.grad, which leaves the user's .grad untouched. Full backward hooks are never used: they
break on in-place ops (nn.ReLU(inplace=True)). Every statistic stays a device tensor until the end
of its batch, where one transfer per batch brings it to the host (no per-parameter host syncs).
Every hook handle is removed in `finally`, and the model is restored (restore.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .batches import batch_has_nonfinite, call_model, move_to, split_batch
from .config import ScanConfig
from .errors import UserError
from .forward_error import forward_failure
from .losses import compute_loss
from .measurements import LayerProbe, ProbeResult
from .recurrence import recurrent_weights
from .restore import restore_snapshot, take_snapshot
from .stats import layer_role

# Activation modules whose outputs tell about saturation (flat region) or dead units.
# Flat regions from DOMAIN.md: sigmoid outside ~[0.02, 0.98]; tanh with |y| > ~0.96.
SATURATING = {"Sigmoid": (0.02, 0.98), "Tanh": (-0.96, 0.96), "Hardtanh": (-0.999, 0.999),
              "Softsign": (-0.96, 0.96), "Hardsigmoid": (0.001, 0.999)}
RECTIFIERS = {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "GELU",
              "SiLU", "Mish", "Softplus", "Hardswish"}
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


@dataclass
class _ActAcc:
    name: str
    type_name: str
    producer: str | None = None
    saturated: list[torch.Tensor] = field(default_factory=list)
    fired: torch.Tensor | None = None


StageCallback = Callable[[str, int, int], None]
"""on_stage(stage, batch, batches): called as each stage starts; `batch` counts from 1 (0 outside
the batch loop). Used by the CLI for the progress bar and to name the stage a timeout stopped."""


def _no_stage(stage: str, batch: int, batches: int) -> None:
    return None


def run_probe(model: nn.Module, make_batch: Callable[[int], Any], loss_fn: Any,
              config: ScanConfig, on_stage: StageCallback | None = None) -> ProbeResult:
    """Probe `model` with config.batches batches; the model comes back exactly as it was."""
    stage = on_stage or _no_stage
    snapshot = take_snapshot(model, copy_params=config.steps > 0)
    handles: list[Any] = []
    try:
        return _probe(model, make_batch, loss_fn, config, handles, stage)
    finally:
        for handle in handles:
            handle.remove()
        stage("restoring the model", 0, config.batches)
        restore_snapshot(snapshot)


def _probe(model: nn.Module, make_batch: Callable[[int], Any], loss_fn: Any, config: ScanConfig,
           handles: list[Any], stage: StageCallback) -> ProbeResult:
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
    acts: dict[nn.Module, _ActAcc] = {}
    state: dict[str, Any] = {"active": True, "calls": 0, "last_layer": None, "stack": [],
                             "nonfinite": [], "records": [], "leaves": [], "last_measured": (None, None)}
    _register_hooks(model, layers, acts, state, handles)

    losses: list[float] = []
    step_losses: list[float] = []
    trace: list[float] = []
    grad_norm_rows: list[list[float]] = []
    nonfinite_counts = [0] * len(layers)
    received = [False] * len(layers)
    nonfinite_input = False
    first_nonfinite: str | None = None
    loss_kind = ""
    optimizer = _make_optimizer(config, trainable) if config.steps > 0 else None

    for batch_index in range(config.batches):
        stage("making the batch", batch_index + 1, config.batches)
        torch.manual_seed(config.seed + batch_index)
        inputs, target = split_batch(make_batch(config.batch_size))
        inputs, target = move_to(inputs, device), move_to(target, device)
        nonfinite_input = nonfinite_input or batch_has_nonfinite(inputs, target)
        state["active"], state["nonfinite"], state["leaves"] = True, [], []
        stage("forward pass", batch_index + 1, config.batches)
        loss, loss_kind = _forward_loss(model, inputs, target, loss_fn, state)
        stage("backward pass", batch_index + 1, config.batches)
        grads = torch.autograd.grad(loss, trainable + state["leaves"], allow_unused=True)
        grads = grads[:len(trainable)]
        state["active"] = False

        sq, got = _layer_grad_sq(layers, trainable_idx, grads, device)
        received = [r or g for r, g in zip(received, got)]
        # One host transfer per batch: the loss, every layer's squared gradient norm, and the
        # per-module non-finite output flags.
        flags = torch.stack(state["nonfinite"]) if state["nonfinite"] else torch.zeros(0)
        host = torch.cat([loss.detach().float().reshape(1), sq, flags.float().to(sq.device)]).tolist()
        losses.append(host[0])
        trace.append(host[0])
        row = [math.sqrt(v) if v == v and v != math.inf else v for v in host[1:1 + len(layers)]]
        grad_norm_rows.append(row)
        if first_nonfinite is None:
            for name, flag in zip(state["records"], host[1 + len(layers):]):
                if flag:
                    first_nonfinite = name
                    break
        state["records"] = []
        for li, norm in enumerate(row):
            if not math.isfinite(norm):
                nonfinite_counts[li] += _count_nonfinite(layers[li], trainable_idx, grads)

        if optimizer is not None and batch_index < config.batches - 1:
            stage("optimizer steps", batch_index + 1, config.batches)
            stepped = _take_steps(model, inputs, target, loss_fn, trainable, optimizer, config.steps, state,
                                  grads)
            step_losses.extend(stepped)
            trace.extend(stepped)
        # Free this batch's gradients and graph before the next backward: holding them would
        # add a full copy of the gradients to the peak memory.
        del grads, sq, loss
        state["last_measured"] = (None, None)

    trainable_set = set(trainable_idx)
    return ProbeResult(
        layers=tuple(_finish_layer(layer, li, params,
                                   received[li] if set(layer.param_indices) & trainable_set else None,
                                   grad_norm_rows,
                                   nonfinite_counts[li], acts)
                     for li, layer in enumerate(layers)),
        losses=tuple(losses),
        loss_kind=loss_kind,
        nonfinite_input=nonfinite_input,
        first_nonfinite_module=first_nonfinite,
        has_normalization=any(layer_role(type(m).__name__, 1) == "normalization" for m in model.modules()),
        step_losses=tuple(step_losses),
        loss_trace=tuple(trace),
    )


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


def _register_hooks(model: nn.Module, layers: list[_LayerAcc], acts: dict[nn.Module, _ActAcc],
                    state: dict[str, Any], handles: list[Any]) -> None:
    layer_of = {id(acc.module): acc for acc in layers}
    for name, module in model.named_modules():
        acc = layer_of.get(id(module))
        type_name = type(module).__name__
        if acc is None and (type_name in SATURATING or type_name in RECTIFIERS):
            acts[module] = _ActAcc(name, type_name)
        handles.append(module.register_forward_pre_hook(_pre_hook(name, acc, state)))
        handles.append(module.register_forward_hook(_post_hook(name, acc, acts.get(module), state)))


def _pre_hook(name: str, acc: _LayerAcc | None, state: dict[str, Any]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
        state["stack"].append(name or "(root)")
        if acc is None or not state["active"]:
            return None
        if acc.order < 0:
            acc.order = state["calls"]
            state["calls"] += 1
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
    if not x.is_floating_point() or x.dim() != 3:
        return args
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
    g = g.detach().float()
    scale = g.abs().amax(dim=dims, keepdim=True)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (g / safe).pow(2).mean(dim=dims).sqrt() * scale.flatten()


def _post_hook(name: str, acc: _LayerAcc | None, act: _ActAcc | None,
               state: dict[str, Any]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        state["stack"].pop()
        if not state["active"]:
            return
        out = _first_float_tensor(output)
        if out is None:
            return
        last_out, last_sq = state["last_measured"]
        if out is last_out:
            # A container returning its last child's tensor: the child measured it already.
            sq = last_sq
        else:
            sq = torch.linalg.vector_norm(out.detach(), dtype=torch.float32).square()
            state["last_measured"] = (out, sq)
            state["nonfinite"].append(~torch.isfinite(sq))
            state["records"].append(name or "(root)")
        if acc is not None:
            acc.out_sq.append(sq)
            acc.out_n += out.numel()
            state["last_layer"] = acc.name
            if out.requires_grad:
                out.register_hook(_grad_hook(acc, out.numel()))
                _watch_entries(acc, out)
        if act is not None:
            _record_activation(act, out.detach(), state["last_layer"])
    return hook


def _grad_hook(acc: _LayerAcc, numel: int) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        acc.grad_sq.append(torch.linalg.vector_norm(grad.detach(), dtype=torch.float32).square())
        acc.grad_n += numel
    return hook


def _record_activation(act: _ActAcc, out: torch.Tensor, producer: str | None) -> None:
    if act.producer is None:
        act.producer = producer
    if act.type_name in SATURATING:
        low, high = SATURATING[act.type_name]
        act.saturated.append(((out < low) | (out > high)).float().mean())
    else:
        # A unit (feature for (B, F) and (B, T, F); channel for (B, C, H, W)) is dead when it
        # never fires on any probe sample.
        unit_dim = out.dim() - 1 if out.dim() == 3 else min(1, out.dim() - 1)
        other = [d for d in range(out.dim()) if d != unit_dim]
        fired = (out > 0).any(dim=other) if other else out > 0
        act.fired = fired if act.fired is None or act.fired.shape != fired.shape \
            else act.fired | fired


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
    state["stack"] = []
    try:
        with torch.enable_grad():
            output = call_model(model, inputs)
    except UserError:
        raise
    except Exception as exc:  # the user's forward failed: say where and with which inputs
        raise forward_failure(model, inputs, exc, state["stack"]) from exc
    return compute_loss(output, target, loss_fn)


def _layer_grad_sq(layers: list[_LayerAcc], trainable_idx: list[int],
                   grads: tuple[torch.Tensor | None, ...], device: torch.device
                   ) -> tuple[torch.Tensor, list[bool]]:
    """Squared gradient norm per layer as one device tensor (no host sync), and which layers got one."""
    layer_of_param = {pi: li for li, layer in enumerate(layers) for pi in layer.param_indices}
    present, owner = [], []
    for k, g in enumerate(grads):
        if g is not None:
            present.append(g if g.dtype == torch.float32 else g.float())
            owner.append(layer_of_param[trainable_idx[k]])
    per_layer = torch.zeros(len(layers), device=device)
    if present:
        norms = torch.stack([n.to(device) for n in torch._foreach_norm(present)])
        per_layer.index_add_(0, torch.tensor(owner, device=device), norms.square())
    received = [False] * len(layers)
    for li in owner:
        received[li] = True
    return per_layer, received


def _count_nonfinite(layer: _LayerAcc, trainable_idx: list[int],
                     grads: tuple[torch.Tensor | None, ...]) -> int:
    position = {pi: k for k, pi in enumerate(trainable_idx)}
    total = 0
    for pi in layer.param_indices:
        g = grads[position[pi]] if pi in position else None
        if g is not None:
            total += int((~torch.isfinite(g)).sum().item())
    return total


def _finish_layer(layer: _LayerAcc, li: int, params: list[nn.Parameter], received: bool | None,
                  grad_norm_rows: list[list[float]], nonfinite: int,
                  acts: dict[nn.Module, _ActAcc]) -> LayerProbe:
    own = [params[pi] for pi in layer.param_indices]
    main_weight = max((p for p in own if p.dim() >= 2), key=lambda p: p.numel(), default=None)
    with torch.no_grad():
        weight_norm = float(torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.detach(), dtype=torch.float32) for p in own])))
    out_sq = float(torch.stack(layer.out_sq).sum()) if layer.out_sq else None
    grad_sq = float(torch.stack(layer.grad_sq).sum()) if layer.grad_sq else None
    steps, entries = _step_rms(layer.step_rms), _step_rms(layer.entry_rms)
    activation: dict[str, Any] = {}
    for act in acts.values():
        if act.producer == layer.name:
            activation["function"] = act.type_name
            if act.saturated:
                activation["saturated_fraction"] = float(torch.stack(act.saturated).mean())
            if act.fired is not None:
                activation["dead_fraction"] = float(1.0 - act.fired.float().mean())
            break
    got_grad = received is True
    return LayerProbe(
        name=layer.name,
        type_name=type(layer.module).__name__,
        params=sum(p.numel() for p in own),
        param_dim=max(p.dim() for p in own),
        fan_in=_fan_in(main_weight),
        weight_std=float(main_weight.detach().float().std()) if main_weight is not None else None,
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


def _fan_in(weight: torch.Tensor | None) -> int | None:
    if weight is None:
        return None
    return int(weight.shape[1] * math.prod(weight.shape[2:]))


def _make_optimizer(config: ScanConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    factories = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    return factories[config.optimizer](params, lr=config.lr)


def _take_steps(model: nn.Module, inputs: Any, target: Any, loss_fn: Any,
                params: list[nn.Parameter], optimizer: torch.optim.Optimizer, steps: int,
                state: dict[str, Any], grads: tuple[torch.Tensor | None, ...]) -> list[float]:
    """`steps` optimizer steps on the current batch, the first with the probe's own gradients.

    Returns the loss after each step but the last (the next probe batch measures that one); hooks
    are inactive so these passes do not count as probes.
    """
    losses = []
    state["active"] = False
    for step in range(steps):
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        for p in params:
            p.grad = None
        if step < steps - 1:
            loss, _ = _forward_loss(model, inputs, target, loss_fn, state)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            losses.append(float(loss.detach()))
    return losses
