"""Snapshot and restore everything a probe could touch on the user's model and the process.

The probe runs forward/backward passes in train mode (BatchNorm updates its running stats), may move
the model to another device, with --steps changes the weights, and the user's own forward may change
them too: `nn.Embedding(max_norm=...)` renormalises its rows in place, a WGAN critic clamps its
weights (`p.data.clamp_(-c, c)`). Afterwards the user's model must be exactly as it was: the same
Parameter and buffer objects holding the same values on the same device, the same .grad objects,
requires_grad flags, train/eval mode of every submodule, and the global RNG state (torch, CUDA,
random, numpy).

Values: every parameter and buffer is copied when the snapshot is taken and copied back when it is
restored, whatever --steps is. A version counter (`tensor._version`) cannot replace the copy: it
does not move when the weights are written through `.data` (the usual WGAN clamp), and it cannot
bring back a value that is gone. Nor does comparing save anything: `torch.equal` reads both tensors,
which costs as much as copying one back. The cost is one extra copy of the model's parameters, in
memory on their own device while the scan runs, and two memory copies in time (measured on a 25M
parameter MLP on 2 CPU cores: 0.05 s to clone, 0.05 s to copy back, against 0.24 s for one
forward+backward of a batch of 16).

Lazy modules (`nn.LazyLinear`, `nn.LazyConv2d`, `nn.LazyBatchNorm1d`, ...) cannot come back lazy:
the probe's first forward materialises them, and torch turns the module into its plain class
(LazyLinear -> Linear) for good. They come back materialised and usable, holding the values they were
initialised with during that first forward (before any --steps), and `restore_snapshot` says so
with a `LazyModulesMaterialised` warning (the CLI, whose model is discarded, hides it). A lazy
module the probe never reached stays lazy. The values are captured by a forward pre-hook that runs
right after torch's own materialising pre-hook; it is removed at the restore.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from gradcheck_cli.target.isolation import RngStates, capture_rng, restore_rng


class LazyModulesMaterialised(UserWarning):
    """The scan materialised lazy modules of the user's model (they cannot be made lazy again)."""


@dataclass
class ModelSnapshot:
    params: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None, Any, bool]]
    """(parameter, its original data tensor, a value copy (None while lazy), its original .grad,
    requires_grad)"""
    buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]]
    """(module, buffer name, the original buffer object, a value copy (None while lazy))"""
    training: list[tuple[nn.Module, bool]]
    rng: RngStates
    lazy: list[_LazyModule] = field(default_factory=list)
    """Modules that held uninitialised parameters or buffers when the snapshot was taken."""


@dataclass
class _LazyModule:
    name: str
    module: nn.Module
    lazy_class: str
    """Its class while lazy ('LazyLinear'); torch turns it into the plain class when it materialises."""
    param_names: list[str]
    buffer_names: list[str]
    """Its uninitialised parameters and buffers."""
    buffers: dict[str, torch.Tensor]
    """The original buffer objects (materialised in place when the probe runs on their device)."""
    device: torch.device
    """Where its uninitialised tensors were: the materialised values go back there."""
    handle: Any = None
    """The capturing forward pre-hook, removed at the restore."""
    values: dict[str, torch.Tensor] | None = None
    """Copies of the parameters ('p:NAME') and buffers ('b:NAME') right after materialisation."""

    def capture(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook, run after torch's own materialising pre-hook of the module."""
        if self.values is not None or _has_lazy_tensors(module):
            return
        self.values = {f"p:{k}": module._parameters[k].detach().clone()  # type: ignore[union-attr]
                       for k in self.param_names}
        self.values.update({f"b:{k}": module._buffers[k].detach().clone()  # type: ignore[union-attr]
                            for k in self.buffer_names})


def take_snapshot(model: nn.Module) -> ModelSnapshot:
    """Record the model's state, values included (see the module docstring for the cost)."""
    params: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None, Any, bool]] = []
    for p in model.parameters():  # each tied parameter once
        params.append((p, p.data, None if is_lazy(p) else p.detach().clone(), p.grad, p.requires_grad))
    buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]] = []
    training = []
    lazy = []
    for name, module in model.named_modules():
        training.append((module, module.training))
        for buffer_name, buf in module._buffers.items():
            copy = buf.detach().clone() if isinstance(buf, torch.Tensor) and not is_lazy(buf) else None
            buffers.append((module, buffer_name, buf, copy))
        if _has_lazy_tensors(module):
            lazy.append(_watch_lazy(name, module))
    return ModelSnapshot(params, buffers, training, capture_rng(), lazy)


def restore_snapshot(snapshot: ModelSnapshot) -> None:
    """Put the model back; warns (LazyModulesMaterialised) when the probe materialised lazy modules."""
    with torch.no_grad():
        for p, data, value, grad, requires_grad in snapshot.params:
            if is_lazy(p):
                continue  # still uninitialised: nothing can have touched it
            if value is not None:
                p.data = data
                data.copy_(value)
            p.grad = grad
            p.requires_grad_(requires_grad)
        for module, name, buf, value in snapshot.buffers:
            if value is not None or buf is None:
                module._buffers[name] = buf
            if buf is not None and value is not None:
                buf.copy_(value)
        materialised = [name for name in map(_restore_lazy, snapshot.lazy) if name is not None]
    for module, training in snapshot.training:
        module.training = training
    restore_rng(snapshot.rng)
    if materialised:
        warnings.warn(f"gradcheck materialised the lazy modules {', '.join(materialised)} in the probe's "
                      "first forward; they stay materialised, with the values they were initialised "
                      "with (run one forward before the scan to choose them)",
                      LazyModulesMaterialised, stacklevel=2)


def _has_lazy_tensors(module: nn.Module) -> bool:
    tensors = [*module._parameters.values(), *module._buffers.values()]
    return any(t is not None and is_lazy(t) for t in tensors)


def _watch_lazy(name: str, module: nn.Module) -> _LazyModule:
    params = [k for k, p in module._parameters.items() if p is not None and is_lazy(p)]
    buffers: dict[str, torch.Tensor] = {k: b for k, b in module._buffers.items() if b is not None and is_lazy(b)}
    first = module._parameters[params[0]] if params else next(iter(buffers.values()))
    entry = _LazyModule(name or "(root)", module, type(module).__name__, params, list(buffers),
                        buffers, first.device)  # type: ignore[union-attr]
    entry.handle = module.register_forward_pre_hook(entry.capture)
    return entry


def _restore_lazy(entry: _LazyModule) -> str | None:
    """Give a materialised lazy module the values it had right after materialisation."""
    entry.handle.remove()
    if entry.values is None:
        return None  # the probe never reached it: still lazy, nothing changed
    for key in entry.param_names:
        param = entry.module._parameters[key]
        if param is not None:
            param.data = entry.values[f"p:{key}"].to(entry.device)
            param.grad = None
    for key in entry.buffer_names:
        value, original = entry.values[f"b:{key}"], entry.buffers[key]
        if not is_lazy(original) and original.device == value.device:
            original.copy_(value)  # materialised in place: keep the user's object
            entry.module._buffers[key] = original
        else:
            entry.module._buffers[key] = value.to(entry.device)
    return f"{entry.name} ({entry.lazy_class} -> {type(entry.module).__name__})"

