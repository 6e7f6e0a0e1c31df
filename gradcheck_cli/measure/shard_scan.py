"""`gradcheck scan --shard` under torchrun: the ranks hold the model together (FSDP2's fully_shard).

For a model that does not fit one device: each direct child that has parameters (the children of
a ModuleList/ModuleDict/Sequential child, such as a transformer's blocks, one by one; modules
that share a tied weight in one group) is wrapped with `torch.distributed.fsdp.fully_shard`, then
the root, so that every rank keeps only its shard of each weight and gathers one unit's weights at
a time. Every rank probes the SAME batches (those of
a single-process scan under --seed): FSDP's gradient, reduced across the ranks, is then each
batch's own gradient, and the session's per-layer sums of squares over the local shards are added
across the ranks (measure/distributed.py, `add_shards`). The report is the single-process scan's
(the same layers, names and numbers, to float rounding), with `ranks` and `shard` in its config.
README, "Scanning under torchrun".

fully_shard swaps each wrapped module's class for an FSDP subclass (FSDPLinear); the report names
the user's classes (`user_types`, `as_unsharded`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from gradcheck_cli.measure.distributed import add_shards, local_tensor
from gradcheck_cli.measure.norms import count_nonfinite
from gradcheck_cli.measure.records import Measurements

CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
"""A direct child of these kinds holds a stack (a transformer's blocks): each of its children is a
unit of its own, so that one block's weights are gathered at a time, not the whole stack's."""


def shard_units(model: nn.Module) -> list[list[nn.Module]]:
    """The groups of modules to wrap before the root: each direct child with parameters (each child
    of a direct child that is a container, above), units that share a parameter (tied weights: an
    embedding and its head) together in one group, as fully_shard requires."""
    units = [unit for child in model.children()
             for unit in (child.children() if isinstance(child, CONTAINERS) else (child,))
             if any(True for _ in unit.parameters())]
    groups: list[list[nn.Module]] = []
    group_params: list[set[int]] = []
    for unit in units:
        params = {id(p) for p in unit.parameters()}
        tied = [k for k, seen in enumerate(group_params) if seen & params]
        merged = [m for k in tied for m in groups[k]] + [unit]
        for k in reversed(tied):
            del groups[k], group_params[k]
        groups.append(merged)
        group_params.append({id(p) for m in merged for p in m.parameters()})
    return groups


def user_types(model: nn.Module) -> dict[str, str]:
    """Every module's class name by qualified name, taken before fully_shard changes them."""
    return {name or "(root)": type(module).__name__ for name, module in model.named_modules()}


def shard_model(model: nn.Module) -> None:
    """Wrap `model` in place with fully_shard: its units (shard_units), then the root."""
    from torch.distributed.fsdp import fully_shard

    for group in shard_units(model):
        fully_shard(group if len(group) > 1 else group[0])
    fully_shard(model)


def as_unsharded(measurements: Measurements, types: dict[str, str]) -> Measurements:
    """The measurements with the user's class names (before fully_shard) for layers and modules."""
    names = list(types)[1:]  # below the root, as Measurements.module_types
    layers = tuple(replace(layer, type_name=types.get(layer.name, layer.type_name)) for layer in measurements.layers)
    module_types = tuple(types[name] for name in names) if len(names) == len(measurements.module_types) \
        else measurements.module_types
    return replace(measurements, layers=layers, module_types=module_types)


def count_nonfinite_over_shards(tensors: list[torch.Tensor]) -> int:
    """NaN/Inf elements of `tensors`; a DTensor's (FSDP2) counted on each rank's shard and added
    across the ranks, so that every rank gets the count of the whole tensors (in lock-step, as the
    session's squares: measure/distributed.py, add_shards)."""
    if not tensors:
        return 0
    local = sum(count_nonfinite(local_tensor(t)) for t in tensors)
    return int(add_shards(torch.tensor([float(local)], dtype=torch.float64, device=local_tensor(tensors[0]).device),
                          tensors).item())
