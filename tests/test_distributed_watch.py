"""The training watch under torchrun: 2 CPU processes with gloo (measure/distributed.py).

Each scenario runs tests/distributed_watch_worker.py under real torchrun
(`python -m torch.distributed.run --nproc_per_node 2`): DDP with a NaN injected on rank 1, FSDP2
(fully_shard), a healthy DDP run and a DDP run whose rank 1 edits a gradient after the all-reduce.
The expected norms are computed here with plain autograd on the unsharded model and the global
batch (both ranks' batches). The pure parts (the replicas' comparison, the choice of the first
non-finite event, the rank-mismatch analysis) are tested without processes.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import distributed_watch_worker as worker
import pytest
import torch
import torch.distributed as dist
from torch import nn

from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.analyse.timeline import Timeline
from gradcheck_cli.measure.distributed import Candidate, earliest, is_writer, local_tensor, replica_spread
from gradcheck_cli.measure.series import NonfiniteEvent, ReplicaSpread, StepBlock
from gradcheck_cli.report.records import FindingKind

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
TIMEOUT = 180  # seconds: a hung rank fails the test instead of the suite
WORKER = Path(__file__).parent / "distributed_watch_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(scenario: str, out: Path) -> dict[str, Any]:
    """Run `scenario` on 2 ranks; rank r's result, and the report files written, by name."""
    run = _launch(scenario, out)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads((out / f"result-rank{r}.json").read_text()) for r in range(WORLD)]
    reports = {p.name: json.loads(p.read_text()) for p in out.glob("report-rank*.json")}
    return {"ranks": results, "reports": reports}


def _launch(scenario: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), scenario, str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _findings(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in result["findings"] if f["kind"] == kind]


# -- end to end under torchrun ------------------------------------------------------------------


def test_ddp_nan_on_rank_1_is_named_in_rank_0s_report(tmp_path: Path) -> None:
    run = _torchrun("ddp-nan", tmp_path)
    assert list(run["reports"]) == ["report-rank0.json"]  # only rank 0 writes
    report = run["reports"]["report-rank0.json"]
    [nonfinite] = [f for f in report["findings"] if f["kind"] == "nonfinite"]
    assert nonfinite["step"] == worker.NAN_STEP
    assert nonfinite["rank"] == 1  # although rank 0's gradients were NaN at the same step (all-reduce)
    assert nonfinite["evidence"]["origin_module"] == "fc1"
    assert nonfinite["evidence"]["direction"] == "forward"
    assert report["verdict"] == "nonfinite"
    assert not [f for f in report["findings"] if f["kind"] == "rank-mismatch"]  # NaN on both: replicas
    rank0, rank1 = run["ranks"]
    assert rank1["findings"] == rank0["findings"]  # every rank's w.report holds the same findings


