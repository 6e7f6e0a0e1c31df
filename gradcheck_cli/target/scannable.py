"""The model as the user built it -> the plain nn.Module gradcheck can probe.

Models in the wild arrive wrapped: `torch.compile` returns an OptimizedModule around the original
(`._orig_mod`), `nn.DataParallel` and `DistributedDataParallel` hold it in `.module`. The wrappers
add nothing to the gradients, and their hooks and names would get in the way (dynamo recompiles
around hooks; every layer would be named "_orig_mod.fc" or "module.fc"), so gradcheck scans the
module inside, named as the user named it. What cannot be probed is refused with one line:
TorchScript modules (they do not run Python forward hooks), parameters on the meta device (no data
to run on) and models without parameters (no gradient to check).
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

from gradcheck_cli.errors import UserError

_WRAPPER_ATTRS = (("torch._dynamo.eval_frame", "OptimizedModule", "_orig_mod"),
                  ("torch.nn.parallel.data_parallel", "DataParallel", "module"),
                  ("torch.nn.parallel.distributed", "DistributedDataParallel", "module"))
"""(module defining the wrapper, wrapper class, attribute holding the wrapped model). Looked up in
sys.modules only: a model can only be wrapped if its wrapper's module is imported already, and
importing torch._dynamo just to check would cost seconds."""


def _wrapped(model: nn.Module) -> nn.Module | None:
    for module_name, class_name, attr in _WRAPPER_ATTRS:
        wrapper = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(wrapper, type) and isinstance(model, wrapper):
            inner = getattr(model, attr, None)
            return inner if isinstance(inner, nn.Module) else None
    return None


def unwrap_model(model: Any) -> Any:
    """The module to scan: `model` without its torch.compile / DataParallel / DDP wrappers
    (nested ones too). Anything that is not an nn.Module is returned as it is."""
    seen = 0
    while isinstance(model, nn.Module) and seen < 16:  # a wrapper of a wrapper; never a cycle
        inner = _wrapped(model)
        if inner is None:
            break
        model, seen = inner, seen + 1
    return model


def check_scannable(model: nn.Module, source: str) -> None:
    """UserError when the model cannot be probed with hooks; `source` names the target."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            what = "is a TorchScript module" if not name else f"contains a TorchScript module '{name}'"
            raise UserError(f"{source}: the model {what} ({type(module).__name__}); TorchScript "
                            "modules do not run the Python hooks gradcheck measures with; scan the "
                            "eager nn.Module (before torch.jit.script/trace) instead")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise UserError(f"{source}: the model's parameters are on the meta device ('{name}' "
                            "holds no data); materialise them with model.to_empty(device='cpu') "
                            "in build_model, then load the weights there or with --checkpoint FILE")
    if next(model.parameters(), None) is None:
        buffers = [name for name, _ in model.named_buffers()]
        held = f"only buffers ({', '.join(buffers[:3])}{', ...' if len(buffers) > 3 else ''})" \
            if buffers else "no parameters or buffers"
        raise UserError(f"{source}: {type(model).__name__} has no parameters, {held}: no gradient "
                        "to check, nothing to check; scan a model with trainable weights")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"{source}: {type(model).__name__} has no trainable parameters (all have "
                        "requires_grad=False), so no gradient flows: nothing to check; unfreeze "
                        "what you train (e.g. model.requires_grad_(True)) in build_model")
