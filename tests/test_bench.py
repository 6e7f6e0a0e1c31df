"""bench/overhead.py, the record of issue 16, still runs: a smoke run in seconds on a tiny builtin,
and its anchors (bench/anchors.py) run the plain passes' batches and leave the model as it was."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import anchors  # noqa: E402
import overhead  # noqa: E402
from models import bench_model_named, mlp_target  # noqa: E402


def test_smoke_run_prints_every_path(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        code = overhead.main(["--models", "relu-he", "--repeats", "1", "--batches", "2", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("model ") and "plain ms" in line)
    assert header.split()[7:12] == ["scan", "anomaly", "naive", "lightning", "wandb"]
    row = next(line for line in out.splitlines() if line.startswith("relu-he "))
    assert row.split()[-1] == "yes"  # every path computed the plain losses
    assert "load average" in out and "peak memory / plain" in out


def test_unknown_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert overhead.main(["--models", "no-such-model"]) == 2
    assert "unknown model: no-such-model" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(anchors.ANCHORS))
def test_anchor_runs_the_plain_batches_and_removes_its_hooks(name: str) -> None:
    target = mlp_target(depth=3, width=8)
    model = target.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference = anchors.plain(model, target, 2, 4, 0, torch.device("cpu"))
    losses = anchors.ANCHORS[name](model, target, 2, 4, 0, torch.device("cpu"))
    assert [float(x) for x in losses] == [float(x) for x in reference]
    for module in model.modules():
        assert not module._forward_hooks
    assert all(p.grad is None and not p._backward_hooks for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_table_models_are_the_issues() -> None:
    assert [m.name for m in overhead.TABLE] == ["gpt2-small", "gpt-4x128", "cnn-resnet-bn", "mlp-10x256",
                                               "stack-1000"]
    assert bench_model_named("relu-he").batch_size == 16