def test_fsdp2_reduced_norms_equal_plain_autograd_on_the_unsharded_model(tmp_path: Path) -> None:
    run = _torchrun("fsdp", tmp_path)
    assert list(run["reports"]) == ["report-rank0.json"]
    report = run["reports"]["report-rank0.json"]
    assert report["target"] == "Net"
    expected = _plain_run()
    series = report["series"]
    assert series["steps"] == list(range(worker.STEPS))
    assert series["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    for layer in series["layers"]:
        name = layer["name"]
        assert layer["grad_norm"] == pytest.approx(expected["grad_norm"][name], rel=1e-6)
        assert layer["update_to_weight"][0] == pytest.approx(expected["update_to_weight"][name], rel=1e-6)
        flushed = [(s, v) for s, v in enumerate(layer["weight_norm"]) if v is not None]
        assert flushed, name
        for step, value in flushed:
            assert value == pytest.approx(expected["weight_norm"][name][step], rel=1e-6)
        # the per-layer table (step 0) is over every shard too
        [row] = [r for r in report["layers"] if r["name"] == name]
        assert row["grad_norm"] == pytest.approx(expected["grad_norm"][name][0], rel=1e-6)
    assert not report["findings"]
    assert run["ranks"][1]["series"] == run["ranks"][0]["series"]


def test_fsdp2_nan_on_rank_1_is_named_by_its_own_loss(tmp_path: Path) -> None:
    run = _torchrun("fsdp-nan", tmp_path)
    report = run["reports"]["report-rank0.json"]
    [nonfinite] = [f for f in report["findings"] if f["kind"] == "nonfinite"]
    # every rank's gradient shards turn NaN through the reduce-scatter; rank 1's own loss did
    assert (nonfinite["step"], nonfinite["rank"], nonfinite["layer"]) == (worker.NAN_STEP, 1, "fc2")
    assert "origin_module" not in nonfinite["evidence"]  # no replay: FSDP's forward is collective


def test_ddp_healthy_run_has_no_finding_and_one_report_file(tmp_path: Path) -> None:
    run = _torchrun("ddp-healthy", tmp_path)
    assert list(run["reports"]) == ["report-rank0.json"]
    report = run["reports"]["report-rank0.json"]
    assert report["findings"] == []
    assert report["verdict"] == "healthy"
    assert report["target"] == "Net"  # the user's module, not DistributedDataParallel
    assert [layer["name"] for layer in report["series"]["layers"]] == ["fc1", "fc2"]
    rank0, rank1 = run["ranks"]
    assert rank1 == rank0  # the same reduced series and findings on every rank
    expected = _plain_run()  # DDP's averaged gradients are those of the global batch
    for layer in report["series"]["layers"]:
        assert layer["grad_norm"] == pytest.approx(expected["grad_norm"][layer["name"]], rel=1e-6)


def test_ddp_gradient_changed_on_rank_1_after_the_all_reduce_is_a_rank_mismatch(tmp_path: Path) -> None:
    run = _torchrun("ddp-mismatch", tmp_path)
    report = run["reports"]["report-rank0.json"]
    [mismatch] = [f for f in report["findings"] if f["kind"] == "rank-mismatch"]
    assert mismatch["rank"] == 1
    assert mismatch["layer"] == "fc2"
    assert mismatch["severity"] == "error"
    # the edit came after the backward: seen in the weights at the end of its block
    block_end = (worker.MISMATCH_STEP // worker.EVERY + 1) * worker.EVERY - 1
    assert mismatch["step"] == block_end
    assert mismatch["evidence"]["seen_in"] == "weights"
    assert mismatch["evidence"]["relative_difference"] > 1e-3
    assert "rank 1" in mismatch["message"]


def test_ddp_all_reduce_altered_on_rank_1_is_a_rank_mismatch_at_its_step(tmp_path: Path) -> None:
    run = _torchrun("ddp-comm-hook", tmp_path)
    report = run["reports"]["report-rank0.json"]
    [mismatch] = [f for f in report["findings"] if f["kind"] == "rank-mismatch"]
    assert (mismatch["step"], mismatch["rank"]) == (worker.MISMATCH_STEP, 1)
    assert mismatch["evidence"]["seen_in"] == "gradients"  # read after DDP wrote its result
    assert mismatch["evidence"]["relative_difference"] == pytest.approx(0.5 / 1.5, rel=1e-6)
    assert mismatch["evidence"]["steps"] == 1


def test_an_exception_on_one_rank_leaves_its_watch_without_waiting_for_the_others(tmp_path: Path) -> None:
    run = _launch("ddp-raise", tmp_path)  # a watch that waited in a collective would hang: TIMEOUT
    assert run.returncode != 0
    assert "a failure on rank 1 only" in run.stderr
    rank1 = json.loads((tmp_path / "result-rank1.json").read_text())  # its report: its own steps
    assert rank1["series"]["steps"] == list(range(worker.RAISE_STEP))
    assert not (tmp_path / "report-rank1.json").exists()


def _plain_run() -> dict[str, Any]:
    """Plain autograd on the unsharded model, the global batch (both ranks' batches), plain SGD."""
    model = worker.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=worker.LR)
    layers = {"fc1": model.fc1, "fc2": model.fc2}
    out: dict[str, Any] = {"loss": [], "grad_norm": {n: [] for n in layers}, "weight_norm": {n: [] for n in layers},
                           "update_to_weight": {}}
    for step, parts in enumerate(zip(*(worker.batches(r) for r in range(WORLD)))):
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        before = {n: _norm([p.detach().clone() for p in m.parameters()]) for n, m in layers.items()}
        old = {n: [p.detach().clone() for p in m.parameters()] for n, m in layers.items()}
        for name, module in layers.items():
            out["grad_norm"][name].append(_norm([p.grad for p in module.parameters() if p.grad is not None]))
        optimizer.step()
        optimizer.zero_grad()
        for name, module in layers.items():
            out["weight_norm"][name].append(_norm(list(module.parameters())))
            if step == 0:
                delta = [p.detach() - q for p, q in zip(module.parameters(), old[name])]
                out["update_to_weight"][name] = _norm(delta) / before[name]
        out["loss"].append(float(loss.detach()))
    return out


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


# -- the pure parts, without processes ----------------------------------------------------------


def test_replica_spread_names_the_rank_and_layer_furthest_from_rank_0() -> None:
    norms = torch.tensor([[[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]],     # rank 0
                          [[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]],     # rank 1: a replica
                          [[1.0, 2.0], [1.0, 3.0], [0.0, math.nan]]],  # rank 2: row 1 layer 1, row 2 NaN
                         dtype=torch.float64)
    spread = replica_spread(norms)
    assert spread.relative[0] == 0.0
    assert spread.relative[1] == pytest.approx(1 / 3)
    assert (spread.rank[1], spread.layer[1]) == (2, 1)
    assert spread.relative[2] == 1.0  # only one of them finite
    assert (spread.rank[2], spread.layer[2]) == (2, 1)
    both_nan = replica_spread(torch.full((2, 1, 3), math.nan, dtype=torch.float64))
    assert both_nan.relative == (0.0,)  # a step without gradients on any rank: nothing differs


def test_the_first_nonfinite_event_is_the_rank_whose_own_forward_failed() -> None:
    reached_by_all_reduce = Candidate(NonfiniteEvent(step=5, rank=0, layer="fc2"), own=False)
    born_here = Candidate(NonfiniteEvent(step=5, rank=1, layer="fc2", origin_module="fc1"), own=True)
    assert earliest([reached_by_all_reduce, born_here]) == born_here.event
    earlier = Candidate(NonfiniteEvent(step=4, rank=1, layer="fc2"), own=False)
    assert earliest([born_here, earlier]) == earlier.event  # the step first
    assert earliest([Candidate(NonfiniteEvent(5, 1, None), True), Candidate(NonfiniteEvent(5, 0, None), True)]) \
        == NonfiniteEvent(5, 0, None)  # then the rank
    assert earliest([]) is None


def _block(first: int, relative: tuple[float, ...], weights: tuple[float, int, int] = (0.0, 1, 0)) -> StepBlock:
    n = len(relative)
    return StepBlock(first_step=first, loss=(1.0,) * n, grad_sq=((1.0, 1.0),) * n, update_ratio=None,
                     weight_sq=(1.0, 1.0), nonfinite_grads=(0, 0),
                     replicas=ReplicaSpread(relative, (1,) * n, (1,) * n, weights))


def test_timeline_rank_mismatch_first_step_and_tolerance() -> None:
    timeline = Timeline(["fc1", "fc2"], Thresholds())
    timeline.add(_block(0, (0.0, 1e-7, 0.0)))  # within float tolerance: replicas
    assert not [f for f in timeline.findings() if f.kind is FindingKind.RANK_MISMATCH]
    timeline.add(_block(3, (0.0, 0.2, 0.3), weights=(0.1, 1, 0)))
    [finding] = [f for f in timeline.findings() if f.kind is FindingKind.RANK_MISMATCH]
    assert (finding.step, finding.rank, finding.layer) == (4, 1, "fc2")
    assert finding.evidence["relative_difference"] == 0.2
    assert finding.evidence["seen_in"] == "gradients"
    assert finding.evidence["steps"] == 2
    loose = Timeline(["fc1", "fc2"], Thresholds(rank_mismatch_relative=0.5))
    loose.add(_block(3, (0.0, 0.2, 0.3)))
    assert not [f for f in loose.findings() if f.kind is FindingKind.RANK_MISMATCH]


def test_timeline_rank_mismatch_seen_in_the_weights_names_the_blocks_last_step() -> None:
    timeline = Timeline(["fc1", "fc2"], Thresholds())
    timeline.add(_block(6, (0.0, 0.0, 0.0), weights=(0.01, 1, 0)))
    [finding] = [f for f in timeline.findings() if f.kind is FindingKind.RANK_MISMATCH]
    assert (finding.step, finding.rank, finding.layer) == (8, 1, "fc1")
    assert finding.evidence["seen_in"] == "weights"


def test_without_torch_distributed_every_process_writes_and_tensors_are_their_own_shard() -> None:
    assert not dist.is_initialized()
    assert is_writer()
    t = torch.ones(3)
    assert local_tensor(t) is t
