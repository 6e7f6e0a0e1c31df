"""One rank of a watched training run under torch.distributed (tests/test_distributed_watch.py).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_watch_worker.py SCENARIO OUT

Scenarios (2 ranks, gloo, CPU; each rank draws its own batches from seed 100 + rank):
  ddp-healthy   DDP, a plain run
  ddp-nan       DDP, rank 1's fc1 output is multiplied by NaN at step NAN_STEP (a forward hook)
  ddp-mismatch  DDP, rank 1 scales fc2's weight gradient by 1.5 after the all-reduce at MISMATCH_STEP
  fsdp          fully_shard on fc1, fc2 and the model
  fsdp-nan      fsdp, with ddp-nan's NaN on rank 1
  ddp-comm-hook DDP, a communication hook that scales rank 1's reduced gradients by 1.5 at
                MISMATCH_STEP (what a rank altering the all-reduce does)
  ddp-raise     DDP, rank 1's loop raises at RAISE_STEP (rank 0 goes on into the next all-reduce)
Rank r writes its watch report to OUT/report-rank{r}.json (only rank 0 should: is_writer) and what
its own `w.report` says to OUT/result-rank{r}.json.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

STEPS = 8
EVERY = 3
NAN_STEP = 5
MISMATCH_STEP = 4
RAISE_STEP = 4
BATCH = 4
LR = 0.1


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of `rank`, the same wherever they are drawn (the test's plain reference too)."""
    generator = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(BATCH, 6, generator=generator), torch.randn(BATCH, 3, generator=generator))
            for _ in range(STEPS)]


def build() -> Net:
    torch.manual_seed(0)
    return Net()


def main(scenario: str, out: str) -> None:
    from gradcheck_cli import watch

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = build()
    state = {"step": 0}
    if scenario.startswith("fsdp"):
        from torch.distributed.fsdp import fully_shard

        fully_shard(net.fc1)
        fully_shard(net.fc2)
        fully_shard(net)
        model: nn.Module = net
    else:
        ddp = nn.parallel.DistributedDataParallel(net)
        if scenario == "ddp-comm-hook":
            ddp.register_comm_hook(state, _uneven_all_reduce)
        model = ddp
    if scenario.endswith("-nan") and rank == 1:
        net.fc1.register_forward_hook(
            lambda module, args, output: output * float("nan") if state["step"] == NAN_STEP else output)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    w = watch(model, optimizer, every=EVERY, output=os.path.join(out, f"report-rank{rank}.json"), quiet=True)
    try:
        train(w, model, net, optimizer, state, scenario, rank)
    except RuntimeError:
        _result(w, out, rank)  # the watch let the error through without waiting for the others
        raise
    _result(w, out, rank)
    dist.destroy_process_group()


def _uneven_all_reduce(state: dict[str, int], bucket: Any) -> Any:
    """DDP's averaging all-reduce, after which rank 1 scales its copy at MISMATCH_STEP."""
    tensor = bucket.buffer().div_(dist.get_world_size())
    future = dist.all_reduce(tensor, async_op=True).get_future()  # type: ignore[union-attr]

    def then(done: Any) -> torch.Tensor:
        reduced = done.value()[0]
        if dist.get_rank() == 1 and state["step"] == MISMATCH_STEP:
            reduced.mul_(1.5)
        return reduced

    return future.then(then)


# DDP checks the hook's annotations as objects (this module's are strings: __future__ annotations).
_uneven_all_reduce.__annotations__.update(bucket=dist.GradBucket, **{"return": torch.futures.Future[torch.Tensor]})


def train(w: Any, model: nn.Module, net: Net, optimizer: torch.optim.Optimizer, state: dict[str, int],
          scenario: str, rank: int) -> None:
    with w:
        for step, (x, y) in enumerate(batches(rank)):
            state["step"] = step
            if scenario == "ddp-raise" and rank == 1 and step == RAISE_STEP:
                raise RuntimeError("a failure on rank 1 only")
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if scenario == "ddp-mismatch" and rank == 1 and step == MISMATCH_STEP:
                grad = net.fc2.weight.grad
                assert grad is not None
                grad.mul_(1.5)  # after DDP's all-reduce, on this rank only
            optimizer.step()
            optimizer.zero_grad()
            w.step(loss)


def _result(w: Any, out: str, rank: int) -> None:
    assert w.report is not None
    findings = [{"kind": f.kind.value, "layer": f.layer, "step": f.step, "rank": f.rank,
                 "evidence": dict(f.evidence)} for f in w.report.findings]
    with open(os.path.join(out, f"result-rank{rank}.json"), "w", encoding="utf-8") as file:
        json.dump({"findings": findings, "verdict": w.report.verdict.value, "series": _series(w.report)},
                  file, default=str)


def _series(report: object) -> object:
    from gradcheck_cli.report.render.json import render_json

    return json.loads(render_json(report)).get("series")  # type: ignore[arg-type]


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
