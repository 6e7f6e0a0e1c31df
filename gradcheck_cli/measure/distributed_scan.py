"""`gradcheck scan` under torchrun: one probe per rank on batches of its own, merged into one.

torchrun starts the same command on every rank (WORLD_SIZE > 1 and RANK in the environment). Each
rank builds the model as a single process would (the same --seed: the same weights on every rank)
and probes its own batches: rank r draws them under the seed `seed + RANK_SEED_STRIDE * r` (batch b
of rank r under seed + 1000 * r + b, so the ranks' batches differ while --batches <= 1000). The
ranks' Measurements are then exchanged (distributed.all_gather_objects) and merged in rank order with
`Measurements.merge`: the merged scan is the scan of one process that probed rank 0's batches,
then rank 1's, ... (per-batch gradient norms concatenate, sums of squares and counts add), so every
rank holds the same measurements, the same report and the same exit code; rank 0 alone prints and
writes it (cli/app.py), and the exit code is broadcast from rank 0 (`ScanRanks.agree`). README,
"Scanning under torchrun".

The process group is the user's if their code (the model file's import or build_model) started
one; otherwise `ScanRanks.join` starts it (gloo on CPU, nccl on CUDA) and `close` destroys it.
A rank whose probe failed sends its error instead of measurements, so that the others stop with
it (naming the rank) instead of waiting for it.
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn

from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.distributed import all_gather_objects, broadcast_int
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.measure.shard_scan import as_unsharded, shard_model, user_types
from gradcheck_cli.target.guards import ScanTimeout

RANK_SEED_STRIDE = 1000
"""Rank r probes under seed + RANK_SEED_STRIDE * r (its batch b under that + b)."""
SETTLE_TIMEOUT = datetime.timedelta(seconds=60)
"""How long the ranks wait for each other before the process group is destroyed (`_settle`)."""


def launched_world(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(rank, world size) when torchrun (or any launcher setting WORLD_SIZE and RANK) started this
    process as one of several; None for a single process (WORLD_SIZE unset or 1)."""
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
    except ValueError as exc:
        raise UserError(f"WORLD_SIZE/RANK in the environment must be integers ({exc})") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is outside WORLD_SIZE={world} in the environment")
    return rank, world


@dataclass(frozen=True)
class _RankFailure:
    """What a rank sends instead of its measurements when its probe raised."""

    message: str


class ScanRanks:
    """This process's place among the ranks of a scan, and the process group they share."""

    def __init__(self, rank: int, world_size: int, local_rank: int = 0) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self._created = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> ScanRanks | None:
        world = launched_world(environ)
        if world is None:
            return None
        return cls(world[0], world[1], int(environ.get("LOCAL_RANK", "0") or 0))

    def device(self, device: str) -> str:
        """The rank's own device: a bare "cuda" is cuda:LOCAL_RANK, as torchrun users expect."""
        return f"cuda:{self.local_rank}" if device == "cuda" else device

    def join(self, device: str) -> None:
        """Start the process group unless the user's code already did (gloo on CPU, nccl on CUDA)."""
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        if not dist.is_available() or not dist.is_backend_available(backend):
            raise UserError(f"a scan under torchrun needs torch.distributed with the {backend} backend, "
                            "which this torch build lacks")
        if dist.is_initialized():
            return
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        self._created = True

    def close(self) -> None:
        """Destroy the process group if `join` started it (the user's own is left running)."""
        if self._created and dist.is_initialized():
            _settle()
            dist.destroy_process_group()
        self._created = False

    def agree(self, exit_code: int) -> int:
        """Rank 0's exit code, on every rank (it alone rendered and wrote the report)."""
        if not dist.is_initialized():
            return exit_code
        return broadcast_int(exit_code, src=0)

    def probe_model(self, model: nn.Module, run_probe: Callable[[ScanConfig], Measurements],
                    config: ScanConfig) -> Measurements:
        """The scan's measurements: every rank's batches merged, or with config.shard the model
        sharded across the ranks (shard_scan.py), which probe the same batches together."""
        if not config.shard:
            return self.probe(run_probe, config)
        types = user_types(model)
        shard_model(model)
        return as_unsharded(self.probe(run_probe, config, same_batches=True), types)

    def probe(self, run_probe: Callable[[ScanConfig], Measurements], config: ScanConfig,
              same_batches: bool = False) -> Measurements:
        """Run this rank's probe (under its own seed) and return every rank's, merged in rank order;
        `same_batches`: every rank probes under --seed and rank 0's measurements are the scan's."""
        error: BaseException | None = None
        outcome: Measurements | _RankFailure
        seed = config.seed + (0 if same_batches else RANK_SEED_STRIDE * self.rank)
        try:
            outcome = run_probe(replace(config, seed=seed))
        except BaseException as exc:  # --timeout and Ctrl-C too: else the other ranks wait for this one
            error, outcome = exc, _RankFailure(_failure_text(exc))
        outcomes: list[Measurements | _RankFailure | None] = list(all_gather_objects(outcome))
        if error is not None:
            raise error
        return merge_ranks(outcomes, rank_zero_only=same_batches)


def _settle() -> None:
    """Wait until every rank has finished the group's last collective before it is destroyed. The
    last one is usually `agree`'s broadcast, which returns on rank 0 as soon as its send is queued:
    destroying the group under that send killed rank 0 with "terminate called without an active
    exception" (seen once in a CI run of tests/test_distributed_scan.py). A rank that is gone
    raises here; the group is destroyed all the same."""
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=SETTLE_TIMEOUT)
        else:
            dist.barrier()
    except RuntimeError:
        pass


def _failure_text(exc: BaseException) -> str:
    if isinstance(exc, ScanTimeout):
        return f"the scan ran past --timeout ({exc.where})"
    return str(exc) or type(exc).__name__


def merge_ranks(outcomes: list[Measurements | _RankFailure | None], rank_zero_only: bool = False) -> Measurements:
    """The ranks' measurements merged in rank order (`rank_zero_only`: rank 0's, when every rank
    measured the same batches); the first rank that failed ends the scan."""
    for rank, outcome in enumerate(outcomes):
        if not isinstance(outcome, Measurements):
            message = outcome.message if isinstance(outcome, _RankFailure) else "sent nothing"
            raise UserError(f"rank {rank}: {message}")
    measured = [outcome for outcome in outcomes if isinstance(outcome, Measurements)]
    return measured[0] if rank_zero_only else functools.reduce(Measurements.merge, measured)
