"""Snapshot and restore everything a probe could touch on the user's model and the process.

The probe runs forward/backward passes in train mode (BatchNorm updates its running stats), may move
the model to another device, and with --steps changes the weights. Afterwards the user's model must be
exactly as it was: the same Parameter and buffer objects holding the same values on the same device,
the same .grad objects, requires_grad flags, train/eval mode of every submodule, and the global RNG
state (torch, CUDA, random, numpy).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ModelSnapshot:
    params: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor | None, Any, bool]]
    """(parameter, its original data tensor, a value copy or None, its original .grad, requires_grad)"""
    buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]]
    """(module, buffer name, the original buffer object, a value copy)"""
    training: list[tuple[nn.Module, bool]]
    rng: dict[str, Any]


def take_snapshot(model: nn.Module, *, copy_params: bool) -> ModelSnapshot:
    """Record the model's state. copy_params: clone weight values (needed only when steps change them)."""
    params = []
    for p in model.parameters():  # each tied parameter once
        value = p.detach().clone() if copy_params else None
        params.append((p, p.data, value, p.grad, p.requires_grad))
    buffers = []
    training = []
    for module in model.modules():
        training.append((module, module.training))
        for name, buf in module._buffers.items():
            value = buf.detach().clone() if isinstance(buf, torch.Tensor) else None
            buffers.append((module, name, buf, value))
    return ModelSnapshot(params, buffers, training, _rng_state())


def restore_snapshot(snapshot: ModelSnapshot) -> None:
    with torch.no_grad():
        for p, data, value, grad, requires_grad in snapshot.params:
            p.data = data
            if value is not None:
                data.copy_(value)
            p.grad = grad
            p.requires_grad_(requires_grad)
        for module, name, buf, value in snapshot.buffers:
            module._buffers[name] = buf
            if buf is not None and value is not None:
                buf.copy_(value)
    for module, training in snapshot.training:
        module.training = training
    _set_rng_state(snapshot.rng)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        state["numpy"] = numpy.random.get_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        sys.modules["numpy"].random.set_state(state["numpy"])
