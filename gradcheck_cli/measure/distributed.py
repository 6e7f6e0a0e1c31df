"""The training watch under torch.distributed: DDP replicas and FSDP2 shards, in lock-step.

Under torchrun every rank runs the same loop with its own watch. At each flush (every `every`
steps, and at the end) the ranks reduce their blocks together (`RankReduction`, called by
watch_ring.StepRing.flush on the flat device block) so that every rank holds the same numbers:

* FSDP2 (`fully_shard`: the parameters and their gradients are DTensors, each rank holding a
  shard): a layer's squared norm is the sum of its shards' squared norms, so the per-layer sums of
  squares of gradients and weights ADD across ranks (all_reduce SUM), and so do the non-finite
  counts. The update/weight ratio is not a sum: its numerator and denominator (sums of squares)
  are summed across ranks on the step it is measured (`sum_shards`, called by the engine in the
  optimizer's step post-hook on every rank alike) before the ratio is taken. Gradients are read
  after FSDP's reduce-scatter (the engine's read runs after the backward's other final callbacks).
* DDP (the model is a DistributedDataParallel, or its parameters are plain tensors in a world of
  several ranks: data parallelism keeps replicas): after DDP's all-reduce every rank holds the
  same averaged gradients, so nothing is added: the blocks are gathered (all_gather), rank 0's
  values are the report's, and each step's largest difference of a rank's per-layer gradient norms
  from rank 0's goes with the block (series.ReplicaSpread) for analyse/rank_mismatch.py
  (docs/findings/rank-mismatch.md). The gather costs world x block size once per flush.
* the loss of a step is the MEAN over ranks of each rank's own loss (each rank's batch is a part of
  the global batch, as DDP's gradient is the mean of the ranks' gradients).

Collectives must be called by every rank at the same point, so under torch.distributed the engine
flushes only at the `every` boundaries and at the end (never at once on a non-finite step, which
one rank alone might see): the rank that saw a NaN/Inf still replays its batch locally at once,
and the events are exchanged at the next flush (`first_event`): the first non-finite event is the
earliest (step, rank) where the rank's OWN forward or loss was non-finite (its replay found the
origin, or its loss was NaN/Inf). Under DDP a NaN born in rank 1's forward reaches every rank's
gradients through the all-reduce at the same step, so rank 0's gradients are non-finite too; the
origin is rank 1's. Every rank must create the watch (not rank 0 alone), call `w.step` the same
number of times (as DDP requires) and close the watch together; on an exception the watch
detaches without any collective (cli/watch.py): torchrun then stops the other ranks as it does without the watch.

`local_tensor` (a DTensor's local shard) and `is_writer` (only rank 0 writes and prints) are shared
with the scan under torchrun (measure/distributed_scan.py). docs/architecture.md, the watch.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from gradcheck_cli.measure.series import NonfiniteEvent, ReplicaSpread

T = TypeVar("T")


def active() -> bool:
    """torch.distributed is initialised with more than one rank."""
    distributed = torch.distributed
    return distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1


def is_writer() -> bool:
    """Whether this process writes and prints: rank 0, or a process outside torch.distributed."""
    distributed = torch.distributed
    return not (distributed.is_available() and distributed.is_initialized()) or distributed.get_rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DistributedDataParallel (its layers keep their own names, and
    the watch's replay runs it without DDP's collectives); any other model as it is."""
    parallel = getattr(torch.nn.parallel, "DistributedDataParallel", None)
    if parallel is not None and isinstance(model, parallel):
        return model.module
    return model


def model_name(model: nn.Module) -> str:
    """The user's class name: inside DDP, and before fully_shard's class swap (FSDPLinear)."""
    model = unwrap(model)
    fsdp = getattr(getattr(torch.distributed, "fsdp", None), "FSDPModule", None)
    if fsdp is not None and isinstance(model, fsdp):
        return next(c for c in type(model).__mro__ if not issubclass(c, fsdp)).__name__
    return type(model).__name__


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2's parameters and gradients); any other tensor as it is. The
    norm of the shard, never of the whole DTensor: that would be a collective per tensor."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def add_shards(squares: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sums of squares taken over this rank's shards of `tensors` -> over the whole tensors: added
    across ranks (all_reduce) when some tensor is a DTensor; as they are otherwise. Every rank must
    call it at the same point (the session's batches and its final read run in lock-step)."""
    if not _ALONE[0] and any(hasattr(t, "to_local") for t in tensors) and active():
        torch.distributed.all_reduce(squares)
    return squares


_ALONE = [False]


@contextmanager
def alone(on: bool = True) -> Iterator[None]:
    """No collective inside (`add_shards` keeps this rank's shards): after an exception on one
    rank, which the others are not there to answer."""
    before, _ALONE[0] = _ALONE[0], on or _ALONE[0]
    try:
        yield
    finally:
        _ALONE[0] = before


def is_sharded(model: nn.Module) -> bool:
    """Some parameter is a DTensor (FSDP2's fully_shard, or tensor parallelism), or the model holds
    FSDP1's FullyShardedDataParallel (flat parameters, each rank its shard: never replicas, which
    would read as a rank-mismatch)."""
    return any(hasattr(p, "to_local") for p in model.parameters()) or \
        any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())


def rank_reduction(model: nn.Module) -> RankReduction | None:
    """The reduction for `model` under torch.distributed with several ranks; None otherwise."""
    if not active():
        return None
    return RankReduction(sharded=is_sharded(model))


