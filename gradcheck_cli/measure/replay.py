"""Where the first NaN/Inf of a scan was born: NaN/Inf weights, or a replay of the failing batch.

The scan replays only the first batch whose forward, loss or gradients turned non-finite, with the
same RNG states (the same dropout masks and random/numpy draws), under OriginWatch
(nonfinite_origin.py), with the session paused so that the replay is no probe. Only the replay
follows every module call (hooks.follow_calls: the call stack, the module that finished last,
every module output); a probe batch's hooks sit only where they measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.finish import still_lazy
from gradcheck_cli.measure.hooks import first_float_tensor, follow_calls
from gradcheck_cli.measure.nonfinite_origin import OriginWatch
from gradcheck_cli.measure.records import NonfiniteOrigin
from gradcheck_cli.measure.session import MeasurementSession
from gradcheck_cli.target.isolation import RngStates, restore_rng


def nonfinite_weights(session: MeasurementSession) -> NonfiniteOrigin | None:
    """The first layer, in execution order, whose own weights are NaN/Inf (after diverged optimizer
    steps, or from a checkpoint): every op reading them is non-finite, so no op is the origin."""
    params = session.params
    for layer in sorted(session.layers, key=lambda acc: (acc.order < 0, acc.order)):
        if still_lazy(layer, params):
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


def replay_origin(session: MeasurementSession, forward_loss: Callable[[], torch.Tensor], rng: RngStates,
                  forward_bad: bool, outputs_nonfinite: bool) -> NonfiniteOrigin | None:
    """Run a failing batch again under OriginWatch to name the op where the first NaN/Inf appears:
    in the forward when its outputs or loss were non-finite, else in the backward (node hooks,
    removed in `finally`). `outputs_nonfinite`: a module output of the probe's forward was."""
    state = session.state
    types = {name or "(root)": type(m).__name__ for name, m in session.model.named_modules()}

    def where() -> tuple[str, str, str | None]:
        trace = state.forward
        module = trace.stack[-1] if trace.stack else "(loss)"
        return module, types.get(module, "loss"), trace.finished

    node_handles: list[Any] = []

    def on_node(node: Any, op: str, location: tuple[str, str, str | None]) -> None:
        node_handles.append(node.register_hook(watch.backward_hook(op, location)))

    def on_module_output(module: str, module_type: str, output: Any) -> None:
        out = first_float_tensor(output)
        if out is not None and out.grad_fn is not None:  # e.g. a custom autograd.Function's node
            watch.watch_node(out.grad_fn, type(out.grad_fn).__name__, (module, module_type, module))

    watch = OriginWatch(where, None if forward_bad else on_node)
    state.forward.finished = None
    state.replay_output = None if forward_bad else on_module_output
    restore_rng(rng)
    node_handles.extend(follow_calls(session.model, state))  # the probe's hooks keep no call stack
    try:
        with session.paused():
            with watch:
                loss = forward_loss()
            state.replay_output = None
            if forward_bad:
                return watch.forward_origin
            if loss.requires_grad:
                watch.watch_graph(loss.grad_fn)
                torch.autograd.grad(loss, session.trainable, allow_unused=True)
            return watch.backward_origin
    except UserError as error:
        # A later op or loss_fn that raised on the NaN (binary_cross_entropy refuses NaN inputs):
        # the origin is still where the NaN began, and what raised goes with it.
        # (Only an error of the user's code, which a UserError wraps as its cause: "loss_fn returned a
        # tensor of shape (16,)" is a mistake whatever the values.)
        origin, cause = watch.forward_origin, error.__cause__
        if (forward_bad and origin is not None and cause is not None
                and watch.raised_on_nonfinite(cause, outputs_nonfinite)):
            return replace(origin, raised=watch.describe_raise(cause))
        return None  # a model that cannot run the same batch twice: the report goes on without an origin
    finally:
        state.replay_output = None
        for handle in node_handles:
            handle.remove()
        state.forward.stack.clear()  # what a forward that raised left
        state.forward.inputs.clear()
