"""Every measuring hook of a session: module forward hooks, tensor hooks, the function mode.

Hooks go only where something is measured (issue 16): the parameter-owning layers (a pre-hook for
their call order, recurrent steps and cells, a post-hook for their output and the gradient arriving
at it), the parameter-free leaf modules (a post-hook: known activations' saturation and dead units,
a composite activation's identity, their output's NaN/Inf test) and the root (where a forward
begins and ends). Pure containers (nn.Sequential, nn.ModuleList, a block whose forward only calls
its children) get none, and no hook keeps a module call stack: the function mode reads the module
running, and the inputs of the modules running, from the Python frames when it needs them
(target/call_frames.py), which is only on a functional activation or an add. The NaN replay, a
diagnostic re-run, follows every module call with `follow_calls`.

Forward hooks record each layer's output scale and put a tensor hook on the output to see the
gradient arriving at the layer; recurrent layers get a zero leaf added to their input, whose
gradient is the gradient at every time step. Full backward hooks are never used: they break on
in-place ops (nn.ReLU(inplace=True)). The FunctionalWatch mode (activation_watch.py) sees the
user's own functional activations and residual adds: it is entered when the model's root module
is called and left when that call returns or raises (an always-called forward hook), so it covers
the model's forward and nothing else (not the loss, the backward or an optimizer step).
Every statistic stays a device tensor (no host sync in a hook); the handles are returned to the
session, which removes them all on detach.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradcheck_cli.activations import KNOWN as ACTIVATIONS
from gradcheck_cli.measure.accumulators import ActivationModule, ForwardTrace, HookState, LayerAccumulator
from gradcheck_cli.measure.activation_watch import FunctionalWatch, new_site
from gradcheck_cli.target.call_frames import ModuleFrames

RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


def register_hooks(model: nn.Module, layers: list[LayerAccumulator], state: HookState) -> list[RemovableHandle]:
    """Attach the session's hooks where they measure (module docstring); returns their handles."""
    modules = list(model.named_modules())
    state.frames = ModuleFrames(modules)
    handles = [model.register_forward_pre_hook(_enter_forward(state)),
               model.register_forward_hook(_leave_forward(state), always_call=True)]
    layer_of = {id(acc.module): acc for acc in layers}
    for name, module in modules:
        acc = layer_of.get(id(module))
        type_name = type(module).__name__
        act = None
        if acc is None and type_name in ACTIVATIONS:
            act = ActivationModule(name, type_name, module)
            state.watchers.activation_modules.add(name or "(root)")
        if acc is None and act is None and module is not model and module._modules:
            continue  # a pure container: its children are measured, it computes nothing of its own
        if acc is not None:
            handles.append(module.register_forward_pre_hook(_unwatched(_pre_hook(acc, state))))
        handles.append(module.register_forward_hook(_unwatched(_post_hook(name, acc, act, state))))
    return handles


def follow_calls(model: nn.Module, state: HookState) -> list[RemovableHandle]:
    """Hooks on every module that keep `state.forward`'s call stack, the module that finished last,
    and hand each module's output to `state.replay_output`: for a diagnostic re-run (the NaN
    replay, replay.py), never for a probe batch. Remove the handles after the re-run."""
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(_unwatched(_call_entered(name or "(root)", state))))
        handles.append(module.register_forward_hook(_unwatched(_call_left(name or "(root)", state))))
    return handles


def _call_entered(name: str, state: HookState) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        state.forward.stack.append(name)
        state.forward.inputs.append((name, args[0] if args else None))
    return hook


def _call_left(name: str, state: HookState) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        trace = state.forward
        if trace.stack:
            trace.stack.pop()
        if trace.inputs:
            trace.inputs.pop()
        trace.finished = name  # the replay names the module an op came after
        if state.replay_output is not None:
            state.replay_output(name, type(module).__name__, output)
    return hook


def leave_watch(state: HookState) -> None:
    """Leave the function mode if a forward left it entered (a BaseException such as SystemExit
    skips the always-called hook)."""
    mode, state.mode, state.depth = state.mode, None, 0
    if state.frames is not None:
        state.frames.outer = None  # holds the root call's frame (and its inputs) until now
    if mode is not None:
        mode.__exit__(None, None, None)


def _enter_forward(state: HookState) -> Callable[..., None]:
    """The root's first pre-hook: a new forward begins (a fresh call stack; the watch, if measuring)."""
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if state.depth == 0:
            state.forward = ForwardTrace()
            if state.active:
                if state.frames is not None:
                    state.frames.enter_root(sys._getframe())  # the mode's frame walks stop there
                mode = _functional_watch(state)
                mode.__enter__()
                state.mode = mode
        state.depth += 1
    return hook


def _leave_forward(state: HookState) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        state.depth = max(state.depth - 1, 0)
        if state.depth == 0:
            leave_watch(state)
            state.batch.squares.flush()  # the outputs' norms: release the outputs held for them
    return hook