@dataclass(frozen=True)
class Candidate:
    """A rank's first non-finite event and whether its own forward or loss was non-finite."""

    event: NonfiniteEvent
    own: bool


class RankReduction:
    """watch_ring.Reducer across the ranks of the default process group (module docstring)."""

    def __init__(self, sharded: bool) -> None:
        distributed = torch.distributed
        self.sharded = sharded
        self.world = distributed.get_world_size()
        self.rank = distributed.get_rank()
        self.spread: ReplicaSpread | None = None
        """The last flush's ReplicaSpread (DDP only); the engine puts it into its block."""

    def __call__(self, flat: torch.Tensor, rows: int, layers: int, has_update_rows: bool) -> torch.Tensor:
        if self.sharded:
            return self._sum_shards(flat, rows, layers, has_update_rows)
        return self._compare_replicas(flat, rows, layers, has_update_rows)

    def _sum_shards(self, flat: torch.Tensor, rows: int, layers: int, has_update_rows: bool) -> torch.Tensor:
        torch.distributed.all_reduce(flat)
        flat[:rows] /= self.world  # the loss: the mean over ranks
        if has_update_rows:  # the ratios were taken from summed parts: the same on every rank
            start = rows + rows * layers
            flat[start:start + rows * layers] /= self.world
        return flat

    def _compare_replicas(self, flat: torch.Tensor, rows: int, layers: int, has_update_rows: bool) -> torch.Tensor:
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, flat.contiguous())
        every = torch.stack(gathered)
        reduced = every[0].clone()
        reduced[:rows] = every[:, :rows].mean(dim=0)
        grads = every[:, rows:rows + rows * layers].reshape(self.world, rows, layers).sqrt()
        at = rows + rows * layers * (2 if has_update_rows else 1)
        weights = replica_spread(every[:, at:at + layers].reshape(self.world, 1, layers).sqrt())
        spread = replica_spread(grads)
        self.spread = ReplicaSpread(spread.relative, spread.rank, spread.layer,
                                    weights=(weights.relative[0], weights.rank[0], weights.layer[0]))
        return reduced

    def sum_shards(self, *parts: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer sums of squares of this rank's shards -> of the whole parameters (one
        all_reduce for all parts; identity outside sharding)."""
        if not self.sharded:
            return list(parts)
        flat = torch.cat(parts)
        torch.distributed.all_reduce(flat)
        return list(flat.split([p.numel() for p in parts]))

    def first_event(self, mine: Candidate | None) -> NonfiniteEvent | None:
        """Every rank's candidate (all_gather_objects) -> the earliest by (step, not own, rank)."""
        return earliest([c for c in all_gather_objects(mine) if c is not None])


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order. torch's all_gather_object (and broadcast_object_list)
    read their byte buffers back through Tensor.numpy(), which fails with "Numpy is not available"
    under a torch without numpy (its CPU wheel does not require it): here the pickled bytes travel
    as uint8 tensors and come back through .tolist()."""
    dist, device = torch.distributed, _collective_device()
    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=device))
    lengths = [int(n) for n in torch.cat(sizes).tolist()]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    gathered = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(gathered, padded)
    return [pickle.loads(bytes(t[:n].tolist())) for t, n in zip(gathered, lengths)]  # noqa: S301 - our ranks'


def broadcast_int(value: int, src: int = 0) -> int:
    """`src`'s value on every rank (broadcast_object_list without numpy, as above)."""
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    torch.distributed.broadcast(tensor, src)
    return int(tensor.item())


def _collective_device() -> torch.device:
    """nccl moves CUDA tensors only; gloo, CPU ones."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def earliest(candidates: list[Candidate]) -> NonfiniteEvent | None:
    """The first non-finite event over ranks: the lowest step; at that step a rank whose own
    forward or loss was non-finite before one it reached through the all-reduce; then the rank."""
    if not candidates:
        return None
    return min(candidates, key=lambda c: (c.event.step, not c.own, c.event.rank)).event


def replica_spread(norms: torch.Tensor) -> ReplicaSpread:
    """(ranks, rows, layers) gradient norms -> per row, the largest relative difference from rank
    0's over the other ranks and layers, with its rank and layer (series.ReplicaSpread)."""
    world, rows, layers = norms.shape
    if world < 2:
        zeros = (0,) * rows
        return ReplicaSpread(relative=(0.0,) * rows, rank=zeros, layer=zeros)
    reference, others = norms[0:1], norms[1:]
    finite = torch.isfinite(others), torch.isfinite(reference)
    largest = torch.maximum(others, reference)
    relative = torch.where(largest > 0, (others - reference).abs() / largest, torch.zeros_like(others))
    relative = torch.where(finite[0] & finite[1], relative, (finite[0] != finite[1]).to(relative))
    value, index = relative.permute(1, 0, 2).reshape(rows, -1).max(dim=1)
    host = torch.stack([value, (index // layers + 1).to(value), (index % layers).to(value)]).tolist()
    return ReplicaSpread(relative=tuple(host[0]), rank=tuple(int(r) for r in host[1]),
                         layer=tuple(int(li) for li in host[2]))


def own_nonfinite_loss(losses: list[float], first_step: int, step: int) -> bool:
    """Whether this rank's own loss at `step` (rows from `first_step`) was NaN/Inf."""
    row = step - first_step
    return 0 <= row < len(losses) and not math.isfinite(losses[row])