def _unwatched(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Run one of the session's own hooks outside the FunctionalWatch mode.

    The hooks' tensor ops are gradcheck's, not the user's forward; inside the mode each of them
    (even .dim()) would pass through a Python __torch_function__: measured as ~40 % of a scan of a
    1,000-layer MLP (bench/deep_wide.py).
    """
    def run(*args: Any) -> Any:
        with torch._C.DisableTorchFunction():
            return hook(*args)
    return run


def _pre_hook(acc: LayerAccumulator, state: HookState) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> Any:
        if not state.active:
            return None
        if acc.order < 0:
            acc.order = state.calls
            state.calls += 1
        state.watchers.cells.before_call(acc.name, module, args)  # a cell called in a loop (cell_watch.py)
        if isinstance(module, RECURRENT) and args and isinstance(args[0], torch.Tensor):
            return _watch_steps(module, acc, args, state.batch.leaves)
        return None
    return hook


def _watch_steps(module: nn.Module, acc: LayerAccumulator, args: tuple[Any, ...],
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


def _watch_entries(acc: LayerAccumulator, out: torch.Tensor) -> None:
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


def _post_hook(name: str, acc: LayerAccumulator | None, act: ActivationModule | None,
               state: HookState) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not state.active:
            return
        if acc is not None:
            state.watchers.cells.after_call(acc.name, output)
        out = first_float_tensor(output)
        if out is None:
            return
        _measure_output(out, acc, state)
        if acc is not None:
            _measure_layer_output(acc, args, out, state)
        activation = act
        composites = state.watchers.composites
        if activation is None and name in composites.candidates:
            function = composites.finish(name, args, output)  # a GELU written with a tanh
            activation = ActivationModule(name, function, module) if function else None
        if activation is not None:
            _record_activation(activation, out.detach(), state)
    return hook


def _measure_output(out: torch.Tensor, acc: LayerAccumulator | None, state: HookState) -> None:
    """The output's squared norm (float64: finite outputs never read as Inf; norms.py) goes to the
    batch's non-finite test and to the layer's sum, when the forward's norms are flushed."""
    layer = (acc.out_sq,) if acc is not None else ()
    last_out, last_entry = state.forward.last_measured
    if out is last_out and last_entry is not None:
        # a container returning its last child's tensor: the child measured it already
        state.batch.squares.extend(last_entry, *layer)
        return
    entry = state.batch.squares.add(out, state.batch.output_sq, *layer)
    state.forward.last_measured = (out, entry)


def _measure_layer_output(acc: LayerAccumulator, args: tuple[Any, ...], out: torch.Tensor,
                          state: HookState) -> None:
    acc.out_n += out.numel()
    if state.headroom is not None:
        state.headroom.output(acc.name, out)  # mixed-precision headroom (headroom.py)
    state.forward.last_layer = acc.name
    if out.requires_grad:
        out.register_hook(_grad_hook(acc, out.numel(), state))
        _watch_entries(acc, out)
    if acc.io_features is None:
        acc.io_features = _io_features(args, out)
    state.watchers.scores.mark(out, acc.name)


def _grad_hook(acc: LayerAccumulator, numel: int, state: HookState) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        if state.headroom is not None:  # counts it; under a loss scale, hands back grad / scale
            grad = state.headroom.gradient(acc.name, grad)
        state.batch.squares.add(grad, acc.grad_sq, unchanging=True)  # read with the batch's gradients
        acc.grad_n += numel
    return hook


def _record_activation(act: ActivationModule, out: torch.Tensor, state: HookState) -> None:
    """Per-unit saturation / dead-unit counts of a module activation, per producing layer."""
    producer = state.forward.last_layer
    if producer is None:
        return  # an activation of the raw input: no layer to report it on
    sites = state.watchers.sites
    key = (act.name or "(root)", act.type_name, producer)
    site = sites.get(key)
    if site is None:
        site = sites[key] = new_site(act.name or "(root)", act.type_name, producer, act.module)
    site.record(out, state.watchers.channels_first.get(producer, False))


def _functional_watch(state: HookState) -> FunctionalWatch:
    """Functional activations and residual adds of one forward (activation_watch.py)."""
    watchers, frames = state.watchers, state.frames
    assert frames is not None, "register_hooks sets the frames"

    def where() -> tuple[str, str | None, bool, bool]:
        module = frames.innermost() or "(root)"
        producer = state.forward.last_layer
        return (module, producer, watchers.channels_first.get(producer or "", False),
                module in watchers.activation_modules)
    watchers.composites.pending.clear()  # what a failed forward left
    watchers.scores.start()
    return FunctionalWatch(where, frames.inputs, lambda: state.batch.leaves, watchers.sites,
                           watchers.residual_in, watchers.composites, watchers.scores)


def first_float_tensor(output: Any) -> torch.Tensor | None:
    """The first floating-point tensor of a module's output (through tuples, lists and dicts)."""
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_float_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        for item in output.values():
            found = first_float_tensor(item)
            if found is not None:
                return found
    return None


def _io_features(args: tuple[Any, ...], out: torch.Tensor) -> tuple[int, int] | None:
    """(last dim of the input, last dim of the output) of a layer call with a float tensor input."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 or out.dim() == 0:
        return None
    return int(x.shape[-1]), int(out.shape[-1])


def composite_candidates(model: nn.Module) -> set[str]:
    """Parameter-free leaf modules that are no known activation: where a GELU or SiLU written with
    a tanh or sigmoid inside may live (activation_watch.CompositeActivations)."""
    return {name for name, module in model.named_modules()
            if name and type(module).__name__ not in ACTIVATIONS
            and not module._parameters and not module._modules}
